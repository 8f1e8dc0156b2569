"""The ``Tensor``: an array, the graph that made it, and reverse-mode differentiation.

Semantics (they follow PyTorch):

- A *leaf* is a tensor made by the user (or a ``Parameter``). ``backward()``
  adds into a leaf's ``.grad``; it accumulates across calls until it is
  zeroed (``zero_grad()`` on a module or optimiser, or ``t.grad = None``).
- An *intermediate* (made by an op) keeps its gradient only after
  ``retain_grad()``.
- A tensor used on several paths receives the sum of the gradients of all
  paths.
- Graphs are not freed by ``backward()``: calling it a second time through
  the same graph is allowed and adds the same gradients again (PyTorch's
  ``retain_graph=True``).
- ``backward()`` on a tensor with more than one element needs an explicit
  upstream ``gradient`` of the same shape.
- The traversal is iterative, so a chain of 100,000 ops needs no recursion.
- Inside ``no_grad()`` ops record nothing.
- Only floating tensors can require gradients. Gradients have the dtype of
  their tensor: float32 in, float32 gradients out. Python scalars never
  promote a float32 computation to float64.
- A backward rule computes gradients only for the inputs that require one,
  so frozen weights cost no gradient work.
- Non-smooth points use fixed subgradients: ``relu`` and ``abs`` have
  derivative 0 at 0; tied maxima (``max``, ``maximum``) share the gradient
  evenly; ``norm`` (and the gate's ratio) use 0 at a zero vector, so a LoRA
  update that starts at zero has a finite gradient; ``sqrt`` at 0 is
  infinite, as in PyTorch: use ``norm`` for lengths.

Source: standard reverse-mode automatic differentiation (vector-Jacobian
products in reverse topological order), as in PyTorch and HIPS autograd.
"""

from __future__ import annotations

import functools
import threading

from . import backend


class _GradMode(threading.local):
    """Whether ops record a graph: one flag per thread, as in PyTorch."""

    enabled = True


_grad_mode = _GradMode()


def is_grad_enabled() -> bool:
    """Return whether ops currently record a graph (in this thread)."""
    return _grad_mode.enabled


class no_grad:
    """Context manager and decorator that stops ops from recording a graph.

    Example::

        with mt.no_grad():
            logits = model(x)      # no graph, no gradient memory

        @mt.no_grad()
        def evaluate(...): ...
    """

    def __enter__(self):
        self._prev = _grad_mode.enabled
        _grad_mode.enabled = False
        return self

    def __exit__(self, *exc):
        _grad_mode.enabled = self._prev
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)

        return wrapper


class enable_grad(no_grad):
    """Context manager and decorator that turns graph recording back on inside ``no_grad``."""

    def __enter__(self):
        self._prev = _grad_mode.enabled
        _grad_mode.enabled = True
        return self


def _is_floating(dtype) -> bool:
    return backend.xp.dtype(dtype).kind == "f"


