"""Primitive elementwise ops and matmul, with their vector-Jacobian products (VJPs).

Each op computes its result on ``backend.xp`` arrays and returns a Tensor
whose backward rule maps the upstream gradient ``g`` (shape of the output) to
one gradient per input, or ``None`` for an input that needs none: a rule only
does the work for inputs with ``requires_grad``.

Binary ops broadcast like NumPy (:func:`~minitspeft.extend.binary_op` sums each
gradient back to its input's shape). Constants (Python or NumPy scalars,
arrays) are accepted on either side and never promote a float32 tensor: they
are cast to the tensor's dtype first. Two Tensors of different dtypes promote
as in NumPy. Derivatives are the textbook ones; each rule carries its formula.

This module is also the namespace of every primitive: the shape ops of
:mod:`~minitspeft.shape_ops` are re-exported here. The table at the end
attaches the operators and methods to :class:`~minitspeft.tensor.Tensor`.
"""

from __future__ import annotations

from . import backend
from .extend import as_pair, as_tensor, binary_op, tensor_input, unary_op, unbroadcast
from .shape_ops import broadcast_to, concat, getitem, reshape, stack, swapaxes, transpose, where
from .tensor import Tensor, attach_methods

__all__ = ["add", "sub", "mul", "div", "pow", "maximum", "minimum", "neg", "exp", "log", "sqrt", "tanh",
           "sigmoid", "relu", "abs", "sin", "cos", "log1p", "expm1", "sign", "floor", "ceil", "round", "clip",
           "matmul", "reshape", "transpose", "swapaxes", "broadcast_to",
           "getitem", "concat", "stack", "where", "unbroadcast", "as_tensor"]

# ------------------------------------------------------- elementwise binary


def add(a, b) -> Tensor:
    """``a + b`` with broadcasting. d/da = 1, d/db = 1."""
    return binary_op("add", a, b, lambda x, y: x + y, lambda g, x, y, o: g, lambda g, x, y, o: g)


def sub(a, b) -> Tensor:
    """``a - b`` with broadcasting. d/da = 1, d/db = -1."""
    return binary_op("sub", a, b, lambda x, y: x - y, lambda g, x, y, o: g, lambda g, x, y, o: -g)


def mul(a, b) -> Tensor:
    """``a * b`` with broadcasting. d/da = b, d/db = a."""
    return binary_op("mul", a, b, lambda x, y: x * y, lambda g, x, y, o: g * y, lambda g, x, y, o: g * x)


def div(a, b) -> Tensor:
    """``a / b`` with broadcasting. d/da = 1/b, d/db = -a/b^2 = -out/b."""
    return binary_op("div", a, b, lambda x, y: x / y, lambda g, x, y, o: g / y, lambda g, x, y, o: -g * o / y)


def pow(a, b) -> Tensor:  # noqa: A001 - mirrors Tensor.__pow__
    """``a ** b``. d/da = b a^(b-1), and 0 wherever b = 0 (``x**0`` is constant, even at x = 0);
    d/db = a^b log(a): 0 where a = 0 and b >= 0, -inf where a = 0 and b < 0, NaN where a < 0
    (the logarithm is undefined there). These are PyTorch's values at those points.

    A Python-number exponent 2 or 3 is computed by multiplication (NumPy's
    float32 ``power`` is far slower).
    """
    if isinstance(a, Tensor) and isinstance(b, (int, float)) and not isinstance(b, bool):
        if b == 2:
            return mul(a, a)
        if b == 3:
            return mul(mul(a, a), a)
    xp = backend.xp

    def grad_a(g, x, y, out):
        with backend.quiet_overflow():  # 0 * inf at x = 0, y = 0 is replaced just below
            d = g * y * xp.power(x, y - 1)
        return xp.where(y == 0, 0, d)

    def grad_b(g, x, y, out):
        with backend.quiet_overflow():  # log(0) = -inf, log(x < 0) = NaN: kept, as in PyTorch
            d = g * out * xp.log(x)
        return xp.where((x == 0) & (y >= 0), 0, d)

    return binary_op("pow", a, b, xp.power, grad_a, grad_b)


def _share_of_x(x, y):
    """Where the maximum is ``x``: 1, where it is ``y``: 0, at ties 0.5 (the gradient is split evenly)."""
    return (x > y) + 0.5 * (x == y)


def maximum(a, b) -> Tensor:
    """Elementwise maximum; at ties the gradient is split evenly between both inputs."""
    return binary_op("maximum", a, b, backend.xp.maximum,
                     lambda g, x, y, o: g * _share_of_x(x, y).astype(g.dtype),
                     lambda g, x, y, o: g * (1 - _share_of_x(x, y)).astype(g.dtype))


