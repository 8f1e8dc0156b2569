"""The bundled digits and their splits."""

import numpy as np
import pytest

from minitspeft.data import digits_task, load_digits, stratified_split


def test_bundled_digits_shape_and_range():
    images, labels = load_digits()
    assert images.dtype == np.uint8 and images.shape == (1797, 8, 8)
    assert labels.dtype == np.uint8 and labels.shape == (1797,)
    assert images.max() == 16 and images.min() == 0
    assert np.bincount(labels).min() >= 170  # every class is present in strength


def test_stratified_split_is_disjoint_balanced_and_seeded():
    labels = np.repeat(np.arange(3), [40, 60, 20])
    tr, te = stratified_split(labels, 0.25, seed=1)
    assert set(tr).isdisjoint(te) and len(tr) + len(te) == len(labels)
    np.testing.assert_array_equal(np.bincount(labels[te]), [10, 15, 5])
    tr2, te2 = stratified_split(labels, 0.25, seed=1)
    np.testing.assert_array_equal(te, te2)
    assert not np.array_equal(te, stratified_split(labels, 0.25, seed=2)[1])


def test_digits_task_renumbers_and_scales():
    task = digits_task([5, 6, 7, 8, 9], seed=0)
    images, labels = load_digits()
    assert set(np.unique(task.y_train)) == set(range(5))
    assert task.x_train.dtype == np.float32 and task.x_train.max() <= 1.0
    assert len(task.y_train) + len(task.y_test) == int(np.isin(labels, [5, 6, 7, 8, 9]).sum())
    # an image of class index 0 is a real "5"
    first5 = images[labels == 5].astype(np.float32) / 16
    assert any(np.array_equal(task.x_train[np.flatnonzero(task.y_train == 0)[0]], im) for im in first5)


@pytest.mark.parametrize("classes", [[], [1, 1], [10], [-1]])
def test_digits_task_rejects_bad_classes(classes):
    with pytest.raises(ValueError, match="digits_task"):
        digits_task(classes)
