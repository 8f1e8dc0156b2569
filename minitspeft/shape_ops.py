"""Shape ops and their vector-Jacobian products: reshape, transpose, broadcast, index, join, select.

None of them changes a value, so every backward moves the gradient back to
where its element came from: reshape it back, permute it back, sum it over
broadcast copies, scatter it into zeros (adding repeats), split it, or route
it by the condition. The table at the end attaches ``reshape``,
``transpose``, ``swapaxes``, ``T`` and ``[]`` to :class:`~minitspeft.tensor.Tensor`.
"""

from __future__ import annotations

import itertools

from . import backend
from .checks import is_int
from .extend import as_tensor, binary_op, tensor_input, unbroadcast
from .tensor import Tensor, attach_methods

__all__ = ["reshape", "transpose", "swapaxes", "broadcast_to", "getitem", "concat", "stack", "where"]


@tensor_input
def reshape(x: Tensor, shape) -> Tensor:
    """Reshape; the gradient is reshaped back.

    Raises:
        ValueError: if the sizes differ.
    """
    dims = (shape,) if is_int(shape) else tuple(shape) if isinstance(shape, (tuple, list)) else None
    if dims is None or not all(is_int(n) for n in dims):
        raise TypeError(f"reshape: the shape must be integers, got {shape!r}")
    try:
        out = x.data.reshape(dims)
    except ValueError:
        raise ValueError(f"reshape: cannot reshape tensor of shape {x.shape} into {tuple(shape)}") from None
    return Tensor.from_op(out, (x,), lambda g: (g.reshape(x.shape),), "reshape")


@tensor_input
def transpose(x: Tensor, axes=None) -> Tensor:
    """Permute axes (reverse them when ``axes`` is None); the gradient uses the inverse permutation.

    Raises:
        ValueError: if ``axes`` is not a permutation of the tensor's axes (each in ``[-ndim, ndim)``).
    """
    if axes is None:
        axes = tuple(reversed(range(x.ndim)))
    else:
        given = tuple(axes)
        if not all(is_int(a) and -x.ndim <= a < x.ndim for a in given):
            raise ValueError(f"transpose: axes {given} are not all integers in [-{x.ndim}, {x.ndim}) "
                             f"for shape {x.shape}")
        axes = tuple(a % x.ndim for a in given)
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"transpose: axes {axes} are not a permutation for shape {x.shape}")
    inverse = tuple(axes.index(i) for i in range(x.ndim))
    return Tensor.from_op(x.data.transpose(axes), (x,), lambda g: (g.transpose(inverse),), "transpose")


@tensor_input
def swapaxes(x: Tensor, axis1: int, axis2: int) -> Tensor:
    """Swap two axes (its own inverse).

    Raises:
        ValueError: for an axis that is not an integer in ``[-ndim, ndim)``.
    """
    for a in (axis1, axis2):
        if not (is_int(a) and -x.ndim <= a < x.ndim):
            raise ValueError(f"swapaxes: axis {a!r} is out of range for shape {x.shape}")
    axes = list(range(x.ndim))
    axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
    return transpose(x, axes)


@tensor_input
def broadcast_to(x: Tensor, shape) -> Tensor:
    """Broadcast to ``shape``; the gradient is summed back with :func:`~minitspeft.extend.unbroadcast`.

    Raises:
        ValueError: if ``x`` does not broadcast to ``shape``.
    """
    try:
        out = backend.xp.broadcast_to(x.data, tuple(shape))
    except ValueError:
        raise ValueError(f"broadcast_to: cannot broadcast shape {x.shape} to {tuple(shape)}") from None
    return Tensor.from_op(out, (x,), lambda g: (unbroadcast(g, x.shape),), "broadcast_to")


