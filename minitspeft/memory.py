"""Keep freed array memory in the process, so that each training step does not fault it in again.

Every step of a training loop allocates the same activations and gradients
again (a bench-small step holds about 250 MB of them), and NumPy takes its
arrays from the C library's ``malloc``. With glibc's default settings, the
memory a step frees at the top of the heap is handed back to the operating
system (it "trims" it), and arrays above a size threshold get their own
``mmap``; either way the next step touches brand-new pages, and the kernel
zero-fills each 4 KB page on first touch. This project measured a dense
LoRA step taking about 35,000 such page faults and a fifth of its time.

:func:`keep_freed_memory` sets two of glibc's ``mallopt`` parameters:
``M_MMAP_THRESHOLD`` (arrays up to 32 MB come from the heap, where freed
memory is reused) and ``M_TOP_PAD`` (the heap keeps up to 64 MB of free
memory at its top instead of trimming it). Importing ``minitspeft`` calls
it once, unless the environment variable ``MINITSPEFT_KEEP_FREED_MEMORY``
is ``0`` (or ``false``, ``no``, ``off``); the settings are process-wide (they affect every library in the
process, as ``MALLOC_TOP_PAD_`` would). Elsewhere than on glibc it does
nothing. Source: the glibc manual, "Malloc Tunable Parameters".
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

from .checks import check, is_int

__all__ = ["keep_freed_memory", "memory_settings"]

_M_TOP_PAD = -2  # glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX_MB = 32  # glibc refuses more on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)
_settings: dict = {}


def _glibc():
    """glibc's ``mallopt`` as a ctypes function, or None where the C library is not glibc."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


def keep_freed_memory(top_pad_mb: int = 64, mmap_threshold_mb: int = 32) -> bool:
    """Ask glibc to keep freed memory for reuse (see the module docstring); process-wide.

    Args:
        top_pad_mb: free memory (MB) the heap keeps at its top rather than returning it (``M_TOP_PAD``).
        mmap_threshold_mb: arrays smaller than this (MB) come from the heap (``M_MMAP_THRESHOLD``), 1 to 32.

    glibc has no way to read its settings back, so there is no undo: a later call with other sizes, or
    a new process with ``MINITSPEFT_KEEP_FREED_MEMORY=0``, is how to change them.

    Returns:
        True if glibc took both settings; False where the C library is not glibc (nothing changes).

    Raises:
        ValueError: for a pad that is not an integer in ``[0, 2047]`` MB, or a threshold not in ``[1, 32]``.
    """
    for name, value, low, high in (("top_pad_mb", top_pad_mb, 0, 2047),
                                   ("mmap_threshold_mb", mmap_threshold_mb, 1, _MMAP_THRESHOLD_MAX_MB)):
        check(is_int(value) and low <= value <= high, "keep_freed_memory", name, value,
              f"an integer in [{low}, {high}]")
    mallopt = _glibc()
    if mallopt is None:
        return False
    top_pad_mb, mmap_threshold_mb = int(top_pad_mb), int(mmap_threshold_mb)
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold_mb * 2**20)) and bool(mallopt(_M_TOP_PAD, top_pad_mb * 2**20))
    if ok:
        _settings.update(top_pad_mb=top_pad_mb, mmap_threshold_mb=mmap_threshold_mb)
    return ok


def memory_settings() -> dict:
    """What :func:`keep_freed_memory` last set in this process: ``{"top_pad_mb", "mmap_threshold_mb"}``,
    or ``{}`` if it never ran or glibc is not there (the C library's defaults then)."""
    return dict(_settings)


def _on_import() -> None:
    """Called once by ``import minitspeft``: keep freed memory unless ``MINITSPEFT_KEEP_FREED_MEMORY`` is
    ``0``, ``false``, ``no`` or ``off`` (any case)."""
    if os.environ.get("MINITSPEFT_KEEP_FREED_MEMORY", "1").strip().lower() not in ("0", "false", "no", "off"):
        keep_freed_memory()
