"""A tiny image task shared by the training tests: class c lights up row c of a 4x4 image."""

import numpy as np


def toy_images(n: int = 40, seed: int = 0) -> tuple:
    """``(x, y)``: float32 images ``(n, 4, 4)`` with values in [0, 1] and labels 0..2 ``(n,)``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    x = rng.uniform(0, 0.3, size=(n, 4, 4)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, c] += 0.7
    return x, y
