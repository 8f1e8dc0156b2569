"""The UCI optical-recognition handwritten digits, shipped with the package (no download).

1,797 grey images of 8x8 pixels with integer intensities 0..16 and labels
0..9. Source: E. Alpaydin and C. Kaynak, "Optical Recognition of Handwritten
Digits", UCI Machine Learning Repository (CC BY 4.0); the copy bundled in
scikit-learn. See ``minitspeft/data/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

N_IMAGES = 1797
MAX_PIXEL = 16


def load_digits() -> tuple:
    """Return ``(images, labels)``: uint8 ``(1797, 8, 8)`` with values 0..16, and uint8 ``(1797,)`` 0..9."""
    with resources.files(__package__).joinpath("digits.npz").open("rb") as fh:
        with np.load(fh, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    if images.shape != (N_IMAGES, 8, 8) or labels.shape != (N_IMAGES,):
        raise ValueError(f"load_digits: unexpected bundled shapes {images.shape} and {labels.shape}")
    return images, labels


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple:
    """Split indices so each class keeps the same share in train and test.

    Args:
        labels: integer ``(N,)``.
        test_fraction: share of each class held out, in ``(0, 1)``.
        seed: seed of the shuffle (>= 0).

    Returns:
        ``(train_idx, test_idx)``, sorted int64 arrays.

    Raises:
        ValueError: for a fraction outside ``(0, 1)``.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"stratified_split: test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@dataclass
class DigitsTask:
    """Images of some digit classes, split into train and test.

    Attributes:
        x_train, x_test: float32 ``(N, 8, 8)``, pixels scaled to ``[0, 1]``.
        y_train, y_test: int64 ``(N,)``, labels renumbered ``0..len(classes)-1``
            in the order of ``classes``.
        classes: the original digits, e.g. ``(5, 6, 7, 8, 9)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple


def digits_task(classes, seed: int = 0, test_fraction: float = 0.25) -> DigitsTask:
    """Build a seeded, stratified train/test task on the given digit classes.

    Args:
        classes: iterable of distinct digits 0..9.
        seed: split seed (>= 0).
        test_fraction: held-out share of each class.

    Raises:
        ValueError: for digits outside 0..9 or repeated digits.
    """
    classes = tuple(int(c) for c in classes)
    if not classes or len(set(classes)) != len(classes) or not all(0 <= c <= 9 for c in classes):
        raise ValueError(f"digits_task: classes must be distinct digits 0..9, got {classes}")
    images, labels = load_digits()
    keep = np.isin(labels, classes)
    x = images[keep].astype(np.float32) / MAX_PIXEL
    remap = np.full(10, -1, dtype=np.int64)
    remap[list(classes)] = np.arange(len(classes))
    y = remap[labels[keep]]
    tr, te = stratified_split(y, test_fraction, seed)
    return DigitsTask(x[tr], y[tr], x[te], y[te], classes)
