"""Safe, atomic array files: one ``.npz`` per unit (arrays and their record together), never pickled.

A unit that must match (weights and the record of how they were made) is
saved as **one file**: the arrays and, under the reserved key ``__meta__``,
the record as UTF-8 JSON bytes. The write goes to a temporary file in the
target folder and is renamed into place, so after a crash the file is the
complete old unit or the complete new one, never a mix. A readable copy of
the record is written next to it (``path + ".json"``) *after* the unit; it
is for people, and loading never reads it. Saved files get the mode the
umask gives (as ``open()`` would), not the temporary file's 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from .backend import to_numpy

META_KEY = "__meta__"
_ZIP_MAGIC = b"PK\x03\x04"


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _check_path(op: str, path) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{op}: path must be a str or os.PathLike, got {type(path).__name__}")


def _atomic_write(path: str, write) -> None:
    _check_path("save", path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _host_arrays(op: str, arrays: dict) -> dict:
    host = {}
    for k, v in arrays.items():
        if not isinstance(k, str) or not k or k == META_KEY:
            raise ValueError(f"{op}: array name {k!r} is empty, not a string, or the reserved {META_KEY!r}")
        host[k] = to_numpy(v)
        if host[k].dtype == object:
            raise ValueError(f"{op}: array {k!r} holds Python objects; only numeric arrays are saved")
    return host


def save_npz(path: str, arrays: dict, meta: dict | None = None) -> None:
    """Write ``arrays`` (name -> NumPy or CuPy array) and ``meta`` (JSON-able) to ``path`` as one
    uncompressed ``.npz``, atomically.

    Raises:
        OSError: if the folder is missing or not writable (nothing is left behind).
        ValueError: for an array of Python objects (it would need pickle), a bad or reserved
            name, or a ``meta`` that JSON cannot encode. Nothing is written then.
    """
    host = _host_arrays("save_npz", arrays)
    if meta is not None:
        try:
            text = json.dumps(meta, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"save_npz: the record for {path!r} is not JSON-able: {exc}") from None
        host[META_KEY] = np.frombuffer(text.encode(), dtype=np.uint8)
    _atomic_write(path, lambda fh: np.savez(fh, **host))


def writable_dir_problem(folder: str, create: bool) -> str | None:
    """Why files cannot be created in ``folder`` (made first if ``create``), or None if they can.

    For command lines, to refuse an output path before any work is done."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        return f"{folder!r} is a file, not a folder"
    if not create and not os.path.isdir(folder):
        return f"folder {folder!r} does not exist"
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        return f"cannot create files in {folder!r} ({exc.strerror or exc})"
    return None


def output_file_problem(path: str) -> str | None:
    """Why ``path`` cannot be written as a new file (empty, a folder, or in a folder that is missing or
    read-only), or None if it can."""
    if not path.strip():
        return "the path is empty"
    if os.path.isdir(path):
        return f"{path!r} is a folder, not a file path"
    return writable_dir_problem(os.path.dirname(os.path.abspath(path)), create=False)


def save_json(path: str, obj) -> None:
    """Write ``obj`` as indented JSON to ``path``, atomically."""
    _atomic_write(path, lambda fh: fh.write(json.dumps(obj, indent=2, sort_keys=True).encode()))


def save_arrays(path: str, arrays: dict, meta: dict | None = None) -> None:
    """Write one unit: ``arrays`` and ``meta`` into ``path`` (``.npz``), then a readable copy of ``meta``
    to ``path + ".json"``.

    The unit is the ``.npz`` alone (see the module docstring), so an
    interruption leaves the old unit or the new one.

    Raises:
        OSError, ValueError: as :func:`save_npz`.
    """
    save_npz(path, arrays, meta)
    if meta is not None:
        save_json(path + ".json", meta)


def load_arrays(path: str) -> tuple:
    """Read one unit written by :func:`save_arrays` or :func:`save_npz`: ``(arrays, meta)``, with ``meta``
    None when the file holds no record.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not an ``.npz`` archive (an ``.npy`` file, for example), is
            damaged (truncated, corrupted), holds pickled objects, or its record is not valid JSON.
    """
    _check_path("load_arrays", path)
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != _ZIP_MAGIC:
                raise ValueError("not an .npz archive")
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = None
        if META_KEY in arrays:
            raw = arrays.pop(META_KEY)
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise ValueError(f"the record {META_KEY!r} is not UTF-8 bytes")
            meta = json.loads(raw.tobytes().decode())
    except FileNotFoundError:
        raise
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ValueError(f"load_arrays: {path!r} is unreadable or damaged ({type(exc).__name__}: {exc})") from exc
    return arrays, meta
