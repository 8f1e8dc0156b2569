"""Hypothesis strategies and the gradient oracle for ``tests/test_properties.py`` (a helper, not a test module).

Strategies
----------
- :func:`shapes`: 1-3 dims of size 1-4 (size-1 dims included).
- :func:`broadcast_pair` / :func:`broadcast_triple`: mutually broadcastable
  shapes, with dims of 1 and missing leading dims (down to 0-d).
- :func:`broadcast_source`: a shape that broadcasts *to* a given shape.
- :func:`float_arrays`: float64 arrays whose elements come from an op's
  domain, optionally laid out non-contiguously (Fortran order, a step-2
  slice of a larger buffer, or negative strides).
- Element strategies for the domains: :func:`reals` (bounded),
  :func:`magnitudes` (``lo <= |x| <= hi``, either sign: away from the kink
  of relu/abs), :func:`away_from` (away from given points, e.g. clip bounds)
  and :func:`grid` (values on a lattice ``spacing * k + offset``: two grids
  with different offsets never tie, so ``maximum`` has no ties).
- :func:`distinct_arrays`: arrays whose elements are pairwise at least
  ``spacing`` apart (no ties for ``max``/``min`` reductions, no zero-variance
  rows for ``layer_norm``).
- :func:`reduction_axes`: None, an int (possibly negative) or a tuple of
  axes (possibly empty, possibly negative).

Oracle
------
:func:`check_vjp` differentiates ``<v, f(x_1, ..., x_k)>`` for a random
upstream gradient ``v`` three ways and compares them:

1. reverse mode in minitspeft: ``f(...).backward(v)``;
2. a central difference of minitspeft's own forward, in float64, per
   element of every input and along one random direction of all inputs at
   once (``minitspeft.testing.check_grad``, with Richardson
   extrapolation at the step ``FD_STEP``);
3. HIPS ``autograd``: ``autograd.grad`` of ``anp.sum(v * f_ref(x))`` where
   ``f_ref`` is the same function written in ``autograd.numpy``.

The forward is compared with ``f_ref`` as well.

Central-difference accuracy. A plain central difference with step ``h`` has
truncation error ``h^2 f'''/6`` and rounding error ``~u |f| / h`` (``u`` the
float64 unit round-off). To compare against ``rtol=1e-6`` without a loose
``atol``, the numeric derivative is the Richardson extrapolation
``(4 D(h/2) - D(h)) / 3`` of two central differences ``D`` (truncation
``O(h^4)``), with ``h = 2**-10``; and the difference ``f(x+h) - f(x-h)`` is
taken per output element before it is projected onto ``v``, so the rounding
error does not scale with the size of ``<v, f>``. Inputs stay at least
``h`` away from every kink (the strategies keep margins of 0.05 or more).
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minitspeft.testing import check_grad

MAX_DIMS = 3
MAX_SIDE = 4

# ---------------------------------------------------------------- shapes


def shapes(min_dims: int = 1, max_dims: int = MAX_DIMS, min_side: int = 1, max_side: int = MAX_SIDE):
    """Array shapes with ``min_dims..max_dims`` dims of size ``min_side..max_side`` (size 1 included)."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcast_pair(min_dims: int = 0, max_dims: int = MAX_DIMS, max_side: int = MAX_SIDE):
    """Two mutually broadcastable shapes ``(sa, sb)``: dims of 1 and missing leading dims on either side."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=2, min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side
    ).map(lambda b: tuple(b.input_shapes))


def broadcast_triple(min_dims: int = 0, max_dims: int = MAX_DIMS, max_side: int = MAX_SIDE):
    """Three mutually broadcastable shapes (``where``'s condition, ``a`` and ``b``)."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=3, min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side
    ).map(lambda b: tuple(b.input_shapes))


@st.composite
def broadcast_source(draw, target: tuple):
    """A shape that ``numpy.broadcast_to`` stretches to ``target``: leading dims dropped, some dims set to 1."""
    drop = draw(st.integers(0, len(target)))
    kept = target[drop:]
    ones = draw(st.lists(st.booleans(), min_size=len(kept), max_size=len(kept)))
    return tuple(1 if one else n for n, one in zip(kept, ones))


@st.composite
def reduction_axes(draw, ndim: int):
    """``axis`` for a reduction over an ``ndim``-dim tensor: None, an int, or a tuple (maybe empty, unsorted)."""
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    # each axis in or out with even odds (so non-leading multi-axis subsets such as (0, 2)
    # are common), in a random order, each one possibly written as a negative axis
    keep = draw(st.lists(st.booleans(), min_size=ndim, max_size=ndim))
    chosen = draw(st.permutations([ax for ax, k in zip(range(ndim), keep) if k]))
    return tuple(ax - ndim if draw(st.booleans()) else ax for ax in chosen)


