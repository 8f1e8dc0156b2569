"""Saved units are all-new or all-old: atomic one-file writes, interrupted at every point; modes; bad files."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

import minitspeft.io as io
from minitspeft.io import META_KEY, load_arrays, save_arrays, save_npz


class Boom(RuntimeError):
    pass


def _failing_at(monkeypatch, k):
    """Make the k-th write step of the io module fail: steps are each temporary-file write and each rename."""
    calls = {"n": 0}
    real_replace, real_savez = os.replace, np.savez

    def step():
        calls["n"] += 1
        if calls["n"] == k:
            raise Boom(f"interrupted at step {k}")

    def replace(src, dst):
        step()
        return real_replace(src, dst)

    def savez(fh, **arrays):
        step()
        real_savez(fh, **dict(list(arrays.items())[: len(arrays) // 2]))  # half a file, then the crash
        step()
        return real_savez(fh, **arrays)

    monkeypatch.setattr(io.os, "replace", replace)
    monkeypatch.setattr(io.np, "savez", savez)
    return calls


def _unit(version: int) -> tuple:
    arrays = {"w": np.full((3, 2), float(version)), "b": np.arange(4) + version}
    return arrays, {"step": version, "note": f"unit {version}"}


@pytest.mark.parametrize("k", range(1, 6))
def test_an_interrupted_save_leaves_the_old_unit_or_the_new_one(tmp_path, monkeypatch, k):
    path = str(tmp_path / "unit.npz")
    save_arrays(path, *_unit(1))
    calls = _failing_at(monkeypatch, k)
    try:
        save_arrays(path, *_unit(2))
        finished = True
    except Boom:
        finished = False
    monkeypatch.undo()
    assert calls["n"] >= 1
    arrays, meta = load_arrays(path)
    version = meta["step"]
    assert version in (1, 2) and (version == 2) == (finished or k > 3)
    want_arrays, want_meta = _unit(version)
    assert meta == want_meta and set(arrays) == set(want_arrays)
    for name, value in want_arrays.items():
        np.testing.assert_array_equal(arrays[name], value)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]  # no temporary file left


def test_the_record_lives_inside_the_npz_and_the_json_copy_is_never_read(tmp_path):
    path = str(tmp_path / "unit.npz")
    save_arrays(path, *_unit(3))
    assert json.loads(open(path + ".json").read()) == _unit(3)[1]
    with open(path + ".json", "w") as fh:
        fh.write("{damaged")
    arrays, meta = load_arrays(path)
    assert meta == _unit(3)[1] and META_KEY not in arrays


def test_saved_files_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        save_arrays(str(tmp_path / "u.npz"), *_unit(1))
    finally:
        os.umask(old)
    for name in ("u.npz", "u.npz.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644


@pytest.mark.parametrize("bad, needle", [
    ({"": np.zeros(1)}, "empty"), ({META_KEY: np.zeros(1)}, "reserved"),
    ({"o": np.array([object()], dtype=object)}, "Python objects"),
])
def test_bad_names_and_object_arrays_are_refused_before_anything_is_written(tmp_path, bad, needle):
    with pytest.raises(ValueError, match=needle):
        save_npz(str(tmp_path / "x.npz"), bad)
    with pytest.raises(ValueError, match="JSON"):
        save_npz(str(tmp_path / "x.npz"), {"a": np.zeros(1)}, {"v": float("nan")})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("content", [b"", b"PK", b"not a zip file at all"])
def test_files_that_are_not_npz_archives_are_a_clear_error(tmp_path, content):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="damaged"):
        load_arrays(str(path))
    np.save(str(tmp_path / "y.npy"), np.zeros(3))
    with pytest.raises(ValueError, match="not an .npz archive"):
        load_arrays(str(tmp_path / "y.npy"))
    with pytest.raises(FileNotFoundError):
        load_arrays(str(tmp_path / "missing.npz"))
