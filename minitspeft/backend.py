"""The one place that chooses the array library: NumPy on the CPU, CuPy on a GPU.

Every other module reaches array math through ``backend.xp`` (looked up at call
time, so :func:`set_backend` takes effect everywhere at once). Random numbers
for initialisation and data shuffling are drawn on the host with NumPy and then
moved to the backend, so that a seed gives the same model on every backend.

The environment variable ``MINITSPEFT_BACKEND`` (``"numpy"``, ``"cupy"`` or ``"strict"``)
selects the backend at import time; the default is NumPy. Any other value makes
``import minitspeft`` fail at once, with an error naming the variable and the
valid names (rather than running on a backend nobody asked for).
"""

from __future__ import annotations

import contextlib
import os

import numpy

from .checks import is_int

BACKENDS = ("numpy", "cupy", "strict")

xp = numpy
_name = "numpy"
_default_dtype = numpy.dtype(numpy.float32)
_host_rng = numpy.random.default_rng(0)


def set_backend(name: str) -> None:
    """Select the array library used for all tensor data.

    Args:
        name: ``"numpy"``, ``"cupy"``, or ``"strict"``: NumPy underneath, but with CuPy's refusals of
            every implicit trip to the host (:mod:`minitspeft.strict_xp`), to check the CuPy path on
            a machine without a GPU.

    Raises:
        ValueError: for any other name.
        ImportError: if ``"cupy"`` is asked for and CuPy cannot be imported.

    Tensors created before the switch keep their old arrays; create models
    after choosing the backend.
    """
    global xp, _name
    if name == "numpy":
        xp, _name = numpy, "numpy"
    elif name == "cupy":
        try:
            import cupy  # noqa: PLC0415 - optional dependency
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise ImportError(
                "set_backend('cupy'): CuPy is not installed; install the 'gpu' extra: "
                'pip install "minitspeft[gpu]" (or pip install -e ".[gpu]" in a clone)'
            ) from exc
        xp, _name = cupy, "cupy"
    elif name == "strict":
        from . import strict_xp  # noqa: PLC0415 - only when asked for

        xp, _name = strict_xp.xp, "strict"
    else:
        raise ValueError(f"set_backend: unknown backend {name!r}; expected one of {', '.join(map(repr, BACKENDS))}")


def gpu_available() -> bool:
    """Whether CuPy imports and sees at least one GPU (the role of ``torch.cuda.is_available``); never raises."""
    try:
        import cupy  # noqa: PLC0415 - optional dependency

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - not installed, no driver, no device: not available
        return False


def get_backend() -> str:
    """Return the name of the active backend, ``"numpy"``, ``"cupy"`` or ``"strict"``."""
    return _name


def backend_of(array) -> str | None:
    """The name of the backend whose array ``array`` is (``"numpy"``, ``"cupy"`` or ``"strict"``), or None
    for anything else (a list, a scalar)."""
    if isinstance(array, numpy.ndarray):
        return "numpy"
    module = type(array).__module__
    if module.startswith("cupy"):
        return "cupy"
    return "strict" if module == "minitspeft.strict_xp" else None


@contextlib.contextmanager
def using(name: str | None):
    """Inside the block the backend is ``name`` (None: leave it); the previous one is restored after.

    Raises:
        ValueError, ImportError: as :func:`set_backend`, before anything changes.
    """
    before = _name
    if name is not None:
        set_backend(name)
    try:
        yield
    finally:
        set_backend(before)


def synchronize() -> None:
    """Wait until the device has finished the work queued so far (CuPy runs kernels asynchronously, so a
    timer must stop after this); a no-op on NumPy and the strict stand-in, which compute at once."""
    if _name == "cupy":  # pragma: no cover - needs a GPU
        xp.cuda.get_current_stream().synchronize()


def device_memory_bytes() -> int | None:
    """Bytes CuPy's default memory pool holds on the GPU now (its high-water mark, as the pool keeps
    what it got), or None on a host backend."""
    if _name != "cupy":
        return None
    return int(xp.get_default_memory_pool().total_bytes())  # pragma: no cover - needs a GPU


def get_default_device() -> str:
    """PyTorch's name for where tensor data lives now: ``"cpu"`` on the NumPy backend, ``"cuda"`` on CuPy
    and on the strict stand-in (which plays CuPy's part, so code written for a GPU runs on it unchanged).

    As ``torch.get_default_device``, but a string: ``model.to(mt.get_default_device())`` is a no-op on
    every backend, while ``to("cuda")`` on NumPy and ``to("cpu")`` on a device are refused (arrays are
    never moved after a model is built).
    """
    return "cpu" if _name == "numpy" else "cuda"


def to_numpy(array) -> numpy.ndarray:
    """Return ``array`` (a NumPy, CuPy or strict array, or a scalar) as a NumPy array on the host."""
    if backend_of(array) in ("cupy", "strict"):  # a device array: the explicit copy
        return array.get()
    return numpy.asarray(array)


def is_host_array(array) -> bool:
    """Whether ``array`` is a NumPy array (on the host), rather than a CuPy or strict device array."""
    return isinstance(array, numpy.ndarray)


def array_module(array):
    """The array library that holds ``array``: NumPy for host arrays (and scalars), else the active one
    (CuPy's ``cupy.get_array_module`` idiom), so array-level helpers compute where their input lives."""
    return numpy if isinstance(array, (numpy.ndarray, numpy.generic, float, int)) else xp


