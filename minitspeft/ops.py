"""Primitive ops and their vector-Jacobian products (VJPs).

Each op computes its result on ``backend.xp`` arrays and returns a Tensor
whose backward rule maps the upstream gradient ``g`` (shape of the output) to
one gradient per input, or ``None`` for an input that needs none: a rule only
does the work for inputs with ``requires_grad``.

Binary ops broadcast like NumPy; :func:`unbroadcast` sums a gradient back to
its input's shape. Constants (Python or NumPy scalars, arrays) are accepted
on either side and never promote a float32 tensor: they are cast to the
tensor's dtype first. Two Tensors of different dtypes promote as in NumPy.

Derivatives are the textbook ones; each rule carries its formula.
"""

from __future__ import annotations

import itertools

from . import backend
from .tensor import Tensor

# ---------------------------------------------------------------- helpers


def unbroadcast(grad, shape: tuple):
    """Sum ``grad`` over the axes that broadcasting added or stretched, to get ``shape``.

    Args:
        grad: backend array, the gradient of a broadcast result.
        shape: the input's shape before broadcasting.
    """
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """Return ``x`` as a Tensor. A constant (scalar or array, not a Tensor) next to a floating
    Tensor ``like`` takes ``like``'s dtype, so constants never promote a float32 computation."""
    if isinstance(x, Tensor):
        return x
    if like is not None and like.dtype.kind == "f":
        arr = backend.xp.asarray(x)
        if arr.dtype.kind in "biuf":
            return Tensor(arr.astype(like.dtype, copy=False))
    return Tensor(x)


def _pair(a, b):
    if isinstance(a, Tensor):
        return a, as_tensor(b, like=a)
    b = as_tensor(b)
    return as_tensor(a, like=b), b


def _broadcast_shape(op: str, a: Tensor, b: Tensor) -> tuple:
    try:
        return tuple(backend.xp.broadcast_shapes(a.shape, b.shape))
    except ValueError:
        raise ValueError(f"{op}: cannot broadcast shapes {a.shape} and {b.shape}") from None


# ------------------------------------------------------- elementwise binary


def add(a, b) -> Tensor:
    """``a + b`` with broadcasting. d/da = 1, d/db = 1."""
    a, b = _pair(a, b)
    _broadcast_shape("add", a, b)

    def backward(g):
        return (unbroadcast(g, a.shape) if a.requires_grad else None,
                unbroadcast(g, b.shape) if b.requires_grad else None)

    return Tensor._from_op(a.data + b.data, (a, b), backward, "add")


def sub(a, b) -> Tensor:
    """``a - b`` with broadcasting. d/da = 1, d/db = -1."""
    a, b = _pair(a, b)
    _broadcast_shape("sub", a, b)

    def backward(g):
        return (unbroadcast(g, a.shape) if a.requires_grad else None,
                unbroadcast(-g, b.shape) if b.requires_grad else None)

    return Tensor._from_op(a.data - b.data, (a, b), backward, "sub")


def mul(a, b) -> Tensor:
    """``a * b`` with broadcasting. d/da = b, d/db = a."""
    a, b = _pair(a, b)
    _broadcast_shape("mul", a, b)

    def backward(g):
        return (unbroadcast(g * b.data, a.shape) if a.requires_grad else None,
                unbroadcast(g * a.data, b.shape) if b.requires_grad else None)

    return Tensor._from_op(a.data * b.data, (a, b), backward, "mul")


def div(a, b) -> Tensor:
    """``a / b`` with broadcasting. d/da = 1/b, d/db = -a/b^2."""
    a, b = _pair(a, b)
    _broadcast_shape("div", a, b)
    out = a.data / b.data

    def backward(g):
        return (unbroadcast(g / b.data, a.shape) if a.requires_grad else None,
                unbroadcast(-g * out / b.data, b.shape) if b.requires_grad else None)

    return Tensor._from_op(out, (a, b), backward, "div")


