"""The synthetic needle task: layout of the sequences, labels, masks, seeding, splits and argument checks."""

import numpy as np
import pytest

from minitspeft.data import CLS, MARKER, NEEDLE_VOCAB, NeedleTask, make_needle, needle_task


def _needles(row):
    """(marker positions, values) read back from one row of ids, in a plain loop."""
    markers = [i for i, t in enumerate(row) if t == MARKER]
    return markers, [int(row[i + 1]) for i in markers]


def _check_rows(ids, labels, mask, label_fn):
    for row, label, m in zip(ids, labels, mask, strict=True):
        assert row[0] == CLS and CLS not in row[1:]
        markers, values = _needles(row)
        assert len(markers) == 2
        assert markers[0] >= 1 and markers[1] >= markers[0] + 2 and markers[1] + 1 <= len(row) - 1
        assert all(0 <= v <= 9 for v in values)
        salient = set(markers) | {p + 1 for p in markers}
        assert sorted(np.flatnonzero(m)) == sorted(salient)
        for i, t in enumerate(row[1:], start=1):
            if i not in salient:
                assert MARKER < t < CLS, f"filler {t} at {i} is a digit, marker or CLS"
        want = values[0] if label_fn == "first" else (values[0] + values[1]) % 10
        assert label == want


def test_constants_describe_the_vocabulary():
    assert NEEDLE_VOCAB == 16 and MARKER == 10 and CLS == NEEDLE_VOCAB - 1


@pytest.mark.parametrize("label_fn", ["first", "sum"])
def test_make_needle_layout_labels_and_mask(label_fn):
    ids, labels, mask = make_needle(400, 9, label_fn, np.random.default_rng(3))
    assert ids.dtype == np.int64 and ids.shape == (400, 10)
    assert labels.dtype == np.int64 and labels.shape == (400,)
    assert mask.dtype == np.bool_ and mask.shape == (400, 10)
    assert ids.min() >= 0 and ids.max() < NEEDLE_VOCAB
    _check_rows(ids, labels, mask, label_fn)
    assert set(np.unique(labels)) == set(range(10))


def test_shortest_sequences_fill_exactly():
    ids, labels, mask = make_needle(20, 4, "sum", np.random.default_rng(0))
    assert (ids[:, [1, 3]] == MARKER).all() and mask[:, 1:].all() and not mask[:, 0].any()
    _check_rows(ids, labels, mask, "sum")


def test_placements_cover_all_positions():
    ids, _, _ = make_needle(2000, 8, "first", np.random.default_rng(1))
    pairs = {tuple(_needles(row)[0]) for row in ids}
    everything = {(a, b) for a in range(1, 9) for b in range(a + 2, 8)}
    assert pairs == everything


def test_both_label_fns_label_the_same_sequences():
    first = needle_task("first", n=200, seed=5)
    summed = needle_task("sum", n=200, seed=5)
    np.testing.assert_array_equal(first.x_train, summed.x_train)
    np.testing.assert_array_equal(first.mask_test, summed.mask_test)
    assert not np.array_equal(first.y_train, summed.y_train)


def test_needle_task_defaults_splits_and_rows():
    task = needle_task()
    assert isinstance(task, NeedleTask) and task.label_fn == "sum" and task.seq_len == 24
    assert (len(task.y_train), len(task.y_val), len(task.y_test)) == (2100, 300, 600)
    for x, y, m in [(task.x_train, task.y_train, task.mask_train), (task.x_val, task.y_val, task.mask_val),
                    (task.x_test, task.y_test, task.mask_test)]:
        assert x.dtype == np.int64 and x.shape == (len(y), 25)
        assert y.dtype == np.int64 and m.dtype == np.bool_ and m.shape == x.shape
        assert (m.sum(axis=1) == 4).all()
    _check_rows(task.x_test[:200], task.y_test[:200], task.mask_test[:200], "sum")
    rows = [{r.tobytes() for r in x} for x in (task.x_train, task.x_val, task.x_test)]
    assert sum(map(len, rows)) == 3000  # no sequence repeats, so the splits share none
    assert rows[0].isdisjoint(rows[1]) and rows[0].isdisjoint(rows[2]) and rows[1].isdisjoint(rows[2])


def test_needle_task_sizes_without_validation():
    task = needle_task("first", n=50, seq_len=6, seed=2, test_fraction=0.3, val_fraction=0.0)
    assert (len(task.y_train), len(task.y_val), len(task.y_test)) == (35, 0, 15)
    assert task.x_val.shape == (0, 7) and task.mask_val.shape == (0, 7)
    _check_rows(task.x_train, task.y_train, task.mask_train, "first")


def test_needle_task_is_seeded():
    a, b = needle_task(n=100, seed=7), needle_task(n=100, seed=7)
    for name in ("x_train", "y_train", "mask_train", "x_val", "x_test", "y_test", "mask_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = needle_task(n=100, seed=8)
    assert not np.array_equal(a.x_train, c.x_train) and not np.array_equal(a.mask_train, c.mask_train)


@pytest.mark.parametrize("kwargs, name", [
    ({"label_fn": "second"}, "label_fn"),
    ({"label_fn": None}, "label_fn"),
    ({"n": 0}, "n"),
    ({"n": 2.5}, "n"),
    ({"seq_len": 3}, "seq_len"),
    ({"seed": -1}, "seed"),
    ({"test_fraction": 0.0}, "test_fraction"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"val_fraction": -0.1}, "val_fraction"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"test_fraction": 0.5, "val_fraction": 0.5}, "test_fraction"),
    ({"n": 3}, "n"),
])
def test_needle_task_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=rf"needle_task: .*\b{name}\b"):
        needle_task(**kwargs)


@pytest.mark.parametrize("args, name", [
    ((0, 8, "sum"), "n"),
    ((5, 3, "sum"), "seq_len"),
    ((5, 8, "max"), "label_fn"),
])
def test_make_needle_rejects_bad_arguments(args, name):
    with pytest.raises(ValueError, match=rf"make_needle: {name}\b"):
        make_needle(*args, np.random.default_rng(0))


def test_make_needle_needs_a_generator():
    with pytest.raises(TypeError, match="make_needle: rng"):
        make_needle(5, 8, "sum", 0)
