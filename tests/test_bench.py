"""The benchmark runs end to end in its tiny configuration (a smoke test: no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

import minitspeft as mt
from minitspeft.bench import config
from minitspeft.bench.__main__ import TWINS, add_ratios, build_parser, cases, report


def test_bench_tiny_writes_its_tables_and_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "minitspeft.bench", "--config", "tiny", "--steps", "2",
                           "--warmup", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "median ms/step" in proc.stdout
    data = json.loads(out.read_text())
    assert data["config"] == config.CONFIGS["tiny"].to_dict()
    steps = [r for r in data["results"] if r["table"] == "step"]
    twins = [t for t in TWINS if importlib.util.find_spec(t) is not None]  # autograd is a test extra, torch not
    impls = ["minitspeft", *twins]
    assert [(r["impl"], r["variant"]) for r in steps] == [(i, v) for i in impls for v in config.VARIANTS]
    assert all(r["x_minitspeft"] > 0 for r in steps) and ("x minitspeft" in proc.stdout) == bool(twins)
    gated = {r["impl"]: r["density"] for r in steps if r["variant"] == "ts-lora"}
    assert all(d == gated["minitspeft"] for d in gated.values())  # the twins' gates open as minitspeft's
    assert all(r["median_ms"] > 0 and r["peak_mb"] >= 0 and r["minor_faults_per_step"] >= 0 and len(r["all_ms"]) == 2
               for r in data["results"])
    ours = [r for r in data["results"] if r["impl"] == "minitspeft"]
    assert {r["backend"] for r in ours} == {mt.get_backend()}  # the one the test runs on (MINITSPEFT_BACKEND)
    assert all((r["device_mb"] is None) == (mt.get_backend() != "cupy") for r in ours)
    assert f"backend {mt.get_backend()}," in proc.stdout
    for forward_only in (False, True):  # the forced densities take effect, and hold through the timed steps
        forced = [r["density"] for r in data["results"] if r["table"] == "density" and r["forward_only"] == forward_only]
        assert forced[0] == 1.0 and forced[1] == pytest.approx(0.5, abs=0.1) and forced[2] == pytest.approx(0.2, abs=0.1)
    assert data["update_flop_share"] == config.update_flop_share(config.CONFIGS["tiny"])
    assert "upper bound: LoRA's B u" in proc.stdout


@pytest.mark.parametrize("name", sorted(config.CONFIGS))
def test_the_update_share_counts_the_models_own_products(name):
    """The FLOP formula, checked against the layers of the model the benchmark builds: 2 in*out per token
    for every Linear (base, A and B) and 4 T C per block for attention's two batched products."""
    from minitspeft.bench.steps import build
    from minitspeft.nn import Linear

    cfg = config.CONFIGS[name]
    model, _ = build(cfg, "lora")
    linears = {n: m for n, m in model.base_model.named_modules() if isinstance(m, Linear) and n != "head"}
    total = sum(2 * m.in_features * m.out_features for m in linears.values())
    bu = sum(2 * m.in_features * m.out_features for n, m in linears.items() if n.endswith("lora_B"))
    forward = total + cfg.n_layer * 4 * cfg.seq_len * cfg.n_embd
    assert config.update_flop_share(cfg)["forward"] == pytest.approx(bu / forward, rel=1e-12)
    assert 0 < config.update_flop_share(cfg)["step"] < config.update_flop_share(cfg)["forward"]


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--json", "{tmp}/missing/out.json"], "--json: folder '{tmp}/missing' does not exist"),
    (["--json", "{tmp}"], "--json: '{tmp}' is a folder, not a file path"),
    (["--json", ""], "--json: the path is empty"),
])
def test_bench_refuses_bad_arguments_before_it_runs(tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, "-m", "minitspeft.bench", "--config", "tiny", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message.format(tmp=tmp_path) in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_bench_refuses_a_backend_that_cannot_load():
    proc = subprocess.run([sys.executable, "-m", "minitspeft.bench", "--config", "tiny", "--backend", "cupy"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--backend: set_backend('cupy'): CuPy is not installed" in proc.stderr


def test_no_twins_leaves_only_the_minitspeft_steps():
    run = cases(build_parser().parse_args(["--config", "tiny", "--no-twins", "--no-densities"]))
    assert [(c["impl"], c["variant"]) for c in run] == [("minitspeft", v) for v in config.VARIANTS]


def test_the_ratios_divide_by_the_same_variant():
    rows = [{"table": "step", "impl": i, "variant": v, "median_ms": ms, "peak_mb": 1.0, "minor_faults_per_step": 0}
            for i, v, ms in [("minitspeft", "lora", 6.0), ("torch", "lora", 2.0), ("autograd", "lora", 12.0),
                             ("minitspeft", "ts-lora", 8.0)]]
    add_ratios(rows)
    assert [(r["x_torch"], r["x_minitspeft"]) for r in rows] == [(3.0, 1.0), (1.0, pytest.approx(1 / 3)),
                                                                 (6.0, 2.0), (None, 1.0)]
    lines = report(rows).splitlines()  # header, rule, then one line per row
    assert lines[0].split()[-4:] == ["x", "torch", "x", "minitspeft"]
    assert lines[2].split()[-2:] == ["3.00", "1.00"] and lines[5].split()[-2:] == ["-", "1.00"]


@pytest.mark.backends("numpy")
def test_the_prepared_gpu_check_knows_when_there_is_no_gpu_and_its_bench_options_parse(tmp_path):
    import os
    import pathlib

    script = pathlib.Path(__file__).resolve().parent.parent / ".ci" / "gpu-check"
    text = script.read_text()
    for config_name in ("bench-small", "large"):
        assert config_name in config.CONFIGS and config_name in text
    build_parser().parse_args(["--backend", "numpy", "--config", "large", "--no-twins", "--no-densities",
                               "--steps", "10", "--json", str(tmp_path / "x.json")])
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed: the script would run the GPU checks")
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OUT": str(tmp_path / "out")})
    assert proc.returncode == 3 and "no CuPy with a GPU here" in proc.stdout
