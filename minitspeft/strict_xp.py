"""A strict stand-in for CuPy, for machines without a GPU: ``mt.set_backend("strict")``.

It runs NumPy underneath but behaves like CuPy where a NumPy program slips
when it moves to a GPU, so the code above the backend can be checked on any
machine:

- its arrays are a distinct type (:class:`StrictArray`), not NumPy arrays;
- any implicit conversion to NumPy raises ``TypeError``, as CuPy's does:
  ``np.asarray(a)`` (``__array__``), a NumPy function or ufunc applied to
  ``a``, and mixing ``a`` with a NumPy array in an operator, an index or a
  function call (NumPy scalars and Python numbers mix freely, as in CuPy);
- ``a.get()`` is the explicit copy to the host, and ``xp.asarray(host)`` the
  explicit copy to the "device";
- reductions and full indexing give 0-d arrays, not NumPy scalars, as in CuPy;
- ``xp.<name>`` serves only names CuPy has too (:data:`CUPY_NAMES`), so a NumPy-only function fails
  here as it would on a GPU;
- the refusals hold for the package's own code (every module under
  ``minitspeft/``, so a slip anywhere in it is caught); code outside it, a
  test or a user's script, may still hand device arrays to NumPy
  (``np.testing.assert_allclose(t.grad, ...)``), as if it had called
  ``.get()`` first: that is the host looking at results, and it is counted;
- every transfer to the host (``get()``, ``float(a)``, ``int(a)``,
  ``bool(a)``, ``a.item()``, ``a.tolist()``, ``repr(a)``), and every
  result whose shape depends on the data (``a[mask]``, ``xp.nonzero``,
  ``xp.flatnonzero``: CuPy synchronises for those too) is counted
  (:func:`transfer_count`), and inside :func:`no_transfers` any of them
  raises :class:`HostTransferError`, so a test can prove that a step does
  not synchronise with the host.

Source: CuPy's documented differences from NumPy (no implicit host
conversion, 0-d results, ``cupyx.scatter_add``); the wrapper is derived here.
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy

__all__ = ["StrictArray", "HostTransferError", "xp", "transfer_count", "no_transfers", "scatter_add"]

_transfers = 0
_forbidden = 0


class HostTransferError(RuntimeError):
    """A transfer to the host happened inside :func:`no_transfers`."""


def transfer_count() -> int:
    """The number of transfers to the host so far (``get()``, ``float(a)``, ``a.item()``, ...)."""
    return _transfers


@contextlib.contextmanager
def no_transfers():
    """Inside, any transfer to the host raises :class:`HostTransferError` (nestable)."""
    global _forbidden
    _forbidden += 1
    try:
        yield
    finally:
        _forbidden -= 1


def _transfer(what: str) -> None:
    global _transfers
    if _forbidden:
        raise HostTransferError(f"strict backend: {what} copies device data to the host inside no_transfers()")
    _transfers += 1


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_PASS_THROUGH = (os.path.abspath(__file__), os.path.dirname(os.path.abspath(numpy.__file__)) + os.sep)


def _from_package() -> bool:
    """Whether the code that asked for a conversion is the package's own (not NumPy's, not this file's)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_PASS_THROUGH):
        frame = frame.f_back
    return frame is not None and frame.f_code.co_filename.startswith(_PACKAGE)


def _mixing(x) -> TypeError:
    return TypeError(f"strict backend: a NumPy array (shape {x.shape}, dtype {x.dtype}) was given to device "
                     "code; CuPy refuses implicit mixing: move it with backend.asarray(...) first")


def _unwrap(x):
    """Device arrays to their NumPy data, recursively through lists and tuples; a NumPy array raises."""
    if isinstance(x, StrictArray):
        return x._a
    if isinstance(x, numpy.ndarray):
        if _from_package():
            raise _mixing(x)
        return x  # a test or a script mixing on the host side: allowed (see the module docstring)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    return x


