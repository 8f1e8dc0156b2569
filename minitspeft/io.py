"""Safe, atomic array files: ``.npz`` without pickle, plus a JSON side file.

A write goes to a temporary file in the target folder and is renamed into
place, so a crash never leaves half a file; loading never unpickles.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from .backend import to_numpy


def _atomic_write(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_npz(path: str, arrays: dict) -> None:
    """Write ``arrays`` (name -> NumPy or CuPy array) to ``path`` as an uncompressed ``.npz``, atomically.

    Raises:
        OSError: if the folder is missing or not writable (nothing is left behind).
        ValueError: for an array of Python objects (it would need pickle).
    """
    host = {k: to_numpy(v) for k, v in arrays.items()}
    for k, v in host.items():
        if v.dtype == object:
            raise ValueError(f"save_npz: array {k!r} holds Python objects; only numeric arrays are saved")
    _atomic_write(path, lambda fh: np.savez(fh, **host))


def save_json(path: str, obj) -> None:
    """Write ``obj`` as indented JSON to ``path``, atomically."""
    _atomic_write(path, lambda fh: fh.write(json.dumps(obj, indent=2, sort_keys=True).encode()))


def save_arrays(path: str, arrays: dict, meta: dict | None = None) -> None:
    """Write ``arrays`` to ``path`` (``.npz``) and ``meta`` to ``path + ".json"``, each atomically.

    The JSON goes last, so its presence means the arrays are complete.

    Raises:
        OSError: if the folder is missing or not writable (nothing is left behind).
    """
    save_npz(path, arrays)
    if meta is not None:
        save_json(path + ".json", meta)


def load_arrays(path: str) -> tuple:
    """Read what :func:`save_arrays` wrote: ``(arrays, meta)``, ``meta`` None when there is no JSON file.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is damaged (truncated, corrupted), is not an
            ``.npz``, holds pickled objects, or its JSON side file is not valid JSON.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("not an .npz archive")
            arrays = {k: z[k] for k in z.files}
        meta = None
        if os.path.exists(path + ".json"):
            with open(path + ".json") as fh:
                meta = json.load(fh)
    except FileNotFoundError:
        raise
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ValueError(f"load_arrays: {path!r} is unreadable or damaged ({type(exc).__name__}: {exc})") from exc
    return arrays, meta
