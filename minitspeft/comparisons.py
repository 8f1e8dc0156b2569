"""Comparisons and tests of values: element-wise boolean tensors that carry no gradient.

``a == b``, ``a != b``, ``a < b``, ``a <= b``, ``a > b`` and ``a >= b`` are
element-wise and return boolean Tensors, as in PyTorch (and NumPy), with
NumPy's broadcasting; so do :func:`isnan` and :func:`isfinite`. A boolean
result is a step function of its inputs, whose derivative is 0 wherever it
is defined, so none of them records a graph: use the result as a mask
(``where``, ``masked_fill``) or a count (``.sum()``), and combine masks
with ``&``, ``|``, ``^`` and ``~``. Python's ``if t:``
works only on a one-element result; :func:`equal` (``t.equal(u)``) answers
"same shape and same values" with one Python bool.

Tensors stay hashable by identity (``__hash__`` is ``object.__hash__``), so
sets and dict keys of tensors keep working; but ``t in some_list`` compares
with ``==``, which is element-wise: use identity (``any(t is u for u in ...)``)
there, as in PyTorch.

Source: PyTorch's comparison semantics (``torch.eq`` and friends, ``torch.equal``).
"""

from __future__ import annotations

from . import backend
from .extend import broadcast_shape, tensor_input
from .tensor import Tensor, attach_methods

__all__ = ["eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor", "logical_not", "equal",
           "isnan", "isfinite"]


def _compare(name: str, a, b, fn) -> Tensor:
    """``fn(a, b)`` on the arrays of ``a`` and ``b`` (Tensors, numbers or arrays), as a boolean Tensor.

    Raises:
        ValueError: naming the op and both shapes when they do not broadcast.
        TypeError: naming the op for an operand that is not numbers.
    """
    xp = backend.xp
    try:
        x, y = (t if isinstance(t, Tensor) else Tensor(t) for t in (a, b))
    except TypeError:
        raise TypeError(f"{name}: cannot compare a Tensor with {type(b if isinstance(a, Tensor) else a).__name__}") \
            from None
    broadcast_shape(name, x, y)
    return Tensor(xp.asarray(fn(x.data, y.data)))


def eq(a, b) -> Tensor:
    """``a == b`` element-wise, a boolean Tensor (see the module docstring)."""
    return _compare("eq", a, b, lambda x, y: x == y)


def ne(a, b) -> Tensor:
    """``a != b`` element-wise, a boolean Tensor."""
    return _compare("ne", a, b, lambda x, y: x != y)


def lt(a, b) -> Tensor:
    """``a < b`` element-wise, a boolean Tensor."""
    return _compare("lt", a, b, lambda x, y: x < y)


def le(a, b) -> Tensor:
    """``a <= b`` element-wise, a boolean Tensor."""
    return _compare("le", a, b, lambda x, y: x <= y)


def gt(a, b) -> Tensor:
    """``a > b`` element-wise, a boolean Tensor."""
    return _compare("gt", a, b, lambda x, y: x > y)


def ge(a, b) -> Tensor:
    """``a >= b`` element-wise, a boolean Tensor."""
    return _compare("ge", a, b, lambda x, y: x >= y)


def _logical(name: str, a, b, fn) -> Tensor:
    """``fn`` of two boolean or integer tensors (``&``, ``|``, ``^``): element-wise, no graph."""
    for t in (a, b):
        kind = (t.dtype.kind if isinstance(t, Tensor) else backend.xp.asarray(t).dtype.kind)
        if kind not in "biu":
            raise TypeError(f"{name}: needs boolean or integer tensors (masks), got dtype kind {kind!r}; "
                            "compare first (x > 0)")
    return _compare(name, a, b, fn)


def logical_and(a, b) -> Tensor:
    """``a & b`` element-wise on boolean (or integer, bitwise) tensors, as in PyTorch: for masks."""
    return _logical("logical_and", a, b, lambda x, y: x & y)


def logical_or(a, b) -> Tensor:
    """``a | b`` element-wise on boolean (or integer, bitwise) tensors."""
    return _logical("logical_or", a, b, lambda x, y: x | y)


def logical_xor(a, b) -> Tensor:
    """``a ^ b`` element-wise on boolean (or integer, bitwise) tensors."""
    return _logical("logical_xor", a, b, lambda x, y: x ^ y)


@tensor_input
def logical_not(x: Tensor) -> Tensor:
    """``~x``: not, for a boolean tensor (bitwise not for integers).

    Raises:
        TypeError: for a floating tensor.
    """
    if x.dtype.kind not in "biu":
        raise TypeError(f"logical_not: needs a boolean or integer tensor, got {x.dtype}")
    return Tensor(~x.data)


@tensor_input
def equal(x: Tensor, other) -> bool:
    """True when ``other`` has ``x``'s shape and every element is equal (``torch.equal``).

    NaN is not equal to itself (as in PyTorch). Dtypes may differ: values are compared.
    """
    other = other if isinstance(other, Tensor) else Tensor(other)
    return x.shape == other.shape and bool((x.data == other.data).all())


@tensor_input
def isnan(x: Tensor) -> Tensor:
    """Where ``x`` is NaN, a boolean Tensor of ``x``'s shape (all False for integer dtypes)."""
    return Tensor(backend.xp.isnan(x.data))


@tensor_input
def isfinite(x: Tensor) -> Tensor:
    """Where ``x`` is neither infinite nor NaN, a boolean Tensor of ``x``'s shape."""
    return Tensor(backend.xp.isfinite(x.data))


attach_methods({
    "__eq__": eq, "__ne__": ne, "__lt__": lt, "__le__": le, "__gt__": gt, "__ge__": ge,
    "eq": eq, "ne": ne, "lt": lt, "le": le, "gt": gt, "ge": ge,
    "__and__": logical_and, "__or__": logical_or, "__xor__": logical_xor, "__invert__": logical_not,
    "__rand__": lambda self, other: logical_and(other, self), "__ror__": lambda self, other: logical_or(other, self),
    "__rxor__": lambda self, other: logical_xor(other, self),
    "equal": equal, "isnan": isnan, "isfinite": isfinite,
})
