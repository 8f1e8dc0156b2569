"""Shape ops and their vector-Jacobian products: reshape, permute, broadcast, flip, tile, index, join.

None of them changes a value, so every backward moves the gradient back to
where its element came from: reshape it back, permute it back, sum it over
broadcast or tiled copies, flip it back, scatter it into zeros (adding
repeats), split it, or route it by the condition. PyTorch's names are here
too (``unsqueeze``, ``squeeze``, ``flatten``, ``permute``, ``view``,
``expand``, ``repeat``). The table at the end attaches the methods and
``[]`` to :class:`~minitspeft.tensor.Tensor`.
"""

from __future__ import annotations

import itertools

from . import backend
from .checks import is_int, one_axis
from .extend import as_tensor, binary_op, tensor_input, torch_names, unbroadcast
from .tensor import Tensor, attach_methods

__all__ = ["reshape", "transpose", "swapaxes", "broadcast_to", "unsqueeze", "squeeze", "flatten", "expand", "flip",
           "repeat", "getitem", "concat", "stack", "where"]


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


def _reshaped(op: str, x: Tensor, shape: tuple) -> Tensor:
    """``x`` with the same elements in ``shape``; the gradient is reshaped back."""
    return Tensor.from_op(x.data.reshape(shape), (x,), lambda g: (g.reshape(x.shape),), op)


@tensor_input
def unsqueeze(x: Tensor, dim: int) -> Tensor:
    """Insert an axis of size 1 at ``dim`` in ``[-ndim-1, ndim]`` (``torch.unsqueeze``).

    Raises:
        IndexError: for ``dim`` out of range. TypeError: for a non-integer ``dim``.
    """
    d = one_axis("unsqueeze", dim, x.ndim + 1)
    return _reshaped("unsqueeze", x, x.shape[:d] + (1,) + x.shape[d:])


@tensor_input
def squeeze(x: Tensor, dim=None) -> Tensor:
    """Remove axes of size 1: all of them (``dim=None``), or those among ``dim`` (an int or a tuple)
    that have size 1; an axis of another size is kept, as in ``torch.squeeze``.

    Raises:
        IndexError: for a ``dim`` out of range (0 and -1 are allowed on a 0-d tensor).
    """
    if dim is None:
        dims = {i for i, n in enumerate(x.shape) if n == 1}
    else:
        given = dim if isinstance(dim, (tuple, list)) else (dim,)
        dims = {one_axis("squeeze", d, max(x.ndim, 1)) for d in given}
    return _reshaped("squeeze", x, tuple(n for i, n in enumerate(x.shape) if not (i in dims and n == 1)))


