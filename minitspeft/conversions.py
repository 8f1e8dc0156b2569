"""From a Tensor to host arrays and Python values: ``numpy``, ``tolist``, ``item``, ``float(t)``, ``size``...

These end a computation: none records a graph. On the CuPy backend each is
a transfer from the GPU to the host. The table at the end attaches them to
:class:`~minitspeft.tensor.Tensor`.

- ``t.numpy()``, ``np.asarray(t)`` (``__array__``): the data as a host NumPy array.
- ``t.tolist()``, ``t.item()``, ``float(t)``, ``int(t)``, ``bool(t)`` / ``if t:``: Python numbers,
  by value, for a one-element tensor (as PyTorch; several elements raise ``ValueError``).
- ``t.size`` is the element count, as NumPy's ``ndarray.size``, and ``t.size()`` /
  ``t.size(dim)`` the shape, as PyTorch's (:class:`Size`); ``t.numel()`` is the count too.
- ``t.cpu()``: the tensor on the host (itself on the NumPy backend).

Source: the NumPy and PyTorch conventions named above.
"""

from __future__ import annotations

from . import backend
from .tensor import Tensor, attach_methods

__all__ = ["Size"]


class Size(int):
    """``t.size``: the number of elements (an ``int``, as NumPy's ``ndarray.size``), callable as in PyTorch:
    ``t.size()`` is the shape tuple and ``t.size(dim)`` one of its entries (``dim`` may be negative).

    Raises (when called):
        IndexError: for ``dim`` outside ``[-ndim, ndim)``, as PyTorch.
        TypeError: for ``dim`` that is not an integer.
    """

    def __new__(cls, count: int, shape: tuple):
        self = super().__new__(cls, int(count))
        self.shape = shape
        return self

    def __getnewargs__(self):  # pickle and deepcopy build it again from both
        return int(self), self.shape

    def __call__(self, dim=None):
        if dim is None:
            return self.shape
        if not hasattr(dim, "__index__") or isinstance(dim, bool):
            raise TypeError(f"size: dim must be an integer, got {dim!r}")
        if not -len(self.shape) <= dim < len(self.shape):
            raise IndexError(f"size: dim {dim} is out of range for shape {self.shape}")
        return self.shape[dim]


def _size(self) -> Size:
    return Size(self.data.size, self.shape)


def cpu(self) -> Tensor:
    """The tensor with its data on the host: itself on the NumPy backend (as ``torch.Tensor.cpu`` returns
    a CPU tensor unchanged); on CuPy (and the strict stand-in), a detached copy holding a NumPy array,
    for ``.numpy()``, ``.tolist()`` and printing; ops refuse to mix it with device tensors, as CuPy does."""
    if backend.backend_of(self.data) == "numpy":
        return self
    return Tensor.from_op(backend.to_numpy(self.data), (), lambda g: (), "cpu")  # not moved back to the device


def _device(self) -> str:
    """``t.device``: ``"cpu"`` for a NumPy array, ``"cuda"`` for a CuPy (or strict stand-in) array, as
    ``str(torch.Tensor.device)``."""
    return "cpu" if backend.backend_of(self.data) == "numpy" else "cuda"


def numpy(self):
    """The data as a NumPy array on the host (a copy for CuPy data)."""
    return backend.to_numpy(self.data)


def tolist(self):
    """The data as (nested) Python lists of numbers, as ``ndarray.tolist``."""
    return backend.to_numpy(self.data).tolist()


def numel(self) -> int:
    """The number of elements (PyTorch's name; ``size`` is that number too, as in NumPy)."""
    return int(self.data.size)


def __array__(self, dtype=None, copy=None):  # noqa: N807 - NumPy's protocol
    """``np.asarray(t)``: the data as a host NumPy array (not an object array holding the Tensor)."""
    out = backend.to_numpy(self.data)
    return out if dtype is None else out.astype(dtype, copy=False)


def _one_element(t: Tensor, kind: str):
    """The value behind ``float(t)``, ``int(t)``, ``bool(t)`` / ``if t:`` and ``t.item()``.

    Raises:
        ValueError: naming ``kind`` for a tensor of several elements (or none).
    """
    if t.data.size != 1:
        raise ValueError(f"{kind}: only a tensor with one element can be converted, got shape {t.shape} "
                         f"(as PyTorch, the truth or value of several elements is ambiguous)")
    return t.data.reshape(()).item()


def item(self):
    """The single element as a Python number.

    Raises:
        ValueError: if the tensor has more or fewer than one element.
    """
    return _one_element(self, "item")


attach_methods({
    "size": property(_size, doc=Size.__doc__), "device": property(_device, doc=_device.__doc__), "cpu": cpu, "numpy": numpy, "tolist": tolist, "numel": numel,
    "__array__": __array__, "item": item,
    "__float__": lambda self: float(_one_element(self, "float")),
    "__int__": lambda self: int(_one_element(self, "int")),
    "__bool__": lambda self: bool(_one_element(self, "bool")),
})
