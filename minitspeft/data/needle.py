"""The needle task: find two marked values in a sequence of filler tokens (synthetic, seeded, no download).

This task is this project's own design, sized after a small prototype of the
gate (docs/gate.md); it is not a benchmark from the TS-PEFT paper.

A sequence is a CLS token followed by ``seq_len`` tokens. All of them are
filler tokens except two *needles*: a MARKER token immediately followed by a
value token 0..9. The two marker+value pairs sit at random positions, never
overlap and always lie inside the sequence. For ``seq_len = 8`` one row might
read (``C`` = CLS, ``M`` = MARKER, ``f`` = a filler)::

    position  0  1  2  3  4  5  6  7  8
    token     C  f  M  7  f  f  M  4  f      "first" -> 7, "sum" -> (7 + 4) % 10 = 1

Vocabulary (``NEEDLE_VOCAB = 16`` ids, matching ``TransformerConfig``'s
default ``vocab_size``):

- ids ``0..9``: value tokens (``VALUES``);
- id ``10``: the MARKER;
- ids ``11..14``: filler tokens (``FILLERS``). They are deliberately *not*
  digits: with digit distractors the pretraining stalled in the calibration;
- id ``15``: the CLS token, always at position 0 (``CLS = NEEDLE_VOCAB - 1``),
  pooled by ``TransformerConfig(pooling="cls")``.

Labels (``label_fn``):

- ``"first"``: the value after the first (leftmost) marker: the pretraining task;
- ``"sum"``: ``(value1 + value2) % 10``: the fine-tuning task, which needs both needles.

Each row also carries a boolean *salient mask*, True exactly at the two
markers and the two values (the tokens that decide the label) and False
elsewhere, the CLS position included: a reference against which to compare
which tokens a token gate keeps open.

For a given seed the token ids do not depend on ``label_fn``: ``"first"``
and ``"sum"`` label the very same sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..checks import check_int

NEEDLE_VOCAB = 16
VALUES = tuple(range(10))
MARKER = 10
FILLERS = tuple(range(11, NEEDLE_VOCAB - 1))
CLS = NEEDLE_VOCAB - 1
LABEL_FNS = ("first", "sum")
MIN_SEQ_LEN = 4  # two marker+value pairs


def _check_int(name: str, value, low: int, where: str) -> int:
    check_int(where, name, value, low)
    return int(value)


def _check_label_fn(label_fn, where: str) -> str:
    if label_fn not in LABEL_FNS:
        raise ValueError(f"{where}: label_fn must be one of {LABEL_FNS}, got {label_fn!r}")
    return label_fn


def make_needle(n: int, seq_len: int, label_fn: str, rng: np.random.Generator) -> tuple:
    """Draw ``n`` needle sequences with their labels and salient masks.

    Marker positions are uniform over all placements of two non-overlapping
    marker+value pairs inside the ``seq_len`` tokens after CLS; values are
    uniform on 0..9 and fillers uniform on ``FILLERS``, all independent.

    Args:
        n: number of sequences (>= 1).
        seq_len: tokens after CLS (>= 4, room for two marker+value pairs);
            rows are ``seq_len + 1`` tokens long.
        label_fn: ``"first"`` (the value after the first marker) or
            ``"sum"`` (the two values' sum modulo 10).
        rng: a ``numpy.random.Generator``; the draws do not depend on ``label_fn``.

    Returns:
        ``(ids, labels, mask)``: int64 ``(n, seq_len + 1)`` token ids with
        ``CLS`` at position 0; int64 ``(n,)`` labels in 0..9; bool
        ``(n, seq_len + 1)``, True at the two markers and the two values.

    Raises:
        ValueError: naming ``n``, ``seq_len`` or ``label_fn`` when it is invalid.
        TypeError: when ``rng`` is not a ``numpy.random.Generator``.
    """
    where = "make_needle"
    n = _check_int("n", n, 1, where)
    seq_len = _check_int("seq_len", seq_len, MIN_SEQ_LEN, where)
    label_fn = _check_label_fn(label_fn, where)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{where}: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    # Two distinct slots a < b out of seq_len - 2, then markers at a and b + 1 (0-based after CLS):
    # a bijection onto the placements with p2 >= p1 + 2 and p2 + 1 <= seq_len - 1.
    slots = np.sort(np.argsort(rng.random((n, seq_len - 2)), axis=1)[:, :2], axis=1)
    p1 = slots[:, 0] + 1          # +1 for the CLS at position 0
    p2 = slots[:, 1] + 2          # +1 for the shift above, +1 for CLS
    values = rng.integers(0, len(VALUES), size=(n, 2))
    ids = rng.choice(np.asarray(FILLERS, dtype=np.int64), size=(n, seq_len + 1))
    rows = np.arange(n)
    ids[:, 0] = CLS
    ids[rows, p1] = MARKER
    ids[rows, p1 + 1] = values[:, 0]
    ids[rows, p2] = MARKER
    ids[rows, p2 + 1] = values[:, 1]
    mask = np.zeros((n, seq_len + 1), dtype=bool)
    for pos in (p1, p1 + 1, p2, p2 + 1):
        mask[rows, pos] = True
    if label_fn == "first":
        labels = values[:, 0]
    else:
        labels = (values[:, 0] + values[:, 1]) % 10
    return ids.astype(np.int64), labels.astype(np.int64), mask


@dataclass
class NeedleTask:
    """Needle sequences split into train, validation and test.

    Attributes:
        x_train, x_val, x_test: int64 ``(N, seq_len + 1)`` token ids, CLS first.
        y_train, y_val, y_test: int64 ``(N,)`` labels 0..9.
        mask_train, mask_val, mask_test: bool ``(N, seq_len + 1)``, True at the
            two markers and the two values.
        label_fn: ``"first"`` or ``"sum"``.
        seq_len: tokens after CLS (the model's ``block_size`` is ``seq_len + 1``).

    The validation split is for choosing settings (e.g. gate defaults such as
    ``temperature`` or ``sparsity_weight``); report final numbers on the test
    split only, which was not used to choose them. It is empty when
    ``val_fraction`` is 0.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    mask_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    mask_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mask_test: np.ndarray
    label_fn: str
    seq_len: int


def needle_task(label_fn: str = "sum", n: int = 3000, seq_len: int = 24, seed: int = 0,
                test_fraction: float = 0.2, val_fraction: float = 0.1) -> NeedleTask:
    """Draw ``n`` seeded needle sequences and split them into train, validation and test.

    The sequences are drawn with ``make_needle(n, seq_len, label_fn,
    numpy.random.default_rng(seed))``; being independent draws, they are split
    in order: the first ``n_train`` rows train, the next ``n_val`` validate,
    the last ``n_test`` test, where ``n_test = round(test_fraction * n)``,
    ``n_val = round(val_fraction * n)`` and ``n_train`` is the rest.

    Args:
        label_fn: ``"first"`` (pretraining) or ``"sum"`` (fine-tuning).
        n: sequences in all (>= 1, and enough that every split with a
            non-zero fraction, and train, gets at least one row).
        seq_len: tokens after CLS (>= 4).
        seed: seed of the draws (>= 0); the ids do not depend on ``label_fn``.
        test_fraction: share held out for test, in ``(0, 1)``.
        val_fraction: share held out for validation, in ``[0, 1)``;
            ``test_fraction + val_fraction`` must be below 1.

    Returns:
        A :class:`NeedleTask`.

    Raises:
        ValueError: naming ``label_fn``, ``n``, ``seq_len``, ``seed``,
            ``test_fraction`` or ``val_fraction`` when it is invalid.
    """
    where = "needle_task"
    label_fn = _check_label_fn(label_fn, where)
    n = _check_int("n", n, 1, where)
    seq_len = _check_int("seq_len", seq_len, MIN_SEQ_LEN, where)
    seed = _check_int("seed", seed, 0, where)
    if not 0 < test_fraction < 1:
        raise ValueError(f"{where}: test_fraction must be in (0, 1), got {test_fraction!r}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"{where}: val_fraction must be in [0, 1), got {val_fraction!r}")
    if test_fraction + val_fraction >= 1:
        raise ValueError(f"{where}: test_fraction + val_fraction must be below 1, "
                         f"got {test_fraction!r} + {val_fraction!r}")
    n_test = round(test_fraction * n)
    n_val = round(val_fraction * n)
    n_train = n - n_test - n_val
    if n_test < 1 or n_train < 1 or (val_fraction > 0 and n_val < 1):
        raise ValueError(f"{where}: n={n} is too small for test_fraction={test_fraction} and "
                         f"val_fraction={val_fraction} (splits of {n_train}/{n_val}/{n_test} rows)")
    ids, labels, mask = make_needle(n, seq_len, label_fn, np.random.default_rng(seed))
    tr, va = slice(0, n_train), slice(n_train, n_train + n_val)
    te = slice(n_train + n_val, n)
    return NeedleTask(ids[tr], labels[tr], mask[tr], ids[va], labels[va], mask[va],
                      ids[te], labels[te], mask[te], label_fn, seq_len)