def reduced_axes(axis, ndim: int) -> tuple:
    """The sorted non-negative axes a reduction with ``axis`` removes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(ax % ndim for ax in axes))


# -------------------------------------------------------------- elements


def reals(lo: float = -3.0, hi: float = 3.0):
    """Finite floats in ``[lo, hi]`` (no NaN, infinity or subnormals)."""
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def magnitudes(lo: float = 0.05, hi: float = 3.0):
    """Floats with ``lo <= |x| <= hi``, either sign (away from a kink or pole at 0)."""
    return st.one_of(reals(lo, hi), reals(-hi, -lo))


def away_from(points, lo: float = -3.0, hi: float = 3.0, margin: float = 0.05):
    """Floats in ``[lo, hi]`` at least ``margin`` from every one of ``points`` (None entries ignored).

    Drawn from the allowed intervals directly (no filter, so nothing is rejected).
    """
    edges = sorted(p for p in points if p is not None)
    intervals, start = [], lo
    for p in edges:
        intervals.append((start, p - margin))
        start = max(start, p + margin)
    intervals.append((start, hi))
    parts = [reals(a, b) for a, b in intervals if a <= b]
    assert parts, f"no values in [{lo}, {hi}] are {margin} away from {edges}"
    return st.one_of(parts)


def grid(lo: int = -15, hi: int = 15, spacing: float = 0.2, offset: float = 0.0):
    """Values ``spacing * k + offset`` for integers ``k`` in ``[lo, hi]``."""
    return st.integers(lo, hi).map(lambda k: spacing * k + offset)


# ---------------------------------------------------------------- arrays

LAYOUTS = ("contiguous", "fortran", "strided", "reversed")


def with_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """The same values as ``a`` in another memory layout.

    ``fortran``: built transposed, then ``.T`` (non-C-contiguous for 2+ dims);
    ``strided``: every second element of a buffer twice as long in the last axis;
    ``reversed``: a negative-stride view of a reversed copy.
    """
    if a.ndim == 0 or layout == "contiguous":
        out = np.array(a, dtype=np.float64, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
    elif layout == "fortran":
        out = np.ascontiguousarray(a.T).T
    elif layout == "strided":
        buffer = np.full(a.shape[:-1] + (2 * a.shape[-1],), np.nan)
        buffer[..., ::2] = a
        out = buffer[..., ::2]
    elif layout == "reversed":
        out = np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    else:  # pragma: no cover - programming error in a test
        raise ValueError(f"unknown layout {layout!r}")
    assert out.shape == a.shape and np.array_equal(out, a)
    return out


@st.composite
def float_arrays(draw, shape, elements=None, unique: bool = False, layouts=LAYOUTS):
    """A float64 array of ``shape`` with elements from ``elements`` (default :func:`reals`).

    Every element is drawn (no fill value), so arrays are not mostly constant.
    The layout is drawn from ``layouts``; pass ``("contiguous",)`` to keep it plain.
    """
    elements = reals() if elements is None else elements
    a = draw(hnp.arrays(np.float64, shape, elements=elements, fill=st.nothing(), unique=unique))
    return with_layout(a, draw(st.sampled_from(layouts)))


@st.composite
def distinct_arrays(draw, shape, spacing: float = 0.1, layouts=LAYOUTS):
    """A float64 array whose elements are pairwise at least ``spacing`` apart (up to 81 elements)."""
    n = math.prod(shape)
    half = max(40, n)
    ks = draw(hnp.arrays(np.int64, shape, elements=st.integers(-half, half), fill=st.nothing(), unique=True))
    offset = draw(reals(0.0, spacing / 2))
    a = ks.astype(np.float64) * spacing + offset
    return with_layout(a, draw(st.sampled_from(layouts)))


seeds = st.integers(0, 2**32 - 1)

# ---------------------------------------------------------------- oracle

FD_STEP = 2.0**-10
FD_RTOL, FD_ATOL = 1e-6, 1e-8  # central difference (Richardson, float64)
AG_RTOL, AG_ATOL = 1e-10, 1e-12  # HIPS autograd, float64
FWD_TOL = 1e-12  # forward against the autograd.numpy reference


def check_vjp(fn, ref, *arrays, seed: int, numeric: bool = True, fd_rtol: float = FD_RTOL,
              fd_atol: float = FD_ATOL, ag_rtol: float = AG_RTOL, ag_atol: float = AG_ATOL):
    """:func:`minitspeft.testing.check_grad` with ``ref`` (the function in ``autograd.numpy``) as its
    oracle and this module's step and tolerances. Returns ``(grads, v)``."""
    return check_grad(fn, *arrays, eps=FD_STEP, rtol=fd_rtol, atol=fd_atol, seed=seed, numeric=numeric,
                      oracle=ref, oracle_rtol=ag_rtol, oracle_atol=ag_atol, forward_tol=FWD_TOL)
