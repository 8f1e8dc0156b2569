"""Writing an op: the public helpers every op in the package is built with.

An op has three parts (tutorial 02 walks through one):

1. compute the result on backend arrays (``backend.xp`` is NumPy or CuPy);
2. write ``backward(g)``: given the gradient ``g`` of the result, return one
   gradient per input (in input order; ``None`` for an input that needs none);
3. wrap both with :meth:`Tensor.from_op(result, inputs, backward, name)
   <minitspeft.tensor.Tensor.from_op>`, which records the graph only when some
   input requires a gradient.

Then check the gradient with :func:`minitspeft.testing.check_grad`.

For ops that broadcast two inputs, :func:`binary_op` does the bookkeeping
(constants as tensors, the broadcast check, summing each gradient back to its
input's shape with :func:`unbroadcast`); :func:`unary_op` does it for
elementwise ops of one input.
"""

from __future__ import annotations

import functools

from . import backend
from .tensor import Tensor

__all__ = ["Tensor", "unbroadcast", "as_tensor", "as_pair", "broadcast_shape", "binary_op", "unary_op",
           "tensor_input", "require_tensor"]


def require_tensor(op: str, name: str, value) -> None:
    """Raise ``TypeError`` naming ``op`` and ``name`` unless ``value`` is a Tensor.

    (A NumPy array passed where a Tensor belongs would be read through its
    ``.data``, a ``memoryview``, and fail somewhere deeper with an unclear error.)
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(value).__name__}; "
                        "wrap arrays with minitspeft.Tensor(...)")


def tensor_input(fn):
    """Decorator for an op whose first argument must be a Tensor (see :func:`require_tensor`).

    The undecorated function stays available as ``fn.__wrapped__``; the
    method tables attach that one, since a method's ``self`` is always a Tensor.
    """
    name = fn.__name__

    @functools.wraps(fn)
    def checked(x, *args, **kwargs):
        if not isinstance(x, Tensor):
            require_tensor(name, "x", x)
        return fn(x, *args, **kwargs)

    return checked


_UNSET = object()


def torch_names(fn):
    """Decorator: accept PyTorch's ``dim=`` and ``keepdim=`` as aliases of ``axis=`` and ``keepdims=``.

    Raises (from the decorated function):
        TypeError: when an argument is given under both names (one positionally, or both as keywords).
    """
    name = fn.__name__

    @functools.wraps(fn)
    def renamed(x, *args, dim=_UNSET, keepdim=_UNSET, **kwargs):
        for alias, value, canonical, position in (("dim", dim, "axis", 0), ("keepdim", keepdim, "keepdims", 1)):
            if value is _UNSET:
                continue
            if canonical in kwargs or len(args) > position:
                raise TypeError(f"{name}: got both {canonical} and {alias} (the same argument, under "
                                "NumPy's and PyTorch's names); give one")
            kwargs[canonical] = value
        return fn(x, *args, **kwargs)

    return renamed


def unbroadcast(grad, shape: tuple):
    """Sum ``grad`` over the axes that broadcasting added or stretched, to get ``shape``.

    Args:
        grad: backend array, the gradient of a broadcast result.
        shape: the input's shape before broadcasting.

    Returns:
        A backend array of shape ``shape`` (``grad`` itself when nothing was broadcast).

    Source: the chain rule for broadcasting (a broadcast copies, so its VJP sums), as in HIPS autograd.
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
    """Return ``x`` as a Tensor; a constant next to a floating Tensor ``like`` takes ``like``'s dtype.

    So constants (Python or NumPy scalars, arrays) never promote a float32
    computation to float64. A Tensor is returned unchanged.
    """
    if isinstance(x, Tensor):
        return x
    if like is not None and like.dtype.kind == "f":
        arr = backend.xp.asarray(x)
        if arr.dtype.kind in "biuf":
            return Tensor(arr.astype(like.dtype, copy=False))
    return Tensor(x)


def as_pair(a, b) -> tuple:
    """``(a, b)`` as Tensors, a constant on either side taking the other's dtype (see :func:`as_tensor`)."""
    if isinstance(a, Tensor):
        return a, as_tensor(b, like=a)
    b = as_tensor(b)
    return as_tensor(a, like=b), b


def broadcast_shape(op: str, a: Tensor, b: Tensor) -> tuple:
    """The broadcast shape of ``a`` and ``b``.

    Raises:
        ValueError: naming ``op`` and both shapes when they do not broadcast.
    """
    try:
        return tuple(backend.xp.broadcast_shapes(a.shape, b.shape))
    except ValueError:
        raise ValueError(f"{op}: cannot broadcast shapes {a.shape} and {b.shape}") from None


def binary_op(name: str, a, b, forward, grad_a, grad_b) -> Tensor:
    """An op of two broadcast inputs: ``forward(x, y)`` on their arrays, gradients ``grad_a``, ``grad_b``.

    Args:
        name: the op's name (in errors and on the result's ``op``).
        a, b: Tensors or constants (a constant takes the other side's dtype).
        forward: ``forward(x, y) -> out`` on backend arrays.
        grad_a, grad_b: ``grad(g, x, y, out) -> array`` of the broadcast shape;
            each is called only when its input requires a gradient, and its
            result is summed back to the input's shape.

    Raises:
        ValueError: naming ``name`` when the shapes do not broadcast.
        TypeError: naming ``name`` for an operand that is not a Tensor, a number or an array of numbers.
    """
    try:  # a non-numeric operand (None, a string) fails in Tensor(): name the op instead
        a, b = as_pair(a, b)
    except TypeError:
        raise TypeError(f"{name}: cannot combine a Tensor with {type(b if isinstance(a, Tensor) else a).__name__}") \
            from None
    broadcast_shape(name, a, b)
    out = forward(a.data, b.data)

    def backward(g):
        return (unbroadcast(grad_a(g, a.data, b.data, out), a.shape) if a.requires_grad else None,
                unbroadcast(grad_b(g, a.data, b.data, out), b.shape) if b.requires_grad else None)

    return Tensor.from_op(out, (a, b), backward, name)


def unary_op(name: str, x: Tensor, out, local_grad) -> Tensor:
    """An elementwise op of one input with result ``out`` and derivative ``local_grad()``.

    ``local_grad`` takes no argument and returns ``d out / d x`` elementwise;
    it is called only in the backward pass, so a frozen input costs nothing.
    """

    def backward(g):
        return (g * local_grad(),)

    return Tensor.from_op(out, (x,), backward, name)