@tensor_input
def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Merge the axes ``start_dim .. end_dim`` (inclusive) into one (``torch.flatten``); a 0-d tensor
    becomes shape ``(1,)``.

    Raises:
        IndexError: for a dim out of range. ValueError: when ``start_dim`` comes after ``end_dim``.
    """
    if x.ndim == 0:
        return _reshaped("flatten", x, (1,))
    lo, hi = one_axis("flatten", start_dim, x.ndim), one_axis("flatten", end_dim, x.ndim)
    if lo > hi:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for shape {x.shape}")
    merged = 1
    for n in x.shape[lo:hi + 1]:
        merged *= n
    return _reshaped("flatten", x, x.shape[:lo] + (merged,) + x.shape[hi + 1:])


@tensor_input
def expand(x: Tensor, *sizes) -> Tensor:
    """Broadcast to ``sizes`` without copying (``torch.Tensor.expand``): ``-1`` keeps an axis's size,
    new axes may be added in front; the gradient is summed back.

    Raises:
        ValueError: when an axis of size other than 1 would change, or ``-1`` is given for a new axis.
    """
    sizes = _varargs(sizes)
    lead = len(sizes) - x.ndim
    if lead < 0 or not all(is_int(n) for n in sizes):
        raise ValueError(f"expand: sizes {sizes} must be integers, at least one per axis of shape {x.shape}")
    if any(n == -1 for n in sizes[:lead]):
        raise ValueError(f"expand: -1 is not allowed for a new leading axis, got sizes {sizes}")
    shape = tuple(sizes[:lead]) + tuple(old if new == -1 else new for old, new in zip(x.shape, sizes[lead:]))
    return broadcast_to(x, shape)


@tensor_input
def flip(x: Tensor, dims) -> Tensor:
    """Reverse the order along ``dims`` (an int or a tuple, ``torch.flip``); the gradient is flipped back.

    Raises:
        IndexError: for a dim out of range.
    """
    given = dims if isinstance(dims, (tuple, list)) else (dims,)
    axes = tuple(one_axis("flip", d, x.ndim) for d in given)
    xp = backend.xp
    return Tensor.from_op(xp.flip(x.data, axis=axes), (x,), lambda g: (xp.flip(g, axis=axes),), "flip")


@tensor_input
def repeat(x: Tensor, *repeats) -> Tensor:
    """Tile ``x``: ``repeats[i]`` copies along axis ``i`` (``torch.Tensor.repeat``, NumPy's ``tile``);
    extra leading counts add axes. The gradient sums the copies.

    Raises:
        ValueError: for fewer counts than axes, or a negative count.
    """
    reps = _varargs(repeats)
    if len(reps) < x.ndim or not all(is_int(r) and r >= 0 for r in reps):
        raise ValueError(f"repeat: need one non-negative integer count per axis of shape {x.shape}, got {reps}")
    shape = (1,) * (len(reps) - x.ndim) + x.shape
    out = backend.xp.tile(x.data.reshape(shape), reps)

    def backward(g):
        split = [n for pair in zip(reps, shape) for n in pair]  # (r0, s0, r1, s1, ...)
        return (g.reshape(split).sum(axis=tuple(range(0, len(split), 2))).reshape(x.shape),)

    return Tensor.from_op(out, (x,), backward, "repeat")


def _device_index(i):
    """One part of an index on the backend: a Tensor's array, or a host array (NumPy on a GPU) moved there."""
    if isinstance(i, Tensor):
        return i.data
    if hasattr(i, "shape") and hasattr(i, "dtype") and not isinstance(i, backend.xp.ndarray):
        return backend.asarray(i)  # the explicit copy to the device (a no-op on NumPy)
    return i


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
    index = tuple(_device_index(i) for i in index) if isinstance(index, tuple) else _device_index(index)
    try:
        out = x.data[index]
    except IndexError as exc:
        raise IndexError(f"getitem: index {index!r} invalid for shape {x.shape}: {exc}") from None

    def backward(g):
        full = backend.xp.zeros(x.shape, dtype=g.dtype)
        backend.scatter_add(full, index, g)
        return (full,)

    return Tensor.from_op(out, (x,), backward, "getitem")


@torch_names
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


@torch_names
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


def _permute_method(self, *dims):
    """``t.permute(2, 0, 1)`` or ``t.permute((2, 0, 1))``: :func:`transpose` with every axis named."""
    return transpose(self, _varargs(dims))


def _transpose_method(self, *axes):
    """``t.transpose()`` reverses the axes; ``t.transpose(0, 2, 1)`` or ``t.transpose((0, 2, 1))`` permutes."""
    return transpose(self, _varargs(axes) or None)


attach_methods({
    "__getitem__": getitem,
    "reshape": _reshape_method,
    "transpose": _transpose_method,
    "view": _reshape_method,  # PyTorch's name: a reshape here (NumPy arrays need no contiguity for it)
    "permute": _permute_method,
    "swapaxes": swapaxes,
    "unsqueeze": unsqueeze, "squeeze": squeeze, "flatten": flatten, "expand": expand, "flip": flip,
    "repeat": repeat,
    "T": property(lambda self: transpose(self, None), doc="The tensor with its axes reversed."),
})
