"""glibc is told to keep freed array memory when minitspeft is imported, unless the user says no."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from minitspeft import memory

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _settings_in_a_fresh_process(**env) -> str:
    code = "import minitspeft, minitspeft.memory as m; print(sorted(m.memory_settings().items()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("off", ["0", " OFF ", "false", "No"])
def test_import_keeps_freed_memory_on_glibc_and_the_environment_can_refuse(off):
    assert _settings_in_a_fresh_process(MINITSPEFT_KEEP_FREED_MEMORY=off) == "[]"


def test_import_keeps_freed_memory_by_default():
    on = _settings_in_a_fresh_process()
    assert on == ("[('mmap_threshold_mb', 32), ('top_pad_mb', 64)]" if GLIBC else "[]")


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_keep_freed_memory_records_what_glibc_took():
    assert memory.keep_freed_memory(top_pad_mb=np.int64(32), mmap_threshold_mb=16) is True  # NumPy ints too
    assert memory.memory_settings() == {"top_pad_mb": 32, "mmap_threshold_mb": 16}
    assert memory.keep_freed_memory() is True  # back to the import's settings
    assert memory.memory_settings() == {"top_pad_mb": 64, "mmap_threshold_mb": 32}


@pytest.mark.parametrize("kwargs", [{"top_pad_mb": -1}, {"top_pad_mb": 2048}, {"mmap_threshold_mb": 33},
                                    {"mmap_threshold_mb": 0}, {"top_pad_mb": 1.5}, {"mmap_threshold_mb": True}])
def test_keep_freed_memory_refuses_bad_sizes_before_changing_anything(kwargs):
    before = memory.memory_settings()
    with pytest.raises(ValueError, match="keep_freed_memory: (top_pad_mb|mmap_threshold_mb) must be"):
        memory.keep_freed_memory(**kwargs)
    assert memory.memory_settings() == before
