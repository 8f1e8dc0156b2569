"""Reductions over axes and their vector-Jacobian products: ``sum``, ``mean``, ``max``, ``min``, ``var``,
``std``, ``prod``, ``logsumexp``, ``norm``, ``cumsum``; and ``argmax``, ``argmin``, ``any``, ``all``,
which give integer or boolean results and no gradient.

``axis`` is an int, a tuple of ints, or None (all axes); ``keepdims`` keeps
the reduced axes with size 1 (PyTorch's ``dim`` and ``keepdim`` are accepted too). Each backward expands the upstream gradient
back over the reduced axes. The table at the end attaches them to
:class:`~minitspeft.tensor.Tensor` as methods (``t.sum(axis=1)``).
"""

from __future__ import annotations

import builtins
import warnings

from . import backend
from .checks import is_int, one_axis
from . import ops
from .extend import tensor_input, torch_names
from .tensor import Tensor, attach_methods


def normalize_axes(op: str, axis, ndim: int) -> tuple:
    """``axis`` (int, tuple or None) as a sorted tuple of non-negative axes.

    Raises:
        ValueError: naming ``op`` for an axis outside ``[-ndim, ndim)`` or a repeated axis.
        TypeError: for an axis that is not an integer (a bool, a float, ...).
    """
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if is_int(axis) else tuple(axis) if isinstance(axis, (tuple, list)) else None
    if axes is None or not builtins.all(is_int(ax) for ax in axes):  # ``all`` here is the reduction
        raise TypeError(f"{op}: axis must be None, an integer or a tuple of integers, got {axis!r}")
    low, high = (-1, 1) if ndim == 0 else (-ndim, ndim)  # a 0-d tensor takes axis 0 or -1, as in PyTorch
    for ax in axes:
        if not low <= ax < high:
            raise ValueError(f"{op}: axis {ax} is out of range for a tensor with {ndim} dimensions")
    if ndim == 0:
        return ()  # reducing a 0-d tensor over "its" axis leaves it as it is
    axes = tuple(sorted(ax % ndim for ax in axes))
    if len(set(axes)) != len(axes):
        raise ValueError(f"{op}: repeated axis in {axis}")
    return axes


def _float_dtype(x: Tensor):
    """The dtype of a statistic of ``x``: its own when floating, float64 for integers and booleans."""
    return x.dtype if x.dtype.kind == "f" else backend.xp.float64


def _expand(g, axes, keepdims):
    return g if keepdims else backend.xp.expand_dims(g, axes)


def _count(shape, axes) -> int:
    n = 1
    for ax in axes:
        n *= shape[ax]
    return n


