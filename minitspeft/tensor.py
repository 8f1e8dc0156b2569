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
- Assigning an input's ``.data`` (``a.data = ...`` or ``a.data += 1``)
  after an op used it makes ``backward()`` through that op raise, naming
  the op (PyTorch refuses the same with its version counter). Writing into
  the array through an index (``a.data[0] = 5``) is not seen: don't.
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
  infinite, as in PyTorch: use ``norm`` for lengths. ``x ** y`` has
  PyTorch's values at exceptional points: ``d/dx x**0 = 0`` even at 0, and
  ``d/dy`` is 0 at a zero base with ``y >= 0``, ``-inf`` with ``y < 0``, NaN
  at a negative base.

This module holds the graph and nothing else: it imports no op module. The
op modules (``ops``, ``shape_ops``, ``reductions``) attach the operators and
methods (``+``, ``@``, ``t.sum()``, ``t.reshape()``...) to ``Tensor`` with
:func:`attach_methods`, each in one table at its end, next to the functions
they call (as HIPS autograd binds its box methods). ``Tensor.from_op`` is the
public way to add an op (see ``minitspeft.extend`` and tutorial 02).

Source: standard reverse-mode automatic differentiation (vector-Jacobian
products in reverse topological order), as in PyTorch and HIPS autograd.
"""

from __future__ import annotations

from . import backend
from .grad_mode import enable_grad, is_grad_enabled, no_grad

__all__ = ["Tensor", "tensor", "attach_methods", "no_grad", "enable_grad", "is_grad_enabled"]


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
        TypeError: ``requires_grad=True`` on a non-floating dtype, or data that is not numbers
            (None, strings, objects).

    Attributes:
        data: the backend array (NumPy or CuPy).
        grad: the accumulated gradient (a backend array of the same shape and
            dtype), or ``None``.
        op: the name of the op that made this tensor (``""`` for a leaf).
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
            arr = backend.asarray(data, dtype=dtype)  # another backend's array comes over explicitly
        if arr.dtype.kind not in "biufc":
            raise TypeError(f"Tensor: data must be numbers (bool, int, float or complex), got dtype {arr.dtype} "
                            f"from {type(data).__name__}")
        self._data = arr
        self._version = 0  # counts assignments to .data (backward() refuses inputs changed after use)
        self._grad = None
        self.op = ""
        self._parents: tuple = ()
        self._backward = None
        self._retain = False
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # ------------------------------------------------------------------ graph
    @classmethod
    def from_op(cls, data, parents, backward, name: str) -> "Tensor":
        """Wrap an op's result ``data``; record the graph only if some parent requires gradients.

        This is how every op in the package is made, and how you add your own
        (tutorial 02 walks through one).

        Args:
            data: the result, a backend array (``backend.xp``).
            parents: the input Tensors, in order.
            backward: ``backward(g) -> tuple`` with one gradient per parent (a
                backend array of that parent's shape, or ``None`` for a parent
                that needs none), given ``g``, the gradient of the result (its shape).
            name: the op's name, used in error messages.

        Raises:
            TypeError: if ``backward`` is not callable, ``parents`` is not a sequence of Tensors, or
                ``data`` is not a backend array.

        Returns:
            A Tensor holding ``data``; ``requires_grad`` is true when graph
            recording is on (:func:`~minitspeft.grad_mode.is_grad_enabled`) and some parent requires gradients.
        """
        if not callable(backward) or not isinstance(name, str):
            raise TypeError(f"from_op: backward must be callable and name a string, got "
                            f"{type(backward).__name__} and {type(name).__name__}")
        if isinstance(parents, Tensor) or not all(isinstance(p, Tensor) for p in parents):
            raise TypeError(f"from_op ({name}): parents must be a tuple or list of Tensors")
        if isinstance(data, Tensor) or not (hasattr(data, "shape") and hasattr(data, "dtype")):
            raise TypeError(f"from_op ({name}): data must be a backend array (backend.xp), got {type(data).__name__}")
        out = cls.__new__(cls)
        out._data = data
        out._version = 0
        out._grad = None
        out.op = name
        out._retain = False
        needs = is_grad_enabled() and any(p.requires_grad for p in parents)
        out.requires_grad = needs
        out._parents = tuple(parents) if needs else ()
        out._backward = backward if needs else None
        out._inputs_version = tuple(p._version for p in parents) if needs else ()  # to refuse a changed .data
        return out

    @property
    def data(self):
        """The backend array. Assigning to it (``t.data = ...`` or ``t.data += ...``) counts as a change:
        ``backward()`` through an op that used the old value raises."""
        return self._data

    @data.setter
    def data(self, value) -> None:
        if not isinstance(value, backend.xp.ndarray):  # host data (a list, a NumPy array on a GPU backend)
            value = backend.asarray(value)
        self._data = value
        self._version += 1

    @property
    def grad(self):
        """The accumulated gradient: a backend array of this tensor's shape and dtype, or ``None``.

        Assigning is checked as PyTorch checks it: ``None``, a backend array, host data (a NumPy array
        or a list, moved to the backend as ``.data`` is) or a Tensor (its data) of this tensor's shape
        and dtype.

        Raises:
            ValueError: on assignment of a gradient of another shape.
            TypeError: on assignment of a gradient of another dtype, or of something that is not numbers.
        """
        return self._grad

    @grad.setter
    def grad(self, value) -> None:
        if value is not None:
            if isinstance(value, Tensor):
                value = value.data
            elif not isinstance(value, backend.xp.ndarray):
                value = backend.asarray(value)
            if tuple(value.shape) != tuple(self._data.shape):
                raise ValueError(f"grad: a tensor of shape {tuple(self._data.shape)} was assigned a gradient of "
                                 f"shape {tuple(value.shape)}")
            if value.dtype != self._data.dtype:
                raise TypeError(f"grad: a {self._data.dtype} tensor was assigned a {value.dtype} gradient; "
                                f"cast it first (.astype({self._data.dtype}))")
        self._grad = value

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
            RuntimeError: if this tensor does not require gradients, if
                ``gradient`` is omitted for a tensor of several elements, or if
                an op's backward rule returns the wrong number or shape of
                gradients, or an input's ``.data`` was replaced after an op used it
                (naming the op).
            ValueError: if ``gradient`` has the wrong shape.
        """
        grads = {id(self): self._seed_gradient(gradient)}
        owned = set()  # keys whose array is a sum made here, which nothing else holds: added to in place
        for node in reversed(_topological_order(self)):
            owned.discard(id(node))
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node.is_leaf or node._retain:
                if node.grad is not None and getattr(node.grad, "shape", None) != g.shape:
                    raise RuntimeError(f"backward: a tensor of shape {node.shape} holds a .grad of shape "
                                       f"{getattr(node.grad, 'shape', type(node.grad).__name__)}; set it to None")
                node.grad = g.copy() if node.grad is None else node.grad + g
            if node.is_leaf:
                continue
            for parent, pg in node._parent_grads(g):
                key = id(parent)
                if key not in grads:
                    grads[key] = pg
                elif key in owned:
                    grads[key] += pg
                else:  # out of place: a rule may hand the same array to two parents
                    grads[key] = grads[key] + pg
                    owned.add(key)

    def _seed_gradient(self, gradient):
        """The upstream gradient ``backward()`` starts from, checked (see there)."""
        if not self.requires_grad:
            raise RuntimeError("backward: tensor does not require grad and has no graph")
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward: gradient can be implicit only for one-element tensors, got shape {self.shape}"
                )
            return backend.xp.ones_like(self.data)
        gradient = gradient.data if isinstance(gradient, Tensor) else backend.xp.asarray(gradient)
        if gradient.shape != self.shape:
            raise ValueError(f"backward: gradient shape {gradient.shape} does not match tensor shape {self.shape}")
        return gradient.astype(self.dtype, copy=False)

    def _parent_grads(self, g):
        """Yield ``(parent, gradient)`` from this node's backward rule, for parents that need one."""
        for i, (parent, used) in enumerate(zip(self._parents, self._inputs_version)):
            if parent._version != used:
                raise RuntimeError(f"backward of {self.op!r}: input {i} (shape {parent.shape}) had its .data "
                                   "replaced after the op used it, so its gradient would be wrong; run the "
                                   "forward again after changing .data")
        parent_grads = self._backward(g)
        if not isinstance(parent_grads, (tuple, list)):
            raise RuntimeError(f"backward of {self.op!r}: the rule must return a tuple with one gradient per "
                               f"input, got {type(parent_grads).__name__}")
        if len(parent_grads) != len(self._parents):
            raise RuntimeError(f"backward of {self.op!r}: the rule returned {len(parent_grads)} gradients "
                               f"for {len(self._parents)} inputs")
        for i, (parent, pg) in enumerate(zip(self._parents, parent_grads)):
            if pg is None or not parent.requires_grad:
                continue
            if isinstance(pg, Tensor) or not hasattr(pg, "shape"):
                raise RuntimeError(f"backward of {self.op!r}: the gradient of input {i} must be a backend array, "
                                   f"got {type(pg).__name__}")
            if pg.shape != parent.data.shape:
                raise RuntimeError(f"backward of {self.op!r}: the gradient of input {i} has shape "
                                   f"{tuple(pg.shape)}, the input has shape {parent.shape}")
            if pg.dtype != parent.dtype:  # mixed-dtype graphs: a gradient has its tensor's dtype
                pg = pg.astype(parent.dtype)
            yield parent, pg

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

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({backend.to_numpy(self.data)!r}{grad})"

    # comparisons (==, <, ...) are attached by the comparisons module; tensors hash by identity
    __hash__ = object.__hash__


_CORE = frozenset(vars(Tensor))  # what the class defines itself: no op module may replace it


def attach_methods(methods: dict) -> None:
    """Attach ``{name: function or property}`` to :class:`Tensor` (each op module calls it once, at its end).

    Raises:
        RuntimeError: if a name is one :class:`Tensor` defines itself (``backward``, ``shape``, ...).
    """
    clash = sorted(set(methods) & _CORE)
    if clash:
        raise RuntimeError(f"attach_methods: Tensor already defines {clash}")
    for name, fn in methods.items():
        setattr(Tensor, name, getattr(fn, "__wrapped__", fn))  # a method's self is a Tensor: skip that check


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
