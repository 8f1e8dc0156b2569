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
   once (the method of ``tests/gradcheck.py``'s ``check_grad``, with
   Richardson extrapolation, see below);
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

from minitspeft.tensor import Tensor

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
FWD_RTOL, FWD_ATOL = 1e-12, 1e-12  # forward against the autograd.numpy reference


def _value(fn, arrays) -> np.ndarray:
    """minitspeft's forward on constant tensors (no graph), as a float64 NumPy array."""
    out = fn(*[Tensor(a) for a in arrays])
    assert isinstance(out, Tensor), f"fn must return a Tensor, got {type(out)}"
    return np.asarray(out.data, dtype=np.float64)


def _projected_difference(fn, base, direction, v, h) -> float:
    """``<v, f(x + h d) - f(x - h d)> / (2 h)`` with the difference taken per output element."""
    plus = [x + h * d for x, d in zip(base, direction)]
    minus = [x - h * d for x, d in zip(base, direction)]
    return float(np.sum(v * (_value(fn, plus) - _value(fn, minus)))) / (2 * h)


def central_difference(fn, base, direction, v, h: float = FD_STEP) -> float:
    """Richardson-extrapolated central difference of ``<v, fn>`` at ``base`` along ``direction``."""
    coarse = _projected_difference(fn, base, direction, v, h)
    fine = _projected_difference(fn, base, direction, v, h / 2)
    return (4 * fine - coarse) / 3


def check_vjp(fn, ref, *arrays, seed: int, numeric: bool = True, fd_rtol: float = FD_RTOL,
              fd_atol: float = FD_ATOL, ag_rtol: float = AG_RTOL, ag_atol: float = AG_ATOL):
    """Check minitspeft's gradient of ``<v, fn(*arrays)>`` against a central difference and HIPS autograd.

    Args:
        fn: a function of minitspeft Tensors (one per array) returning a Tensor.
        ref: the same function written with ``autograd.numpy`` on arrays.
        *arrays: float64 NumPy arrays (any memory layout); each becomes a leaf
            that requires a gradient.
        seed: seed of the random upstream gradient ``v`` and direction ``u``.
        numeric: also compare with the central difference; pass False only at
            points where ``fn`` is not differentiable (ties), where only the
            convention shared with autograd can be compared.

    Returns:
        ``(grads, v)``: minitspeft's gradients (one per input) and the upstream gradient.
    """
    # imported here, not at the top: test_properties.py importorskips autograd first
    import autograd
    import autograd.numpy as anp

    arrays = tuple(arrays)
    for i, a in enumerate(arrays):
        assert isinstance(a, np.ndarray) and a.dtype == np.float64, f"input {i}: need a float64 ndarray"
    saved = [np.array(a, copy=True) for a in arrays]

    # forward, against the reference
    leaves = [Tensor(a, requires_grad=True) for a in arrays]
    out = fn(*leaves)
    assert isinstance(out, Tensor), f"fn must return a Tensor, got {type(out)}"
    assert out.requires_grad, "the output does not require grad (no graph was recorded)"
    got = np.asarray(out.data)
    want = np.asarray(ref(*saved))
    assert got.shape == want.shape, f"forward shape {got.shape} != reference shape {want.shape}"
    assert got.dtype == np.float64, f"forward dtype {got.dtype}, expected float64"
    np.testing.assert_allclose(got, want, rtol=FWD_RTOL, atol=FWD_ATOL, err_msg="forward vs autograd.numpy")

    # reverse mode
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(got.shape)
    out.backward(v)
    grads = []
    for i, (a, leaf) in enumerate(zip(saved, leaves)):
        assert leaf.grad is not None, f"input {i}: .grad is None after backward()"
        assert leaf.grad.shape == a.shape, f"input {i}: gradient shape {leaf.grad.shape} != {a.shape}"
        assert leaf.grad.dtype == np.float64, f"input {i}: gradient dtype {leaf.grad.dtype}"
        assert np.all(np.isfinite(leaf.grad)), f"input {i}: non-finite gradient {leaf.grad}"
        grads.append(np.array(leaf.grad))
    for i, (a, s) in enumerate(zip(arrays, saved)):
        np.testing.assert_array_equal(a, s, err_msg=f"forward or backward modified input {i} in place")

    # (2) the full gradient of <v, ref(x)> from HIPS autograd
    def projected(*xs):
        return anp.sum(v * ref(*xs))

    for i in range(len(saved)):
        expected = autograd.grad(projected, i)(*saved)
        np.testing.assert_allclose(grads[i], expected, rtol=ag_rtol, atol=ag_atol,
                                   err_msg=f"gradient of input {i} (shape {saved[i].shape}) vs HIPS autograd")

    if not numeric:
        return grads, v

    # (1) central differences of minitspeft's forward: every element of every input ...
    zeros = [np.zeros_like(a) for a in saved]
    for i, a in enumerate(saved):
        approx = np.zeros_like(a)
        for j in np.ndindex(a.shape):
            direction = [z.copy() for z in zeros]
            direction[i][j] = 1.0
            approx[j] = central_difference(fn, saved, direction, v)
        np.testing.assert_allclose(grads[i], approx, rtol=fd_rtol, atol=fd_atol,
                                   err_msg=f"gradient of input {i} (shape {a.shape}) vs central difference")

    # ... and one random direction of all inputs together (catches gradients leaking between inputs)
    u = [rng.standard_normal(a.shape) for a in saved]
    directional = central_difference(fn, saved, u, v)
    analytic = sum(float(np.sum(g * d)) for g, d in zip(grads, u))
    scale = sum(float(np.sum(np.abs(g * d))) for g, d in zip(grads, u))
    assert abs(analytic - directional) <= fd_atol + fd_rtol * max(abs(directional), scale), (
        f"directional derivative: reverse mode {analytic!r} vs central difference {directional!r}")
    return grads, v