def minimum(a, b) -> Tensor:
    """Elementwise minimum, ``-maximum(-a, -b)``."""
    a, b = as_pair(a, b)
    return neg(maximum(neg(a), neg(b)))


# -------------------------------------------------------- elementwise unary


def neg(x) -> Tensor:
    """``-x``. d/dx = -1."""
    x = as_tensor(x)
    return Tensor.from_op(-x.data, (x,), lambda g: (-g,), "neg")


@tensor_input
def exp(x: Tensor) -> Tensor:
    """``exp(x)``. d/dx = exp(x)."""
    out = backend.xp.exp(x.data)
    return unary_op("exp", x, out, lambda: out)


@tensor_input
def log(x: Tensor) -> Tensor:
    """Natural log. d/dx = 1/x."""
    return unary_op("log", x, backend.xp.log(x.data), lambda: 1 / x.data)


@tensor_input
def sqrt(x: Tensor) -> Tensor:
    """Square root. d/dx = 1/(2 sqrt(x)); infinite at 0, as in PyTorch."""
    out = backend.xp.sqrt(x.data)
    return unary_op("sqrt", x, out, lambda: 0.5 / out)


@tensor_input
def tanh(x: Tensor) -> Tensor:
    """``tanh(x)``. d/dx = 1 - tanh(x)^2."""
    out = backend.xp.tanh(x.data)
    return unary_op("tanh", x, out, lambda: 1 - out * out)


def sigmoid_array(data):
    """``1 / (1 + exp(-x))`` of a backend array, without overflow at any ``x`` (``exp`` of ``-|x|`` only)."""
    xp = backend.xp
    e = xp.exp(-xp.abs(data))
    return xp.where(data >= 0, 1 / (1 + e), e / (1 + e))


@tensor_input
def sigmoid(x: Tensor) -> Tensor:
    """Logistic sigmoid, computed without overflow (:func:`sigmoid_array`). d/dx = s (1 - s)."""
    out = sigmoid_array(x.data)
    return unary_op("sigmoid", x, out, lambda: out * (1 - out))


@tensor_input
def relu(x: Tensor) -> Tensor:
    """``max(x, 0)``. d/dx = 1[x > 0] (0 at 0, as in PyTorch)."""
    return unary_op("relu", x, backend.xp.maximum(x.data, 0), lambda: (x.data > 0).astype(x.dtype))


@tensor_input
def abs(x: Tensor) -> Tensor:  # noqa: A001
    """``|x|``. d/dx = sign(x) (0 at 0)."""
    xp = backend.xp
    return unary_op("abs", x, xp.abs(x.data), lambda: xp.sign(x.data))


@tensor_input
def sin(x: Tensor) -> Tensor:
    """``sin(x)``. d/dx = cos(x)."""
    return unary_op("sin", x, backend.xp.sin(x.data), lambda: backend.xp.cos(x.data))


@tensor_input
def cos(x: Tensor) -> Tensor:
    """``cos(x)``. d/dx = -sin(x)."""
    return unary_op("cos", x, backend.xp.cos(x.data), lambda: -backend.xp.sin(x.data))


@tensor_input
def log1p(x: Tensor) -> Tensor:
    """``log(1 + x)``, exact for small ``x``. d/dx = 1/(1 + x)."""
    return unary_op("log1p", x, backend.xp.log1p(x.data), lambda: 1 / (1 + x.data))


@tensor_input
def expm1(x: Tensor) -> Tensor:
    """``exp(x) - 1``, exact for small ``x``. d/dx = exp(x) = out + 1."""
    out = backend.xp.expm1(x.data)
    return unary_op("expm1", x, out, lambda: out + 1)


def _flat(name: str, fn):
    """A piecewise-constant op (``sign``, ``floor``, ``ceil``, ``round``): derivative 0 wherever it is
    defined, so the gradient is 0 everywhere, as in PyTorch."""

    @tensor_input
    def op(x: Tensor) -> Tensor:
        xp = backend.xp
        return Tensor.from_op(fn(xp, x.data), (x,), lambda g: (xp.zeros_like(g),), name)

    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"``{name}(x)`` element-wise; the gradient is 0 (the op is piecewise constant, as in PyTorch)."
    return op


sign = _flat("sign", lambda xp, d: xp.sign(d))
floor = _flat("floor", lambda xp, d: xp.floor(d))
ceil = _flat("ceil", lambda xp, d: xp.ceil(d))
round = _flat("round", lambda xp, d: xp.round(d))  # noqa: A001 - half to even, as torch.round and NumPy


@tensor_input
def clip(x: Tensor, lo=None, hi=None) -> Tensor:
    """Clamp into ``[lo, hi]``. d/dx = 1 strictly inside, 0 where clamped."""
    out = backend.xp.clip(x.data, lo, hi)
    return unary_op("clip", x, out, lambda: (out == x.data).astype(x.dtype))


