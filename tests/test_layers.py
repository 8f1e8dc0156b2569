"""The structure a reader walks: the README's Layout table matches the imports, no cycles, short files."""

from __future__ import annotations

import pathlib
import re

import import_graph as ig

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _layers() -> list:
    """``[(layer, [module or folder names])]`` from the README's Layout table, in order."""
    section = README.read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| ") and "`" in line]
    return [(layer.strip(), re.findall(r"`([\w/]+(?:\.py|/))`", files)) for layer, files in rows]


def _layer_of() -> dict:
    """``{module: layer index}`` for every module of the package but its top-level ``__init__``."""
    table = _layers()
    out = {}
    for name, path in ig.modules().items():
        rel = path.relative_to(ig.ROOT).as_posix()
        for i, (_, entries) in enumerate(table):
            if any(rel == e or (e.endswith("/") and rel.startswith(e)) for e in entries):
                out[name] = i
    return out


def test_the_layout_table_names_every_module_once():
    layer_of = _layer_of()
    unlisted = sorted(set(ig.modules()) - set(layer_of) - {ig.PACKAGE})
    assert not unlisted, f"modules missing from the README's Layout table: {unlisted}"
    entries = [e for _, es in _layers() for e in es]
    assert len(entries) == len(set(entries))
    for e in entries:
        assert (ig.ROOT / e).exists(), f"the Layout table names {e}, which does not exist"


def test_every_import_goes_to_the_same_or_an_earlier_layer():
    layer_of, names = _layer_of(), [n for n, _ in _layers()]
    wrong = [f"{a} ({names[layer_of[a]]}) imports {b} ({names[layer_of[b]]})"
             for a, targets in ig.graph().items() if a in layer_of
             for b in targets if b in layer_of and layer_of[b] > layer_of[a]]
    assert not wrong, wrong


def test_no_import_cycles_no_long_files_no_unexplained_long_functions():
    assert ig.cycles(ig.graph()) == []
    assert ig.long_files() == []
    assert [f for f in ig.long_functions() if not f[2]] == []


def test_the_checker_sees_a_cycle_and_a_layer_breach():
    """The checks above would fail on a broken graph (so they test something)."""
    assert ig.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    layer_of = _layer_of()
    assert layer_of["minitspeft.tensor"] < layer_of["minitspeft.nn.module"] < layer_of["minitspeft.peft.gate"]