@tensor_input
@torch_names
def sum(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Sum over ``axis``. d/dx = 1, broadcast back over the reduced axes."""
    axes = normalize_axes("sum", axis, x.ndim)
    out = x.data.sum(axis=axes, keepdims=keepdims)

    def backward(g):
        return (backend.xp.broadcast_to(_expand(g, axes, keepdims), x.shape),)

    return Tensor.from_op(out, (x,), backward, "sum")


@tensor_input
@torch_names
def mean(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Mean over ``axis``: ``sum / count`` (the count never promotes a float32 tensor); the mean of no
    elements is NaN, as in NumPy and PyTorch."""
    axes = normalize_axes("mean", axis, x.ndim)
    count = _count(x.shape, axes)
    return ops.mul(sum(x, axes, keepdims), 1.0 / count if count else float("nan"))


def _extreme(op: str, x: Tensor, axis, keepdims: bool) -> Tensor:
    """``max`` or ``min`` (``op``) over ``axis`` of any dtype; the gradient is shared evenly among ties."""
    axes = normalize_axes(op, axis, x.ndim)
    if x.size == 0 and (x.ndim == 0 or builtins.any(x.shape[ax] == 0 for ax in axes)):
        raise ValueError(f"{op}: cannot reduce over an empty axis of shape {x.shape} (axis {axis})")
    top = getattr(x.data, op)(axis=axes, keepdims=True)  # exact for every dtype (no negation to wrap)

    def backward(g):
        hit = (x.data == top).astype(x.dtype)
        return (_expand(g, axes, keepdims) * hit / hit.sum(axis=axes, keepdims=True),)

    out = top if keepdims else top.reshape([n for i, n in enumerate(top.shape) if i not in axes])
    return Tensor.from_op(out, (x,), backward, op)


class MaxMin(tuple):
    """``(values, indices)`` of ``max`` / ``min`` called with PyTorch's ``dim=`` (``torch.return_types.max``)."""

    values = property(lambda self: self[0])
    indices = property(lambda self: self[1])


def _extreme_or_pair(op: str, x: Tensor, axis, keepdims, dim, keepdim):
    if keepdims is not None and keepdim is not None:
        raise TypeError(f"{op}: got both keepdims and keepdim; give one")
    keepdims = bool(keepdim if keepdim is not None else keepdims)
    if dim is None:
        return _extreme(op, x, axis, keepdims)
    if axis is not None:
        raise TypeError(f"{op}: got both axis and dim; give one")
    values = _extreme(op, x, dim, keepdims)
    return MaxMin((values, _index_of_extreme("arg" + op, x, dim, keepdims)))


@tensor_input
def max(x: Tensor, axis=None, keepdims=None, *, dim=None, keepdim=None):  # noqa: A001
    """Maximum over ``axis``; the gradient is shared evenly among tied maxima (as ``torch.amax``).

    With PyTorch's ``dim=`` (one axis), the result is PyTorch's pair ``(values, indices)``
    (:class:`MaxMin`, also ``.values`` and ``.indices``), as ``torch.max(x, dim)``; with ``axis``
    (NumPy's name, or positional) it is the values alone. ``keepdim`` is ``keepdims``.

    Raises:
        ValueError: when a reduced axis is empty.
    """
    return _extreme_or_pair("max", x, axis, keepdims, dim, keepdim)


@tensor_input
def min(x: Tensor, axis=None, keepdims=None, *, dim=None, keepdim=None):  # noqa: A001
    """Minimum over ``axis``, computed directly (``-max(-x)`` would wrap for unsigned and extreme
    integers and fail for booleans); the gradient is shared evenly among tied minima (``torch.amin``).
    With ``dim=``, PyTorch's ``(values, indices)``, as :func:`max`.

    Raises:
        ValueError: when a reduced axis is empty.
    """
    return _extreme_or_pair("min", x, axis, keepdims, dim, keepdim)


@tensor_input
@torch_names
def var(x: Tensor, axis=None, keepdims: bool = False, correction: int = 0) -> Tensor:
    """Variance over ``axis``: ``sum((x - mean)^2) / (count - correction)``.

    ``correction=0`` is the population variance (NumPy's default), ``1`` the
    unbiased sample variance (PyTorch's default). d/dx = 2 (x - mean) / (count - correction).
    Where ``count - correction`` is not positive (an empty axis, or one element with
    ``correction=1``), the variance is NaN with a ``RuntimeWarning``, as in NumPy and PyTorch.
    """
    axes = normalize_axes("var", axis, x.ndim)
    count = _count(x.shape, axes)
    denom = count - correction
    if denom <= 0:
        warnings.warn(f"var: {count} elements with correction {correction} leave no degrees of freedom; "
                      "the variance is NaN", RuntimeWarning, stacklevel=2)
        shape = x.data.sum(axis=axes, keepdims=keepdims).shape
        return Tensor.from_op(backend.xp.full(shape, float("nan"), dtype=_float_dtype(x)), (x,),
                              lambda g: (backend.xp.full(x.shape, float("nan"), dtype=x.dtype),), "var")
    centred = x.data - x.data.mean(axis=axes, keepdims=True)
    out = (centred * centred).sum(axis=axes, keepdims=keepdims) / x.dtype.type(denom)

    def backward(g):
        return (_expand(g, axes, keepdims) * centred * x.dtype.type(2.0 / denom),)

    return Tensor.from_op(out, (x,), backward, "var")


@tensor_input
@torch_names
def std(x: Tensor, axis=None, keepdims: bool = False, correction: int = 0) -> Tensor:
    """Standard deviation ``sqrt(var(x, axis, correction))`` (``correction`` as in :func:`var`: 0 here by
    default, as NumPy; pass 1 for PyTorch's default). d/dvar = 1 / (2 std), and 0 where the deviation is
    0 (a constant slice, where the square root's derivative is infinite but every ``x - mean`` is 0):
    PyTorch's choice, so a constant input has a zero gradient, not NaN."""
    v = var(x, axis, keepdims, correction)
    xp = backend.xp
    out = xp.sqrt(v.data)

    def backward(g):
        safe = xp.where(out == 0, 1, out)
        return (xp.where(out == 0, 0, g / (2 * safe)),)

    return Tensor.from_op(out, (v,), backward, "std")


def _to_last(data, axes):
    """``data`` with ``axes`` moved to the end and merged into one: ``(rest..., n)``, and how to undo it."""
    xp = backend.xp
    rest = [i for i in range(data.ndim) if i not in axes]
    moved = xp.transpose(data, rest + list(axes))
    kept = moved.shape[:len(rest)]
    return moved.reshape(kept + (-1,)), rest, moved.shape


@tensor_input
@torch_names
def prod(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Product over ``axis``. d/dx_i = the product of the other elements of its slice, computed from
    prefix and suffix products, so it is exact where some ``x_j`` are 0 (where ``prod / x_i`` is 0/0).
    Source: the exclusive-scan form of the product rule (derived here)."""
    axes = normalize_axes("prod", axis, x.ndim)
    xp = backend.xp
    out = x.data.prod(axis=axes, keepdims=keepdims)

    def backward(g):
        flat, rest, moved_shape = _to_last(x.data, axes)
        ones = xp.ones(flat.shape[:-1] + (1,), dtype=flat.dtype)
        before = xp.cumprod(xp.concatenate([ones, flat[..., :-1]], axis=-1), axis=-1)
        after = xp.flip(xp.cumprod(xp.concatenate([ones, xp.flip(flat, -1)[..., :-1]], axis=-1), axis=-1), -1)
        order = rest + list(axes)
        others = xp.transpose((before * after).reshape(moved_shape), [order.index(i) for i in range(x.ndim)])
        return (_expand(g, axes, keepdims) * others,)

    return Tensor.from_op(out, (x,), backward, "prod")


@tensor_input
@torch_names
def logsumexp(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """``log(sum(exp(x)))`` over ``axis``, shifted by the maximum so it neither overflows nor underflows
    (``-inf`` when every element is ``-inf``, as PyTorch). d/dx = softmax(x) over the reduced axes."""
    axes = normalize_axes("logsumexp", axis, x.ndim)
    xp = backend.xp
    if x.dtype.kind != "f":
        x = ops.to_dtype(x, "float64")
    with backend.quiet_overflow():
        top = x.data.max(axis=axes, keepdims=True) if x.size else xp.full((1,) * x.ndim, -xp.inf, x.dtype)
        shift = xp.where(xp.isfinite(top), top, 0)
        total = xp.exp(x.data - shift).sum(axis=axes, keepdims=True)
        kept = xp.log(total) + shift

    def backward(g):
        with backend.quiet_overflow():
            return (_expand(g, axes, keepdims) * xp.exp(x.data - kept),)

    out = kept if keepdims else kept.reshape([n for i, n in enumerate(kept.shape) if i not in axes])
    return Tensor.from_op(out, (x,), backward, "logsumexp")


@tensor_input
def cumsum(x: Tensor, dim: int) -> Tensor:
    """Running sum along ``dim`` (``torch.cumsum``). d/dx_i = the sum of ``g`` from ``i`` to the end:
    a reversed running sum of the gradient.

    Raises:
        IndexError: for ``dim`` out of range (0 and -1 on a 0-d tensor).
    """
    if x.ndim == 0:
        one_axis("cumsum", dim, 1)
        return ops.clone(x)
    axis = one_axis("cumsum", dim, x.ndim)
    xp = backend.xp
    return Tensor.from_op(xp.cumsum(x.data, axis=axis), (x,),
                          lambda g: (xp.flip(xp.cumsum(xp.flip(g, axis), axis=axis), axis),), "cumsum")


def _index_of_extreme(op: str, x: Tensor, axis, keepdims: bool) -> Tensor:
    """``argmax`` or ``argmin`` (``op``): the int64 index of the first extreme, flat when ``axis`` is None."""
    if x.size == 0 and (axis is None or x.ndim == 0 or x.shape[one_axis(op, axis, x.ndim)] == 0):
        raise ValueError(f"{op}: cannot reduce over an empty axis of shape {x.shape} (axis {axis})")
    fn = getattr(backend.xp, op)
    if axis is None:
        out = backend.xp.asarray(fn(x.data.reshape(-1)), dtype="int64")
        return Tensor(out.reshape((1,) * x.ndim) if keepdims else out)
    if x.ndim == 0:
        one_axis(op, axis, 1)
        return Tensor(backend.xp.zeros((), dtype="int64"))
    out = fn(x.data, axis=one_axis(op, axis, x.ndim), keepdims=keepdims)
    return Tensor(out.astype("int64", copy=False))


@tensor_input
@torch_names
def argmax(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Index of the maximum along ``axis`` (of the flattened tensor when None), int64 and without a
    gradient; the first one at ties, as NumPy and PyTorch (on CPU).

    Raises:
        ValueError: for an empty tensor. IndexError: for an axis out of range.
    """
    return _index_of_extreme("argmax", x, axis, keepdims)


@tensor_input
@torch_names
def argmin(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Index of the minimum along ``axis`` (see :func:`argmax`).

    Raises:
        ValueError: for an empty tensor. IndexError: for an axis out of range.
    """
    return _index_of_extreme("argmin", x, axis, keepdims)


@tensor_input
@torch_names
def any(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Whether any element over ``axis`` is non-zero: a boolean Tensor, no gradient (``torch.any``)."""
    return Tensor(x.data.any(axis=normalize_axes("any", axis, x.ndim), keepdims=keepdims))


@tensor_input
@torch_names
def all(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Whether every element over ``axis`` is non-zero: a boolean Tensor, no gradient (``torch.all``)."""
    return Tensor(x.data.all(axis=normalize_axes("all", axis, x.ndim), keepdims=keepdims))


def stable_norm(a, axes) -> object:
    """``sqrt(sum(a * a))`` over ``axes`` (kept, size 1), right at any magnitude: a backend array.

    Where the squares overflow (``|a|`` past ``sqrt(max)``, about 1.8e19 in
    float32) or underflow (past ``sqrt(tiny)``, about 1e-19), that slice is
    recomputed as ``s * sqrt(sum((a / s)^2))`` with ``s = max |a|`` (the
    classic rescaling, as in LAPACK's ``nrm2``). Elsewhere the plain formula
    is used, so ordinary values get exactly the plain result. The result is
    infinite only where the true norm does not fit the dtype.
    """
    xp = backend.xp
    with backend.quiet_overflow():
        n = xp.sqrt((a * a).sum(axis=axes, keepdims=True))
    suspect = ~xp.isfinite(n) | (n < xp.sqrt(xp.finfo(a.dtype).tiny))
    if a.size and bool(suspect.any()):
        s = xp.abs(a).max(axis=axes, keepdims=True)
        risky = suspect & (s > 0) & xp.isfinite(s)
        if bool(risky.any()):
            safe = xp.where(risky, s, 1)
            scaled = a / safe
            n = xp.where(risky, s * xp.sqrt((scaled * scaled).sum(axis=axes, keepdims=True)), n)
    return n


@tensor_input
@torch_names
def norm(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Euclidean (L2) norm over ``axis``, right at any magnitude (:func:`stable_norm`).

    d/dx = x / ||x||, and 0 where ``||x|| = 0``: the minimum-norm subgradient,
    so a zero vector (a LoRA update at initialisation, B = 0) gives a finite
    gradient. Derived here; PyTorch's ``linalg.norm`` makes the same choice.
    """
    axes = normalize_axes("norm", axis, x.ndim)
    xp = backend.xp
    n = stable_norm(x.data, axes)

    def backward(g):  # n == 0 (not n > 0): a NaN norm keeps its NaN gradient
        safe = xp.where(n == 0, 1, n)
        return (_expand(g, axes, keepdims) * xp.where(n == 0, 0, x.data / safe),)

    out = n if keepdims else n.reshape([m for i, m in enumerate(n.shape) if i not in axes])
    return Tensor.from_op(out, (x,), backward, "norm")


attach_methods({"sum": sum, "mean": mean, "max": max, "min": min, "var": var, "norm": norm, "std": std, "prod": prod,
                "logsumexp": logsumexp, "cumsum": cumsum, "argmax": argmax, "argmin": argmin, "any": any,
                "all": all})