class Tensor:
    """An n-dimensional array that records how it was computed.

    Args:
        data: a list, scalar, NumPy or CuPy array. Python floats and lists of
            floats become the default dtype (float32); arrays keep their own
            dtype; integers stay integers.
        requires_grad: track gradients for this leaf.
        dtype: optional dtype to cast to.

    Raises:
        TypeError: ``requires_grad=True`` on a non-floating dtype.

    Attributes:
        data: the backend array (NumPy or CuPy).
        grad: the accumulated gradient (a backend array of the same shape and
            dtype), or ``None``.
    """

    __array_priority__ = 1000  # make ``ndarray * Tensor`` call Tensor.__rmul__

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        xp = backend.xp
        if isinstance(data, Tensor):
            data = data.data
        if dtype is None and not hasattr(data, "dtype"):
            arr = xp.asarray(data)
            if arr.dtype.kind == "f":
                arr = arr.astype(backend.get_default_dtype())
        else:
            arr = xp.asarray(data, dtype=dtype)
        self.data = arr
        self.grad = None
        self._parents: tuple = ()
        self._backward = None
        self._op = ""
        self._retain = False
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # ------------------------------------------------------------------ graph
    @classmethod
    def _from_op(cls, data, parents, backward, op: str) -> "Tensor":
        """Wrap an op's result; record the graph only if a parent needs gradients."""
        out = cls.__new__(cls)
        out.data = data
        out.grad = None
        out._retain = False
        out._op = op
        needs = _grad_mode.enabled and any(p.requires_grad for p in parents)
        out.requires_grad = needs
        out._parents = tuple(parents) if needs else ()
        out._backward = backward if needs else None
        return out

    @property
    def is_leaf(self) -> bool:
        """True for tensors not made by a recorded op (user tensors, parameters)."""
        return self._backward is None

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        """Set ``requires_grad`` in place on a leaf.

        Raises:
            TypeError: if ``flag`` is true and the dtype is not floating.
            RuntimeError: on a non-leaf tensor.
        """
        if not self.is_leaf:
            raise RuntimeError("requires_grad_: only leaf tensors can change requires_grad")
        if flag and not _is_floating(self.data.dtype):
            raise TypeError(
                f"requires_grad_: only floating tensors can require gradients, got dtype {self.data.dtype}"
            )
        self.requires_grad = bool(flag)
        return self

    def retain_grad(self) -> None:
        """Keep this intermediate's gradient in ``.grad`` after ``backward()``."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad: tensor does not require grad")
        self._retain = True

    def detach(self) -> "Tensor":
        """Return a leaf sharing this data, cut from the graph."""
        return Tensor(self.data)

    def backward(self, gradient=None) -> None:
        """Back-propagate from this tensor into every leaf that requires gradients.

        Args:
            gradient: upstream gradient, same shape as this tensor; may be
                omitted only for a tensor with one element (taken as 1).

        Raises:
            RuntimeError: if this tensor does not require gradients, or if
                ``gradient`` is omitted for a tensor of several elements.
            ValueError: if ``gradient`` has the wrong shape.
        """
        xp = backend.xp
        if not self.requires_grad:
            raise RuntimeError("backward: tensor does not require grad and has no graph")
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward: gradient can be implicit only for one-element tensors, got shape {self.shape}"
                )
            gradient = xp.ones_like(self.data)
        else:
            gradient = gradient.data if isinstance(gradient, Tensor) else xp.asarray(gradient)
            if gradient.shape != self.shape:
                raise ValueError(
                    f"backward: gradient shape {gradient.shape} does not match tensor shape {self.shape}"
                )
            gradient = gradient.astype(self.dtype, copy=False)

        order = _topological_order(self)
        grads = {id(self): gradient}
        for node in reversed(order):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node.is_leaf or node._retain:
                node.grad = g.copy() if node.grad is None else node.grad + g
            if node.is_leaf:
                continue
            parent_grads = node._backward(g)
            for parent, pg in zip(node._parents, parent_grads, strict=True):
                if pg is None or not parent.requires_grad:
                    continue
                if pg.dtype != parent.dtype:  # mixed-dtype graphs: a gradient has its tensor's dtype
                    pg = pg.astype(parent.dtype)
                key = id(parent)
                # out of place: a rule may hand the same array to two parents
                grads[key] = pg if key not in grads else grads[key] + pg

    # ------------------------------------------------------------- properties
    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return int(self.data.size)

    def __len__(self) -> int:
        return len(self.data)

    def numpy(self):
        """Return the data as a NumPy array on the host (a copy for CuPy data)."""
        return backend.to_numpy(self.data)

    def item(self):
        """Return the single element as a Python number.

        Raises:
            ValueError: if the tensor has more than one element.
        """
        if self.data.size != 1:
            raise ValueError(f"item: tensor of shape {self.shape} has more than one element")
        return self.data.reshape(()).item()

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({backend.to_numpy(self.data)!r}{grad})"

    # comparisons return plain backend arrays (no gradient flows through them)
    def __lt__(self, other):
        return self.data < _raw(other)

    def __le__(self, other):
        return self.data <= _raw(other)

    def __gt__(self, other):
        return self.data > _raw(other)

    def __ge__(self, other):
        return self.data >= _raw(other)

    __hash__ = object.__hash__

    # ------------------------------------------------------ operators and ops
    def __add__(self, other):
        return _ops.add(self, other)

    def __radd__(self, other):
        return _ops.add(other, self)

    def __sub__(self, other):
        return _ops.sub(self, other)

    def __rsub__(self, other):
        return _ops.sub(other, self)

    def __mul__(self, other):
        return _ops.mul(self, other)

    def __rmul__(self, other):
        return _ops.mul(other, self)

    def __truediv__(self, other):
        return _ops.div(self, other)

    def __rtruediv__(self, other):
        return _ops.div(other, self)

    def __pow__(self, other):
        return _ops.pow(self, other)

    def __rpow__(self, other):
        return _ops.pow(other, self)

    def __matmul__(self, other):
        return _ops.matmul(self, other)

    def __rmatmul__(self, other):
        return _ops.matmul(other, self)

    def __neg__(self):
        return _ops.neg(self)

    def __getitem__(self, index):
        return _ops.getitem(self, index)

    def sum(self, axis=None, keepdims=False):
        return _red.sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return _red.mean(self, axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return _red.max(self, axis, keepdims)

    def min(self, axis=None, keepdims=False):
        return _red.min(self, axis, keepdims)

    def var(self, axis=None, keepdims=False, correction=0):
        return _red.var(self, axis, keepdims, correction)

    def norm(self, axis=None, keepdims=False):
        return _red.norm(self, axis, keepdims)

    def exp(self):
        return _ops.exp(self)

    def log(self):
        return _ops.log(self)

    def sqrt(self):
        return _ops.sqrt(self)

    def tanh(self):
        return _ops.tanh(self)

    def sigmoid(self):
        return _ops.sigmoid(self)

    def relu(self):
        return _ops.relu(self)

    def abs(self):
        return _ops.abs(self)

    def reshape(self, *shape):
        """``t.reshape(2, 3)`` or ``t.reshape((2, 3))``."""
        return _ops.reshape(self, _varargs(shape))

    def transpose(self, *axes):
        """``t.transpose()`` reverses the axes; ``t.transpose(0, 2, 1)`` or ``t.transpose((0, 2, 1))`` permutes."""
        return _ops.transpose(self, _varargs(axes) or None)

    def swapaxes(self, axis1, axis2):
        return _ops.swapaxes(self, axis1, axis2)

    @property
    def T(self):
        return _ops.transpose(self, None)


def _varargs(args: tuple) -> tuple:
    """Accept both ``f(2, 3)`` and ``f((2, 3))``, as NumPy and PyTorch do."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    """Create a leaf :class:`Tensor` (same arguments as the class)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def _topological_order(root: Tensor) -> list:
    """Nodes reachable from ``root`` that require gradients, parents before children.

    Iterative depth-first search with an explicit stack: deep graphs (100,000
    chained ops) would overflow Python's recursion limit otherwise.
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node._parents:
            if parent.requires_grad and id(parent) not in visited:
                stack.append((parent, False))
    return order


from . import ops as _ops  # noqa: E402  (the op modules need Tensor defined first)
from . import reductions as _red  # noqa: E402