def _wrap(x):
    """NumPy results as device arrays (scalars as 0-d arrays, as CuPy gives), through lists and tuples."""
    if isinstance(x, numpy.ndarray):
        return StrictArray(x)
    if isinstance(x, numpy.generic):
        return StrictArray(numpy.asarray(x))
    if isinstance(x, (list, tuple)) and any(isinstance(v, (numpy.ndarray, numpy.generic)) for v in x):
        return type(x)(_wrap(v) for v in x)
    return x


def _call(fn):
    def call(*args, **kwargs):
        args = _unwrap(args)
        return _wrap(fn(*args, **{k: _unwrap(v) for k, v in kwargs.items()}))

    call.__name__ = getattr(fn, "__name__", "call")
    return call


class StrictArray:
    """A device array of the strict backend: NumPy data that refuses every implicit trip to the host.

    Attributes and methods are NumPy's (``shape``, ``dtype``, ``sum``, ``astype``, ...), taking and
    giving device arrays. Raises ``TypeError`` on implicit conversion or on mixing with a NumPy array.
    """

    __slots__ = ("_a",)
    __array_priority__ = 10000  # ndarray + device array defers to our operators

    def __init__(self, a):
        self._a = a if type(a) is numpy.ndarray else numpy.asarray(a)  # NumPy scalars as 0-d arrays

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    T = property(lambda self: StrictArray(self._a.T))

    def __getattr__(self, name):
        if name.startswith("__"):  # no __array_interface__, __dlpack__, ...: NumPy must not read the data
            raise AttributeError(f"strict device arrays have no {name}")
        value = getattr(self._a, name)
        return _call(value) if callable(value) else _wrap(value)

    def __array__(self, dtype=None, copy=None):
        if _from_package():
            raise TypeError("strict backend: implicit conversion to a NumPy array is not allowed (as in CuPy); "
                            "use minitspeft.to_numpy() (or .get()) for an explicit copy")
        _transfer("a conversion to NumPy")
        return self._a if dtype is None else self._a.astype(dtype)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """A NumPy ufunc given device arrays runs on the device, as CuPy's does (``np.float32(2) * a``,
        ``np.exp(a)``); with a NumPy array among the inputs it is mixing (see :func:`_unwrap`)."""
        inputs = _unwrap(inputs)
        if "out" in kwargs:
            kwargs["out"] = _unwrap(kwargs["out"])
        return _wrap(getattr(ufunc, method)(*inputs, **kwargs))

    def get(self):
        """The data as a new NumPy array on the host (an explicit, counted transfer)."""
        _transfer("get()")
        return self._a.copy()

    def item(self):
        _transfer("item()")
        return self._a.item()

    def tolist(self):
        _transfer("tolist()")
        return self._a.tolist()

    def __float__(self):
        _transfer("float()")
        return float(self._a)

    def __int__(self):
        _transfer("int()")
        return int(self._a)

    def __bool__(self):
        _transfer("bool()")
        return bool(self._a)

    def __complex__(self):
        _transfer("complex()")
        return complex(self._a)

    def __format__(self, spec):
        if not spec:
            return repr(self)
        _transfer("format()")
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (StrictArray(numpy.asarray(row)) for row in self._a)

    def __getitem__(self, index):
        if _has_mask(index):  # the result's shape depends on the data: CuPy must wait for the GPU
            _transfer("indexing with a boolean mask")
        return _wrap(self._a[_unwrap(index)])

    def __setitem__(self, index, value):
        self._a[_unwrap(index)] = _unwrap(value)

    def __repr__(self):
        _transfer("repr()")
        return f"strict_array({numpy.array2string(self._a, separator=', ')}, dtype={self._a.dtype})"

    __hash__ = None


def _has_mask(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, StrictArray) and p.dtype == numpy.bool_ for p in parts)


def _binary(name: str):
    def op(self, other):
        return _wrap(getattr(self._a, name)(_unwrap(other)))

    op.__name__ = name
    return op


def _inplace(name: str):
    def op(self, other):
        getattr(self._a, name)(_unwrap(other))
        return self

    op.__name__ = name
    return op


