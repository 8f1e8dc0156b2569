"""Timing and memory of one benchmark case, each in a fresh process so that peak memory is its own."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from .. import backend


def _rss_mb() -> float:
    """The current resident memory of this process in MB (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def time_case(run, warmup: int, steps: int) -> dict:
    """``{"median_ms", "all_ms", "peak_mb", "minor_faults_per_step"}`` for ``steps`` calls of ``run`` after
    ``warmup`` calls (minor page faults show memory handed back to the system and faulted in again).

    ``peak_mb`` is the growth of the process's peak resident memory over its
    resident memory before the first call (the model already built). On CuPy
    each timed call ends when the GPU has finished it (:func:`~minitspeft.backend.synchronize`),
    and ``device_mb`` is what CuPy's memory pool holds on the GPU after the
    calls (None on the host backends).
    """
    baseline = _rss_mb()
    for _ in range(warmup):
        run()
    backend.synchronize()
    times, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        start = time.perf_counter()
        run()
        backend.synchronize()  # kernels run asynchronously on a GPU: stop the clock when they are done
        times.append((time.perf_counter() - start) * 1e3)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    device = backend.device_memory_bytes()
    return {"median_ms": statistics.median(times), "all_ms": times,
            "peak_mb": max(0.0, usage.ru_maxrss / 1024 - baseline),  # ru_maxrss is in KB on Linux
            "minor_faults_per_step": (usage.ru_minflt - faults) / max(steps, 1),
            "device_mb": None if device is None else device / 2**20}


def worker(case: dict) -> dict:
    """Build and time one case (called in the child process): ``case`` holds ``impl`` (``"minitspeft"``,
    ``"torch"`` or ``"autograd"``: the twins of :mod:`~minitspeft.bench.torch_twin` and
    :mod:`~minitspeft.bench.autograd_twin`, imported only here), ``variant``, ``config`` (a dict),
    ``density``, ``forward_only``, ``warmup``, ``steps``, ``threads``.

    Raises:
        ValueError: for an unknown ``impl``, or a twin asked for a forced density or a forward alone.
    """
    from .config import BenchConfig  # noqa: PLC0415
    from .steps import density as measured_density  # noqa: PLC0415
    from .steps import minitspeft_step  # noqa: PLC0415

    config, impl = BenchConfig(**case["config"]), case["impl"]
    if impl not in ("minitspeft", "torch", "autograd"):
        raise ValueError(f"bench: unknown impl {impl!r}")
    if impl != "minitspeft" and (case["density"] is not None or case["forward_only"]):
        raise ValueError(f"bench: the {impl} twin times the training step only")
    with backend.blas_threads(case["threads"]):
        if impl == "minitspeft":
            run, model = minitspeft_step(config, case["variant"], case["density"], case["forward_only"])
            result = time_case(run, case["warmup"], case["steps"])
            result["density"] = measured_density(model)
        else:
            run, twin = _twin_step(impl, config, case["variant"], case["threads"])
            result = time_case(run, case["warmup"], case["steps"])
            result["density"] = twin.density()
    return result


def _twin_step(impl: str, config, variant: str, threads: int) -> tuple:
    """``(run, twin)`` of the PyTorch (``torch.set_num_threads(threads)``) or HIPS autograd twin."""
    if impl == "torch":
        import torch  # noqa: PLC0415

        from . import torch_twin as twin_module  # noqa: PLC0415
        torch.set_num_threads(threads)
    else:
        from . import autograd_twin as twin_module  # noqa: PLC0415
    return twin_module.step(config, variant)


def run_in_child(case: dict, timeout: float = 1800) -> dict:
    """Run :func:`worker` for ``case`` in a fresh Python process; return its result dict.

    Raises:
        RuntimeError: if the child fails (its last error line is included).
    """
    proc = subprocess.run([sys.executable, "-m", "minitspeft.bench", "--worker", json.dumps(case)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bench: the {case['impl']} {case['variant']} case failed: "
                           f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
