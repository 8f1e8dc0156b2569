"""The lessons in ``tutorials/`` are notebooks in percent format and are code: parse each, run each.

Each lesson asserts what it teaches, so running it (quick mode, ``MINITSPEFT_QUICK=1``) checks its claims.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))


def _number(path: pathlib.Path) -> int:
    return int(path.name[:2])


def test_the_lessons_are_numbered_in_order():
    assert [_number(p) for p in LESSONS] == list(range(1, len(LESSONS) + 1))
    assert len(LESSONS) >= 7


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_is_a_percent_notebook(path):
    jupytext = pytest.importorskip("jupytext")
    text = path.read_text()
    assert text.startswith("# %% [markdown]\n"), "a lesson opens with a markdown cell"
    notebook = jupytext.reads(text, fmt="py:percent")
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds.count("markdown") >= 4 and kinds.count("code") >= 4, kinds
    title = notebook.cells[0].source.splitlines()[0]
    assert re.fullmatch(rf"# Lesson {_number(path)}: .+", title), title
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.source.lstrip().startswith(('"""', "'''")), "prose goes in markdown cells"
            assert "__file__" not in cell.source, "a notebook has no __file__"
    assert "parse_known_args" in text or "--out" not in text, "argparse must ignore a kernel's own arguments"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_cites_only_files_in_the_repository(path):
    for cited in re.findall(r"[\w./-]*\w\.(?:md|py|npz)\b", path.read_text()):
        assert (ROOT / cited).exists() or (ROOT / "tutorials" / cited).exists(), f"{path.name} cites {cited}"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_runs_quick(path, tmp_path):
    """Run the lesson as a reader would, in quick mode, with a fresh cache; its asserts are its checks.
    Where matplotlib is installed, every picture it draws must be saved under ``--out``."""
    out = tmp_path / "pictures"
    env = dict(os.environ, MINITSPEFT_QUICK="1", XDG_CACHE_HOME=str(tmp_path / "cache"), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(path), "--out", str(out)], capture_output=True, text=True,
                          timeout=180, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    try:
        import matplotlib  # noqa: F401, PLC0415 - optional (the test extra installs it)
    except ImportError:
        return
    for name in re.findall(r'picture\(fig, "([^"]+)"\)', path.read_text()):
        assert (out / name).stat().st_size > 1000, f"{path.name} did not save {name}"


def test_the_readme_lists_the_lessons_in_order():
    """Once the README has its Lessons section, it names every lesson, in order."""
    text = (ROOT / "README.md").read_text()
    if "\n## Lessons" not in text:
        pytest.skip("the README has no Lessons section yet")
    section = text.split("\n## Lessons", 1)[1].split("\n## ", 1)[0]
    positions = [section.find(p.name) for p in LESSONS]
    assert -1 not in positions, [p.name for p, i in zip(LESSONS, positions) if i < 0]
    assert positions == sorted(positions)