def pow(a, b) -> Tensor:  # noqa: A001 - mirrors Tensor.__pow__
    """``a ** b``. d/da = b a^(b-1); d/db = a^b log(a) (needs a > 0 where it is used).

    A Python-number exponent 2 or 3 is computed by multiplication (NumPy's
    float32 ``power`` is far slower).
    """
    if isinstance(b, (int, float)) and not isinstance(b, bool) and isinstance(a, Tensor):
        if b == 2:
            return mul(a, a)
        if b == 3:
            return mul(mul(a, a), a)
    a, b = _pair(a, b)
    _broadcast_shape("pow", a, b)
    xp = backend.xp
    out = xp.power(a.data, b.data)

    def backward(g):
        ga = gb = None
        if a.requires_grad:
            ga = unbroadcast(g * b.data * xp.power(a.data, b.data - 1), a.shape)
        if b.requires_grad:
            safe = xp.where(a.data > 0, a.data, 1)
            gb = unbroadcast(g * out * xp.log(safe), b.shape)
        return ga, gb

    return Tensor._from_op(out, (a, b), backward, "pow")


def maximum(a, b) -> Tensor:
    """Elementwise maximum; at ties the gradient is split evenly between both inputs."""
    a, b = _pair(a, b)
    _broadcast_shape("maximum", a, b)
    xp = backend.xp
    out = xp.maximum(a.data, b.data)

    def backward(g):
        wa = (a.data > b.data) + 0.5 * (a.data == b.data)
        return (unbroadcast(g * wa.astype(g.dtype), a.shape) if a.requires_grad else None,
                unbroadcast(g * (1 - wa).astype(g.dtype), b.shape) if b.requires_grad else None)

    return Tensor._from_op(out, (a, b), backward, "maximum")


def minimum(a, b) -> Tensor:
    """Elementwise minimum, ``-maximum(-a, -b)``."""
    a, b = _pair(a, b)
    return neg(maximum(neg(a), neg(b)))


# -------------------------------------------------------- elementwise unary


def _unary(x: Tensor, out, local_grad, op: str) -> Tensor:
    """An elementwise op whose derivative is ``local_grad()`` (called only when needed)."""

    def backward(g):
        return (g * local_grad(),)

    return Tensor._from_op(out, (x,), backward, op)


def neg(x) -> Tensor:
    """``-x``. d/dx = -1."""
    x = as_tensor(x)
    return Tensor._from_op(-x.data, (x,), lambda g: (-g,), "neg")


def exp(x: Tensor) -> Tensor:
    """``exp(x)``. d/dx = exp(x)."""
    out = backend.xp.exp(x.data)
    return _unary(x, out, lambda: out, "exp")


def log(x: Tensor) -> Tensor:
    """Natural log. d/dx = 1/x."""
    return _unary(x, backend.xp.log(x.data), lambda: 1 / x.data, "log")


def sqrt(x: Tensor) -> Tensor:
    """Square root. d/dx = 1/(2 sqrt(x)); infinite at 0, as in PyTorch."""
    out = backend.xp.sqrt(x.data)
    return _unary(x, out, lambda: 0.5 / out, "sqrt")


def tanh(x: Tensor) -> Tensor:
    """``tanh(x)``. d/dx = 1 - tanh(x)^2."""
    out = backend.xp.tanh(x.data)
    return _unary(x, out, lambda: 1 - out * out, "tanh")


def sigmoid(x: Tensor) -> Tensor:
    """Logistic sigmoid, computed without overflow. d/dx = s (1 - s)."""
    xp = backend.xp
    e = xp.exp(-xp.abs(x.data))
    out = xp.where(x.data >= 0, 1 / (1 + e), e / (1 + e))
    return _unary(x, out, lambda: out * (1 - out), "sigmoid")


def relu(x: Tensor) -> Tensor:
    """``max(x, 0)``. d/dx = 1[x > 0] (0 at 0, as in PyTorch)."""
    return _unary(x, backend.xp.maximum(x.data, 0), lambda: (x.data > 0).astype(x.dtype), "relu")


def abs(x: Tensor) -> Tensor:  # noqa: A001
    """``|x|``. d/dx = sign(x) (0 at 0)."""
    xp = backend.xp
    return _unary(x, xp.abs(x.data), lambda: xp.sign(x.data), "abs")


def clip(x: Tensor, lo=None, hi=None) -> Tensor:
    """Clamp into ``[lo, hi]``. d/dx = 1 strictly inside, 0 where clamped."""
    xp = backend.xp
    out = xp.clip(x.data, lo, hi)
    return _unary(x, out, lambda: (out == x.data).astype(x.dtype), "clip")


# ------------------------------------------------------------- shape ops


