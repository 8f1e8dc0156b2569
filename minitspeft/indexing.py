"""Ops that cut, pad, mask or pick elements: ``split``, ``chunk``, ``pad``, ``tril``, ``triu``,
``gather``, ``masked_fill``, with their vector-Jacobian products.

Each output element is one input element (or a constant), so each backward
sends the gradient back to where its element came from and gives 0 to the
input elements that were cut away, masked or not picked; ``gather`` adds
the gradients of an element picked more than once. Names, argument orders
and ``pad``'s layout follow PyTorch. The table at the end attaches the
methods to :class:`~minitspeft.tensor.Tensor`.

Source: PyTorch's definitions of these ops; the VJPs are the scatter of each gather (derived here).
"""

from __future__ import annotations

from numbers import Real

from . import backend
from .checks import is_int, one_axis
from .extend import tensor_input
from .tensor import Tensor, attach_methods

__all__ = ["split", "chunk", "pad", "tril", "triu", "gather", "masked_fill"]


def _narrow(x: Tensor, axis: int, start: int, stop: int) -> Tensor:
    """``x`` cut to ``start:stop`` along ``axis``; the gradient is placed back into zeros."""
    index = (slice(None),) * axis + (slice(start, stop),)

    def backward(g):
        full = backend.xp.zeros(x.shape, dtype=g.dtype)
        full[index] = g
        return (full,)

    return Tensor.from_op(x.data[index], (x,), backward, "split")


@tensor_input
def split(x: Tensor, split_size_or_sections, dim: int = 0) -> tuple:
    """Cut ``x`` along ``dim`` into pieces of ``split_size_or_sections`` elements (the last may be
    shorter), or into pieces of the listed sizes (``torch.split``). Returns a tuple of Tensors.

    Raises:
        ValueError: for a size that is not a positive integer, or sizes that do not add up to the axis.
        IndexError: for ``dim`` out of range.
    """
    axis = one_axis("split", dim, x.ndim)
    n = x.shape[axis]
    if is_int(split_size_or_sections):
        step = int(split_size_or_sections)
        if step <= 0:
            raise ValueError(f"split: split_size must be a positive integer, got {step}")
        sizes = [min(step, n - i) for i in range(0, n, step)] or [0]
    else:
        sizes = list(split_size_or_sections)
        if not all(is_int(s) and s >= 0 for s in sizes) or sum(sizes) != n:
            raise ValueError(f"split: sections {sizes} must be non-negative integers adding up to {n}, "
                             f"the size of dim {dim} of shape {x.shape}")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return tuple(_narrow(x, axis, a, a + s) for a, s in zip(starts, sizes))


