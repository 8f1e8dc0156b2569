"""The README's commands are code: run them (the lessons in ``tutorials/`` are run by test_tutorials.py)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _quick_start_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no Quick start bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_quick_start_is_two_commands():
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert commands[0].endswith("python -m minitspeft.demo") and commands[0].startswith("pip install -e .")
    assert commands[1].endswith("python -m pytest") and '".[test]"' in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest" in ci and '".[test]"' in ci


@pytest.mark.backends("numpy")
def test_readme_demo_command_meets_its_promise(tmp_path):
    """Run the README's demo command as written (fresh cache): dense LoRA >= 0.90, TS-LoRA within
    0.03 of it at density <= 0.8 (the walking skeleton's acceptance numbers). On NumPy, the README's
    backend, alone: the full demo takes a minute, and its code runs on every backend in ``test_demo.py``'s
    quick runs."""
    demo_cmd = _quick_start_commands()[0].split("&&")[-1].split()
    assert demo_cmd[:3] == ["python", "-m", "minitspeft.demo"]
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, *demo_cmd[1:]], capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {m.group(1): (float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^(lora|ts-lora)\s+[\d,]+\s+([\d.]+)\s+([\d.]+)", proc.stdout, re.M)}
    assert set(rows) == {"lora", "ts-lora"}, proc.stdout
    (dense_acc, dense_density), (ts_acc, ts_density) = rows["lora"], rows["ts-lora"]
    assert dense_density == 1.0
    assert dense_acc >= 0.90
    assert ts_acc >= dense_acc - 0.03
    assert ts_density <= 0.8
    assert (tmp_path / "minitspeft").is_dir()  # the backbone went to the user cache


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def _block_params():
    """One case per README example; one that moves a model ``.to("cpu")`` runs on NumPy alone (on CuPy, and
    the strict stand-in, that is refused by design: arrays never move after a model is built)."""
    return [pytest.param(i, marks=pytest.mark.backends("numpy")) if '.to("cpu")' in code else i
            for i, code in enumerate(_python_blocks())]


@pytest.mark.parametrize("index", _block_params())
def test_readme_python_examples_run(index, tmp_path):
    code = _python_blocks()[index]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    if "generate(" in code:
        assert "[[3 4 5 6 0 1 2 3 4]]" in proc.stdout  # the output the README promises


def test_readme_token_selection_command_runs(tmp_path):
    """The study command of the README's Token selection section, as written, in its --quick form."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Token selection", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```\n(python -m minitspeft\.demo .*?)\n```", section).group(1).split()
    plots = tmp_path / "plots"
    args = [a if a != "plots" else str(plots) for a in command[3:]]
    proc = subprocess.run([sys.executable, "-m", "minitspeft.demo", *args, "--quick", "--no-progress",
                           "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import json
    records = json.loads((tmp_path / "r.json").read_text())
    gates = {r["gate"] for r in records if r["method"] == "ts-lora"}
    assert gates == {"paper", "seq-ratio", "top-k", "bounded", "router"}
    assert {r["seed"] for r in records} == {0, 1, 2} and {r["task"] for r in records} == {"digits", "needle"}
    assert (plots / "needle_layers.png").exists() and (plots / "digits_layers.png").exists()
    for name in ("needle_layers.png", "digits_layers.png"):  # the pictures the README links
        assert (ROOT / "docs" / "images" / name).stat().st_size > 5000


def test_the_readme_lists_every_gate_config_field():
    import dataclasses

    from minitspeft.peft import GateConfig

    listed = re.search(r"`GateConfig\((.*?)\)`, every field", (ROOT / "README.md").read_text(), re.S).group(1)
    names = {re.split(r"[=\s]", part.strip())[0] for part in listed.replace("\n", " ").split(",")}
    assert names == {f.name for f in dataclasses.fields(GateConfig)}


@pytest.mark.backends("numpy")
def test_readme_gpu_commands_are_ones_the_tools_accept():
    """They need a GPU to run; here each is parsed by its tool's own argument parser."""
    from minitspeft import demo
    from minitspeft.bench import __main__ as bench

    section = (ROOT / "README.md").read_text().split("## GPU (CuPy)", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("#")[0].split() for block in re.findall(r"```\n(.*?)```", section, re.S)
             for line in block.splitlines() if line.startswith("python -m minitspeft.")]
    assert len(lines) == 2
    parsers = {"minitspeft.demo": demo.build_parser, "minitspeft.bench": bench.build_parser}
    for words in lines:
        args = parsers[words[2]]().parse_args(words[3:])
        assert args.backend == "cupy"