def reshape(x: Tensor, shape) -> Tensor:
    """Reshape; the gradient is reshaped back.

    Raises:
        ValueError: if the sizes differ.
    """
    try:
        out = x.data.reshape(shape)
    except ValueError:
        raise ValueError(f"reshape: cannot reshape tensor of shape {x.shape} into {tuple(shape)}") from None
    return Tensor._from_op(out, (x,), lambda g: (g.reshape(x.shape),), "reshape")


def transpose(x: Tensor, axes=None) -> Tensor:
    """Permute axes (reverse them when ``axes`` is None); the gradient uses the inverse permutation."""
    axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(a % x.ndim for a in axes)
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"transpose: axes {axes} are not a permutation for shape {x.shape}")
    inverse = tuple(axes.index(i) for i in range(x.ndim))
    return Tensor._from_op(x.data.transpose(axes), (x,), lambda g: (g.transpose(inverse),), "transpose")


def swapaxes(x: Tensor, axis1: int, axis2: int) -> Tensor:
    """Swap two axes (its own inverse)."""
    axes = list(range(x.ndim))
    axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
    return transpose(x, axes)


def broadcast_to(x: Tensor, shape) -> Tensor:
    """Broadcast to ``shape``; the gradient is summed back with :func:`unbroadcast`."""
    try:
        out = backend.xp.broadcast_to(x.data, tuple(shape))
    except ValueError:
        raise ValueError(f"broadcast_to: cannot broadcast shape {x.shape} to {tuple(shape)}") from None
    return Tensor._from_op(out, (x,), lambda g: (unbroadcast(g, x.shape),), "broadcast_to")


def getitem(x: Tensor, index) -> Tensor:
    """``x[index]`` for ints, slices, integer arrays and boolean masks.

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

    return Tensor._from_op(out, (x,), backward, "getitem")


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

    return Tensor._from_op(out, tensors, backward, "concat")


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

    return Tensor._from_op(out, tensors, backward, "stack")


def where(condition, a, b) -> Tensor:
    """Pick ``a`` where ``condition`` is true, else ``b`` (broadcasting all three).

    ``condition`` is a boolean array or Tensor and gets no gradient.
    """
    xp = backend.xp
    cond = condition.data if isinstance(condition, Tensor) else xp.asarray(condition)
    a, b = _pair(a, b)
    _broadcast_shape("where", a, b)
    out = xp.where(cond, a.data, b.data)

    def backward(g):
        zero = xp.zeros((), dtype=g.dtype)
        return (unbroadcast(xp.where(cond, g, zero), a.shape) if a.requires_grad else None,
                unbroadcast(xp.where(cond, zero, g), b.shape) if b.requires_grad else None)

    return Tensor._from_op(out, (a, b), backward, "where")


# ----------------------------------------------------------------- matmul


def matmul(a, b) -> Tensor:
    """Matrix product with NumPy's rules: 1-D operands, 2-D, and batched with broadcast batch axes.

    d/da = g @ b^T, d/db = a^T @ g (batch axes summed back by :func:`unbroadcast`).

    Raises:
        ValueError: naming both shapes when the inner dimensions differ or the
            batch axes do not broadcast.
    """
    a, b = _pair(a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must be at least 1-D, got shapes {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ValueError(f"matmul: inner dimensions differ for shapes {a.shape} and {b.shape}")
    try:
        out = a.data @ b.data
    except ValueError:
        raise ValueError(f"matmul: batch dimensions do not broadcast for shapes {a.shape} and {b.shape}") from None
    xp = backend.xp

    def backward(g):
        # lift 1-D operands to matrices so one rule covers every case
        a2 = a.data[None, :] if a.ndim == 1 else a.data  # (..., n, k)
        b2 = b.data[:, None] if b.ndim == 1 else b.data  # (..., k, m)
        batch = tuple(xp.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]))
        g2 = g.reshape(*batch, a2.shape[-2], b2.shape[-1])  # (..., n, m)
        ga = gb = None
        if a.requires_grad:
            ga = g2 @ xp.swapaxes(b2, -1, -2)
            ga = unbroadcast(ga, a2.shape).reshape(a.shape)
        if b.requires_grad:
            gb = xp.swapaxes(a2, -1, -2) @ g2
            gb = unbroadcast(gb, b2.shape).reshape(b.shape)
        return ga, gb

    return Tensor._from_op(out, (a, b), backward, "matmul")