# ----------------------------------------------------------------- matmul


def matmul(a, b) -> Tensor:
    """Matrix product with NumPy's rules: 1-D operands, 2-D, and batched with broadcast batch axes.

    d/da = g @ b^T, d/db = a^T @ g (batch axes summed back by :func:`unbroadcast`).

    Raises:
        ValueError: naming both shapes when the inner dimensions differ or the
            batch axes do not broadcast.
    """
    a, b = as_pair(a, b)
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
            ga = unbroadcast(g2 @ xp.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        if b.requires_grad:
            gb = unbroadcast(xp.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)
        return ga, gb

    return Tensor.from_op(out, (a, b), backward, "matmul")


# ------------------------------------------------- copies and casts


@tensor_input
def clone(x: Tensor) -> Tensor:
    """A copy of ``x`` with its own data; the gradient passes through unchanged (as ``torch.clone``)."""
    return Tensor.from_op(x.data.copy(), (x,), lambda g: (g,), "clone")


@tensor_input
def to_dtype(x: Tensor, dtype) -> Tensor:
    """``x`` cast to ``dtype``; the gradient is cast back to ``x``'s dtype (as ``torch.Tensor.to(dtype)``).
    A device name instead: ``"cpu"`` is :meth:`Tensor.cpu`, ``"cuda"`` the tensor itself on CuPy (and on
    the strict stand-in; see :func:`~minitspeft.backend.get_default_device`).

    Raises:
        RuntimeError: for ``"cuda"`` on the NumPy backend.
        TypeError: for a dtype that is not floating while ``x`` requires gradients.
    """
    if isinstance(dtype, str) and dtype.partition(":")[0] in ("cpu", "cuda"):  # PyTorch's device names
        if dtype.startswith("cuda") and backend.get_default_device() != "cuda":
            raise RuntimeError(f"to({dtype!r}): the active backend is {backend.get_backend()}, not CuPy; "
                               'pip install "minitspeft[gpu]" and call mt.set_backend("cupy") before making tensors')
        if dtype.startswith("cpu"):
            return x.cpu()
        return x
    try:
        dtype = backend.xp.dtype(dtype)
    except TypeError:
        raise TypeError(f"to: {dtype!r} is neither a device ('cpu', 'cuda') nor a dtype") from None
    if x.requires_grad and dtype.kind != "f":
        raise TypeError(f"to_dtype: a tensor that requires gradients can only be cast to a floating dtype, "
                        f"got {dtype}")
    return Tensor.from_op(x.data.astype(dtype), (x,), lambda g: (g.astype(x.dtype),), "to_dtype")


def to(x: Tensor, *args, device=None, dtype=None) -> Tensor:
    """``t.to(...)`` as PyTorch's: a device (``"cpu"``, ``"cuda"``, ``"cuda:0"``, or a ``torch.device``), a
    dtype, or both, positionally or by keyword; each is applied as :func:`to_dtype` applies it.

    Raises:
        TypeError: for two devices or two dtypes.
        RuntimeError, TypeError: as :func:`to_dtype`.
    """
    for a in args:
        name = str(a) if type(a).__name__ == "device" else a  # a torch.device, by its name
        is_device = isinstance(name, str) and name.partition(":")[0] in ("cpu", "cuda")
        if (device if is_device else dtype) is not None:
            raise TypeError(f"to: got two {'devices' if is_device else 'dtypes'} (the second {a!r})")
        device, dtype = (name, dtype) if is_device else (device, a)
    out = x if device is None else to_dtype(x, str(device))
    return out if dtype is None else to_dtype(out, dtype)


# ------------------------------------------------- operators and methods

attach_methods({
    "__add__": add, "__radd__": lambda self, other: add(other, self),
    "__sub__": sub, "__rsub__": lambda self, other: sub(other, self),
    "__mul__": mul, "__rmul__": lambda self, other: mul(other, self),
    "__truediv__": div, "__rtruediv__": lambda self, other: div(other, self),
    "__pow__": pow, "__rpow__": lambda self, other: pow(other, self),
    "__matmul__": matmul, "__rmatmul__": lambda self, other: matmul(other, self),
    "__neg__": neg,
    "exp": exp, "log": log, "sqrt": sqrt, "tanh": tanh, "sigmoid": sigmoid, "relu": relu, "abs": abs,
    "sin": sin, "cos": cos, "log1p": log1p, "expm1": expm1, "sign": sign, "floor": floor, "ceil": ceil,
    "round": round, "clip": clip,
    "clamp": lambda self, min=None, max=None: clip(self, min, max),  # noqa: A002 - PyTorch's names
    "clone": clone, "to": to, "cuda": lambda self: to_dtype(self, "cuda"),
    "float": lambda self: to_dtype(self, "float32"), "double": lambda self: to_dtype(self, "float64"),
})