for _n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
           "lshift", "rshift"):
    setattr(StrictArray, f"__{_n}__", _binary(f"__{_n}__"))
    setattr(StrictArray, f"__r{_n}__", _binary(f"__r{_n}__"))
    setattr(StrictArray, f"__i{_n}__", _inplace(f"__i{_n}__"))
for _n in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(StrictArray, f"__{_n}__", _binary(f"__{_n}__"))
for _n in ("neg", "pos", "abs", "invert"):
    setattr(StrictArray, f"__{_n}__", (lambda name: lambda self: _wrap(getattr(self._a, name)()))(f"__{_n}__"))


# The names ``xp.<name>`` serves: functions, ufuncs, dtypes and constants that CuPy 13 has too (checked
# against CuPy's API reference). NumPy has many more; a name outside this list raises AttributeError, so
# code that would fail on a GPU with "module 'cupy' has no attribute" fails here first. Add a name only
# after checking that CuPy has it, with the same meaning.
CUPY_NAMES = frozenset("""
    abs absolute add all any arange argmax argmin argsort around array asarray broadcast_arrays
    broadcast_shapes broadcast_to ceil clip concatenate cos cosh cumprod cumsum diag divide dot dtype e
    einsum empty empty_like equal exp expand_dims expm1 eye finfo flatnonzero flip float16 float32
    float64 floor full full_like greater greater_equal iinfo inf int8 int16 int32 int64 isfinite isinf
    isnan less less_equal linspace log log1p log2 logaddexp logical_and logical_not logical_or matmul
    max maximum mean min minimum moveaxis multiply nan ndarray negative newaxis nonzero not_equal ones
    ones_like pad pi power prod reshape round sign sin sinh split sqrt square squeeze
    stack std subtract sum swapaxes take take_along_axis tanh tile transpose tril triu true_divide
    uint8 bool_ where zeros zeros_like
""".split())


_DATA_SHAPED = frozenset({"flatnonzero", "nonzero"})  # their result's shape depends on the data


def _counted(name: str, fn):
    """``fn``, counted as a transfer: on CuPy the host must wait for the GPU to learn the result's shape."""
    def call(*args, **kwargs):
        _transfer(f"xp.{name} (its result's shape depends on the data)")
        return fn(*args, **kwargs)

    return call


class _Namespace:
    """``xp`` of the strict backend: NumPy's functions on device arrays, limited to :data:`CUPY_NAMES`."""

    ndarray = StrictArray

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        if name not in CUPY_NAMES:
            raise AttributeError(f"strict backend: xp.{name} is not among the names this stand-in knows CuPy "
                                 "to have (strict_xp.CUPY_NAMES); check CuPy's API before adding it")
        value = getattr(self._module, name)
        if isinstance(value, type) or not callable(value):
            return value  # dtypes, finfo, constants: as they are
        if name in _DATA_SHAPED:
            return _counted(name, _call(value))
        return _Ufunc(value) if isinstance(value, numpy.ufunc) else _call(value)

    @staticmethod
    def asarray(data, dtype=None):
        """The explicit copy to the device: host data (NumPy arrays too) or a device array."""
        if isinstance(data, StrictArray):
            return data if dtype is None else StrictArray(data._a.astype(dtype, copy=False))
        return StrictArray(numpy.array(_unwrap_host(data), dtype=dtype))

    array = asarray


def _unwrap_host(data):
    if isinstance(data, (list, tuple)):
        return type(data)(_unwrap_host(v) for v in data)
    return data._a if isinstance(data, StrictArray) else data


class _Ufunc:
    """A NumPy ufunc on device arrays, with its methods (``reduce``, ``accumulate``, ...) wrapped too."""

    def __init__(self, ufunc):
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, **kwargs):
        return _call(self._ufunc)(*args, **kwargs)

    def __getattr__(self, name):
        value = getattr(self._ufunc, name)
        return _call(value) if callable(value) else value


def scatter_add(target: StrictArray, index, values) -> None:
    """``target[index] += values`` adding repeated indices (``cupyx.scatter_add``'s role)."""
    numpy.add.at(target._a, _unwrap(index), _unwrap(values))


xp = _Namespace(numpy)