def extent(array) -> tuple:
    """``(min, max)`` of a non-empty array as Python numbers, read with one copy to the host (one
    synchronisation on a GPU, not two)."""
    mod = array_module(array)
    return tuple(to_numpy(mod.stack([array.min(), array.max()])).tolist())


def asarray(data, dtype=None):
    """Move host data (lists, NumPy arrays, scalars) to the active backend.

    Args:
        data: anything ``numpy.asarray`` accepts, or an array of any backend (one of another backend,
            e.g. a state dict saved on a GPU loaded on NumPy, comes over through the host, explicitly).
        dtype: optional target dtype; ``None`` keeps the data's own dtype.
    """
    if backend_of(data) not in (None, "numpy", _name):
        data = data.get()
    return xp.asarray(data, dtype=dtype)


def scatter_add(target, index, values) -> None:
    """``target[index] += values`` in place, adding repeated indices up.

    Plain ``target[index] += values`` keeps only one of several writes to the
    same element; this is the unbuffered form both backends offer.
    """
    if _name == "cupy":  # pragma: no cover - needs a GPU
        import cupyx  # noqa: PLC0415

        cupyx.scatter_add(target, index, values)
    elif _name == "strict":
        from . import strict_xp  # noqa: PLC0415

        strict_xp.scatter_add(target, index, values)
    else:
        numpy.add.at(target, index, values)


def blocks(n: int, itemsize: int, block_bytes: int = 256 * 1024) -> list:
    """Slices cutting ``range(n)`` into pieces of about ``block_bytes`` (one slice on CuPy).

    A chain of element-wise steps over a 4 MB array reads and writes it from
    main memory at every step; run block by block, each block stays in the
    CPU's cache through the whole chain (measured here: GELU's forward 1.5x
    faster). The results are identical, since each element is computed alone.
    """
    if xp is not numpy:
        return [slice(0, n)]
    step = max(1, block_bytes // max(int(itemsize), 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def quiet_overflow():
    """A context manager that silences the array library's overflow, underflow-to-zero-division and invalid
    warnings, for code that detects such values itself and recomputes them (NumPy warns; CuPy never does)."""
    return contextlib.nullcontext() if _name == "cupy" \
        else numpy.errstate(over="ignore", invalid="ignore", divide="ignore")  # strict runs NumPy underneath


def blas_threads(n: int | None = 1):
    """Context manager: the host BLAS library uses ``n`` threads inside the block (None: leave it as is).

    A matrix product's summation order, and so its last bits, can depend on
    how many threads share it, and training amplifies those bits; ``fit`` and
    ``predict`` therefore fix the count (1 by default), so a run gives the
    same numbers whatever ``OMP_NUM_THREADS`` says. Uses threadpoolctl.
    One thread per process is also what this project measured as fastest
    under CPU contention.

    Raises:
        ValueError: for an ``n`` that is not None or an integer >= 1 (Python or NumPy; not a bool).
    """
    if n is None:
        return contextlib.nullcontext()
    if not is_int(n) or n < 1:
        raise ValueError(f"blas_threads: n must be None or an integer >= 1, got {n!r}")
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 - imported when first used

    return threadpool_limits(limits=int(n), user_api="blas")


def get_default_dtype() -> numpy.dtype:
    """Return the floating dtype new parameters and float data get (float32 unless changed)."""
    return _default_dtype


def set_default_dtype(dtype) -> None:
    """Set the default floating dtype; only float32 and float64 are accepted.

    Raises:
        ValueError: for any other dtype.
    """
    global _default_dtype
    dt = numpy.dtype(dtype)
    if dt not in (numpy.float32, numpy.float64):
        raise ValueError(f"set_default_dtype: expected float32 or float64, got {dt}")
    _default_dtype = dt


def manual_seed(seed: int) -> None:
    """Seed the host generator used for parameter initialisation and dropout masks (as ``torch.manual_seed``).

    Raises:
        ValueError: unless ``seed`` is an integer >= 0 (Python or NumPy; a bool, a float such as 3.7 or a
            string is refused rather than silently truncated or parsed).
    """
    global _host_rng
    if not is_int(seed) or seed < 0:
        raise ValueError(f"manual_seed: seed must be an integer >= 0, got {seed!r}")
    _host_rng = numpy.random.default_rng(int(seed))


def get_rng_state() -> dict:
    """The host generator's state as a JSON-able dict (for checkpoints)."""
    return _host_rng.bit_generator.state


def set_rng_state(state: dict) -> None:
    """Restore a state from :func:`get_rng_state`.

    Raises:
        ValueError: if the state is not a PCG64 state.
    """
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        raise ValueError("set_rng_state: expected a PCG64 state dict from get_rng_state()")
    rng = numpy.random.default_rng()
    rng.bit_generator.state = state
    global _host_rng
    _host_rng = rng


def host_rng() -> numpy.random.Generator:
    """Return the host NumPy generator seeded by :func:`manual_seed`."""
    return _host_rng


def _backend_from_environment() -> None:
    """Apply ``MINITSPEFT_BACKEND`` (unset or empty: NumPy).

    Raises:
        ValueError: naming the variable, its value and the valid names, for any other value.
        ImportError: for ``cupy`` when CuPy cannot be imported.
    """
    name = os.environ.get("MINITSPEFT_BACKEND")
    if not name:
        return
    if name not in BACKENDS:
        raise ValueError(f"MINITSPEFT_BACKEND={name!r} is not a backend; valid names: "
                         f"{', '.join(BACKENDS)} (unset it for NumPy)")
    try:
        set_backend(name)
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ImportError(f"MINITSPEFT_BACKEND={name!r}: {exc}") from exc


_backend_from_environment()
