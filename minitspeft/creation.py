"""Making tensors: ``zeros``, ``ones``, ``full``, ``arange``, ``eye``, ``zeros_like``, ``ones_like``,
``randn``, ``rand`` (PyTorch's names and signatures).

A size is given as separate integers or one tuple (``zeros(2, 3)`` or
``zeros((2, 3))``); NumPy integers count as integers. Floating results get
the default dtype (float32 unless :func:`~minitspeft.backend.set_default_dtype`
changed it), as in PyTorch; ``full`` and ``arange`` with integer values give
int64. Random numbers are drawn on the host from the generator that
:func:`~minitspeft.backend.manual_seed` seeds, in float64, and then cast, so
a seed gives the same values on every backend and, up to rounding, in every
dtype. Each result is a leaf: pass ``requires_grad=True`` for a floating one
you will differentiate.

Source: PyTorch's creation functions (``torch.zeros`` ...), NumPy's arrays underneath.
"""

from __future__ import annotations

from numbers import Real

from . import backend
from .checks import is_int
from .extend import tensor_input
from .tensor import Tensor

__all__ = ["zeros", "ones", "full", "arange", "eye", "zeros_like", "ones_like", "randn", "rand"]


def _size(op: str, size: tuple) -> tuple:
    """``size`` (integers, or one tuple or list of them) as a tuple of non-negative ints.

    Raises:
        TypeError: naming ``op`` for a size that is not integers (a float, a bool, None, ...).
        ValueError: naming ``op`` for a negative size.
    """
    dims = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else tuple(size)
    if not all(is_int(n) for n in dims):
        raise TypeError(f"{op}: the size must be integers, got {size!r}")
    if any(n < 0 for n in dims):
        raise ValueError(f"{op}: the size must not be negative, got {dims}")
    return tuple(int(n) for n in dims)


def _dtype(dtype, default=None):
    return backend.xp.dtype(dtype) if dtype is not None else default or backend.get_default_dtype()


def zeros(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    """A tensor of ``size`` filled with 0 (``torch.zeros``). Raises as :func:`_size` for a bad size."""
    return Tensor(backend.xp.zeros(_size("zeros", size), dtype=_dtype(dtype)), requires_grad=requires_grad)


def ones(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    """A tensor of ``size`` filled with 1 (``torch.ones``). Raises as :func:`_size` for a bad size."""
    return Tensor(backend.xp.ones(_size("ones", size), dtype=_dtype(dtype)), requires_grad=requires_grad)


def full(size, fill_value, dtype=None, requires_grad: bool = False) -> Tensor:
    """A tensor of ``size`` filled with ``fill_value`` (``torch.full``): bool for a bool, int64 for an
    integer, the default floating dtype for a float, unless ``dtype`` is given.

    Raises:
        TypeError: for a fill value that is not a number, or a bad size.
        ValueError: for a negative size.
    """
    shape = _size("full", (size,))
    if isinstance(fill_value, bool):
        default = backend.xp.dtype(bool)
    elif is_int(fill_value):
        default = backend.xp.dtype("int64")
    elif isinstance(fill_value, Real):
        default = None
    else:
        raise TypeError(f"full: fill_value must be a number, got {type(fill_value).__name__}")
    return Tensor(backend.xp.full(shape, fill_value, dtype=_dtype(dtype, default)), requires_grad=requires_grad)


def arange(start, end=None, step=1, dtype=None, requires_grad: bool = False) -> Tensor:
    """``[start, end)`` in steps of ``step`` (``torch.arange``; ``arange(n)`` is ``0 .. n-1``):
    int64 when all three are integers, else the default floating dtype.

    Raises:
        ValueError: for ``step == 0``.
        TypeError: for an argument that is not a real number.
    """
    if end is None:
        start, end = 0, start
    for name, v in (("start", start), ("end", end), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, Real):
            raise TypeError(f"arange: {name} must be a real number, got {v!r}")
    if step == 0:
        raise ValueError("arange: step must not be 0")
    default = backend.xp.dtype("int64") if all(is_int(v) for v in (start, end, step)) else None
    return Tensor(backend.xp.arange(start, end, step, dtype=_dtype(dtype, default)), requires_grad=requires_grad)


def eye(n, m=None, dtype=None, requires_grad: bool = False) -> Tensor:
    """The ``(n, m)`` identity matrix (``m = n`` by default), ``torch.eye``. Raises as :func:`_size`."""
    n, m = _size("eye", (n, n if m is None else m))
    return Tensor(backend.xp.eye(n, m, dtype=_dtype(dtype)), requires_grad=requires_grad)


@tensor_input
def zeros_like(x: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    """Zeros of ``x``'s shape and dtype (or ``dtype``), ``torch.zeros_like``; a new leaf."""
    return Tensor(backend.xp.zeros(x.shape, dtype=dtype or x.dtype), requires_grad=requires_grad)


@tensor_input
def ones_like(x: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    """Ones of ``x``'s shape and dtype (or ``dtype``), ``torch.ones_like``; a new leaf."""
    return Tensor(backend.xp.ones(x.shape, dtype=dtype or x.dtype), requires_grad=requires_grad)


def _random(op: str, draw, size: tuple, dtype, requires_grad: bool) -> Tensor:
    dt = _dtype(dtype)
    if dt.kind != "f":
        raise TypeError(f"{op}: dtype must be floating, got {dt}")
    values = draw(backend.host_rng(), _size(op, size))
    return Tensor(backend.asarray(values.astype(dt)), requires_grad=requires_grad)


def randn(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    """Standard normal samples of ``size`` (``torch.randn``), from the host generator (see the module).

    Raises:
        TypeError: for a dtype that is not floating or a bad size. ValueError: for a negative size.
    """
    return _random("randn", lambda rng, s: rng.standard_normal(s), size, dtype, requires_grad)


def rand(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    """Uniform samples in ``[0, 1)`` of ``size`` (``torch.rand``), from the host generator (see the module).

    Raises:
        TypeError: for a dtype that is not floating or a bad size. ValueError: for a negative size.
    """
    return _random("rand", lambda rng, s: rng.random(s), size, dtype, requires_grad)
