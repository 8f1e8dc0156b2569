"""The benchmark runs end to end in its tiny configuration (a smoke test: no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from minitspeft.bench import config


def test_bench_tiny_writes_its_tables_and_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "minitspeft.bench", "--config", "tiny", "--steps", "2",
                           "--warmup", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "median ms/step" in proc.stdout
    data = json.loads(out.read_text())
    assert data["config"] == config.CONFIGS["tiny"].to_dict()
    steps = [r for r in data["results"] if r["table"] == "step"]
    assert [(r["impl"], r["variant"]) for r in steps] == [("minitspeft", "lora"), ("minitspeft", "ts-lora")]
    assert all(r["median_ms"] > 0 and r["peak_mb"] >= 0 and r["minor_faults_per_step"] >= 0 and len(r["all_ms"]) == 2
               for r in data["results"])
    forced = [r["density"] for r in data["results"] if r["table"] == "density" and not r["forward_only"]]
    assert forced[0] == 1.0 and forced[0] > forced[1] > forced[2]  # the forced densities take effect


def test_bench_refuses_bad_counts():
    proc = subprocess.run([sys.executable, "-m", "minitspeft.bench", "--steps", "0"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--steps must be >= 1" in proc.stderr