@tensor_input
def getitem(x: Tensor, index) -> Tensor:
    """``x[index]`` for ints, slices, integer arrays and boolean masks, with NumPy's rules.

    Where they differ from PyTorch's: NumPy counts an integer as an advanced
    index when an array index is present, and when advanced indices are
    separated by a slice their axes go first. So ``x[1, :, 3:11:2, idx, 0:2]``
    on a ``(2, 3, 12, 5, 4)`` tensor with ``idx`` of length 2 is
    ``(2, 3, 4, 2)`` here (NumPy) and ``(3, 4, 2, 2)`` in PyTorch. Write
    ``x[1][:, 3:11:2, idx, 0:2]`` for PyTorch's layout.

    The backward scatters ``g`` into zeros with accumulation, so a repeated
    index receives the sum of its gradients.

    Raises:
        IndexError: naming the index and the shape when it is out of range.
    """
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    try:
        out = x.data[index]
    except IndexError as exc:
        raise IndexError(f"getitem: index {index!r} invalid for shape {x.shape}: {exc}") from None

    def backward(g):
        full = backend.xp.zeros(x.shape, dtype=g.dtype)
        backend.scatter_add(full, index, g)
        return (full,)

    return Tensor.from_op(out, (x,), backward, "getitem")


def concat(tensors, axis: int = 0) -> Tensor:
    """Join tensors along an existing axis; the gradient is split back into pieces.

    Raises:
        ValueError: if the shapes differ off ``axis``.
    """
    xp = backend.xp
    tensors = [as_tensor(t) for t in tensors]
    try:
        out = xp.concatenate([t.data for t in tensors], axis=axis)
    except ValueError:
        raise ValueError(f"concat: shapes {[t.shape for t in tensors]} do not match off axis {axis}") from None
    bounds = list(itertools.accumulate(t.shape[axis] for t in tensors))[:-1]

    def backward(g):
        return tuple(xp.split(g, bounds, axis=axis))

    return Tensor.from_op(out, tensors, backward, "concat")


def stack(tensors, axis: int = 0) -> Tensor:
    """Stack same-shaped tensors along a new axis.

    Raises:
        ValueError: if the shapes differ.
    """
    tensors = [as_tensor(t) for t in tensors]
    shapes = {t.shape for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack: all shapes must match, got {[t.shape for t in tensors]}")
    xp = backend.xp
    out = xp.stack([t.data for t in tensors], axis=axis)

    def backward(g):
        return tuple(xp.take(g, i, axis=axis) for i in range(len(tensors)))

    return Tensor.from_op(out, tensors, backward, "stack")


def where(condition, a, b) -> Tensor:
    """Pick ``a`` where ``condition`` is true, else ``b`` (broadcasting all three).

    ``condition`` is a boolean array or Tensor and gets no gradient.

    Raises:
        ValueError: if ``a`` and ``b`` do not broadcast.
    """
    xp = backend.xp
    cond = condition.data if isinstance(condition, Tensor) else xp.asarray(condition)

    def route(g, keep_where):
        zero = xp.zeros((), dtype=g.dtype)
        return xp.where(cond, g, zero) if keep_where else xp.where(cond, zero, g)

    return binary_op("where", a, b, lambda x, y: xp.where(cond, x, y),
                     lambda g, x, y, o: route(g, True), lambda g, x, y, o: route(g, False))


# ------------------------------------------------- operators and methods


def _varargs(args: tuple) -> tuple:
    """Accept both ``f(2, 3)`` and ``f((2, 3))``, as NumPy and PyTorch do."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


def _reshape_method(self, *shape):
    """``t.reshape(2, 3)`` or ``t.reshape((2, 3))``."""
    return reshape(self, _varargs(shape))


def _transpose_method(self, *axes):
    """``t.transpose()`` reverses the axes; ``t.transpose(0, 2, 1)`` or ``t.transpose((0, 2, 1))`` permutes."""
    return transpose(self, _varargs(axes) or None)


attach_methods({
    "__getitem__": getitem,
    "reshape": _reshape_method,
    "transpose": _transpose_method,
    "swapaxes": swapaxes,
    "T": property(lambda self: transpose(self, None), doc="The tensor with its axes reversed."),
})