@tensor_input
def chunk(x: Tensor, chunks: int, dim: int = 0) -> tuple:
    """Cut ``x`` along ``dim`` into ``chunks`` pieces of ``ceil(n / chunks)`` elements (fewer pieces
    when they run out, as ``torch.chunk``). Returns a tuple of Tensors.

    Raises:
        ValueError: for ``chunks`` that is not a positive integer. IndexError: for ``dim`` out of range.
    """
    if not is_int(chunks) or chunks <= 0:
        raise ValueError(f"chunk: chunks must be a positive integer, got {chunks!r}")
    n = x.shape[one_axis("chunk", dim, x.ndim)]
    return split(x, max(1, -(-n // int(chunks))), dim)


@tensor_input
def pad(x: Tensor, pad: tuple, mode: str = "constant", value: float = 0.0) -> Tensor:  # noqa: A002
    """Pad with the constant ``value`` (``torch.nn.functional.pad``, mode "constant"). ``pad`` lists
    ``(left, right)`` amounts from the LAST axis backwards: ``(1, 2)`` pads the last axis with 1 in
    front and 2 behind, ``(1, 2, 0, 3)`` also pads the axis before it with 3 behind. The gradient is
    the unpadded middle.

    Raises:
        ValueError: for an odd-length ``pad``, more pairs than axes, a negative amount (cropping is
            not supported: index instead), or a mode other than "constant".
    """
    if mode != "constant":
        raise ValueError(f"pad: only mode='constant' is implemented here, got mode={mode!r}")
    amounts = tuple(pad)
    if len(amounts) % 2 or len(amounts) // 2 > x.ndim or not all(is_int(p) and p >= 0 for p in amounts):
        raise ValueError(f"pad: pad must be pairs of non-negative integers, at most one pair per axis of "
                         f"shape {x.shape}, got {amounts}")
    if not isinstance(value, Real):
        raise TypeError(f"pad: value must be a number, got {value!r}")
    widths = [(0, 0)] * x.ndim
    for k in range(len(amounts) // 2):
        widths[x.ndim - 1 - k] = (int(amounts[2 * k]), int(amounts[2 * k + 1]))
    out = backend.xp.pad(x.data, widths, mode="constant", constant_values=value)
    middle = tuple(slice(lo, lo + n) for (lo, _), n in zip(widths, x.shape))
    return Tensor.from_op(out, (x,), lambda g: (g[middle],), "pad")


def _triangle(op: str, x: Tensor, diagonal: int) -> Tensor:
    if x.ndim < 2:
        raise ValueError(f"{op}: needs a tensor with at least 2 dimensions, got shape {x.shape}")
    if not is_int(diagonal):
        raise TypeError(f"{op}: diagonal must be an integer, got {diagonal!r}")
    keep = getattr(backend.xp, op)
    return Tensor.from_op(keep(x.data, int(diagonal)), (x,), lambda g: (keep(g, int(diagonal)),), op)


@tensor_input
def tril(x: Tensor, diagonal: int = 0) -> Tensor:
    """The lower triangle of the last two axes (``torch.tril``): elements with ``col - row <= diagonal``
    kept, the rest 0; the gradient is masked the same way.

    Raises:
        ValueError: for fewer than 2 axes. TypeError: for a non-integer ``diagonal``.
    """
    return _triangle("tril", x, diagonal)


@tensor_input
def triu(x: Tensor, diagonal: int = 0) -> Tensor:
    """The upper triangle of the last two axes (``torch.triu``): elements with ``col - row >= diagonal``
    kept, the rest 0; the gradient is masked the same way.

    Raises:
        ValueError: for fewer than 2 axes. TypeError: for a non-integer ``diagonal``.
    """
    return _triangle("triu", x, diagonal)


def _gather_index(x: Tensor, axis: int, index):
    """``index`` as a backend integer array checked against ``x`` for :func:`gather`."""
    idx = index.data if isinstance(index, Tensor) else backend.xp.asarray(index)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"gather: index must be integers, got dtype {idx.dtype}")
    if idx.ndim != x.ndim or any(i > n for d, (i, n) in enumerate(zip(idx.shape, x.shape)) if d != axis):
        raise ValueError(f"gather: index of shape {idx.shape} must have the {x.ndim} dimensions of the input "
                         f"{x.shape} and be no larger off dim {axis}")
    if idx.size and (bool((idx < 0).any()) or bool((idx >= x.shape[axis]).any())):
        raise IndexError(f"gather: index values must be in [0, {x.shape[axis]}) for dim {axis} of shape {x.shape}")
    return idx


@tensor_input
def gather(x: Tensor, dim: int, index) -> Tensor:
    """Pick along ``dim`` (``torch.gather``): ``out[i, j] = x[index[i, j], j]`` for ``dim=0`` (and so
    on for other dims); ``out`` has ``index``'s shape. The gradient adds into the picked places.

    Raises:
        TypeError: for a non-integer index. ValueError: for an index of another rank, or larger than
        ``x`` off ``dim``. IndexError: for an index value outside ``[0, x.shape[dim])`` or a bad ``dim``.
    """
    axis = one_axis("gather", dim, x.ndim)
    idx = _gather_index(x, axis, index)
    xp = backend.xp
    places = tuple(idx if d == axis else xp.arange(n).reshape((-1,) + (1,) * (idx.ndim - d - 1))
                   for d, n in enumerate(idx.shape))  # the full advanced index of every picked element

    def backward(g):
        full = xp.zeros(x.shape, dtype=g.dtype)
        backend.scatter_add(full, places, g)
        return (full,)

    return Tensor.from_op(x.data[places], (x,), backward, "gather")


@tensor_input
def masked_fill(x: Tensor, mask, value) -> Tensor:
    """``x`` with ``value`` where the boolean ``mask`` (broadcast to ``x``'s shape) is true
    (``torch.Tensor.masked_fill``); the gradient is 0 there and passes elsewhere.

    Raises:
        TypeError: for a mask that is not boolean, or a value that is not a number.
        ValueError: for a mask that does not broadcast to ``x``'s shape.
    """
    xp = backend.xp
    m = mask.data if isinstance(mask, Tensor) else xp.asarray(mask)
    if m.dtype != bool:
        raise TypeError(f"masked_fill: mask must be boolean, got dtype {m.dtype}")
    if isinstance(value, Tensor):
        value = value.item()
    if not isinstance(value, Real):
        raise TypeError(f"masked_fill: value must be a number, got {value!r}")
    try:
        m = xp.broadcast_to(m, x.shape)
    except ValueError:
        raise ValueError(f"masked_fill: mask of shape {m.shape} does not broadcast to {x.shape}") from None
    out = xp.where(m, xp.asarray(value, dtype=x.dtype), x.data)
    return Tensor.from_op(out, (x,), lambda g: (xp.where(m, xp.zeros((), g.dtype), g),), "masked_fill")


attach_methods({"split": split, "chunk": chunk, "tril": tril, "triu": triu, "gather": gather,
                "masked_fill": masked_fill})
