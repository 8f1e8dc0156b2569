"""The demo: a quick smoke run, the cache, its JSON records, and one-line errors for bad options."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from minitspeft import demo


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "minitspeft.demo", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_quick_demo_writes_records_and_reuses_the_cache(tmp_path, capsys):
    out = tmp_path / "out.json"
    cache = tmp_path / "cache"
    assert demo.main(["--quick", "--no-progress", "--cache-dir", str(cache), "--json", str(out)]) == 0
    first = capsys.readouterr().out
    assert "pretrained the backbone" in first and "ts-lora" in first and "block 0" in first
    assert "token-level? " in first
    records = json.loads(out.read_text())
    assert [r["method"] for r in records] == ["lora", "ts-lora", "dora", "ts-dora", "adapter", "ts-adapter"]
    for r in records:
        assert set(r) == {"task", "method", "gate", "seed", "trainable_params", "accuracy", "density", "tau",
                          "seconds", "layer_density", "useless_density", "seq_spread", "salient_density",
                          "other_density", "token_auc", "layer_token_auc", "layer_selectivity"}
        assert r["task"] == "digits" and r["seed"] == 0 and 0 <= r["accuracy"] <= 1 and 0 <= r["density"] <= 1
        assert r["gate"] == ("paper" if r["method"].startswith("ts-") else None)
        if r["gate"]:  # digits: no salient marks, but the useless updates are known
            assert 0 <= r["useless_density"] <= 1 and r["token_auc"] is None and r["salient_density"] is None
        else:
            assert r["useless_density"] is None
    assert records[0]["density"] == 1.0 and records[0]["tau"] is None and records[0]["layer_density"] is None
    assert records[1]["density"] == pytest.approx(sum(records[1]["layer_density"]) / 6)
    assert len(records[1]["tau"]) == 6 and all(t >= 0 for t in records[1]["tau"])  # 1 block x 6 targets
    assert demo.main(["--quick", "--no-progress", "--cache-dir", str(cache), "--json", str(out)]) == 0
    second = capsys.readouterr().out
    assert "from the cache (skipping pretraining)" in second
    def timeless(recs):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]

    assert timeless(json.loads(out.read_text())) == timeless(records)  # the cached backbone gives the same run


@pytest.mark.parametrize("args,needle", [
    (["--bogus"], "unrecognized arguments"),
    (["--seed", "-3"], "seed must be an integer >= 0"),
    (["--seed", "x"], "seed must be an integer >= 0"),
    (["--json", "/proc/no/such/out.json"], "--json"),
    (["--cache-dir", "/proc/version/cache"], "--cache-dir"),
    (["--json", ""], "--json: the path is empty"),
    (["--methods", "lora,qlora"], "unknown method(s) ['qlora']"),
    (["--methods", ""], "unknown method"),
    (["--seeds", "0"], "seeds must be an integer >= 1"),
    (["--task", "mnist"], "invalid choice"),
    (["--gate", "paper,magic"], "unknown gate variant(s) ['magic']"),
    (["--backend", "torch"], "invalid choice: 'torch'"),
    pytest.param(["--backend", "cupy"], 'install the \'gpu\' extra: pip install "minitspeft[gpu]"',
                 marks=pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")),
])
def test_bad_options_give_one_line_errors(args, needle, tmp_path):
    extra = [] if "--cache-dir" in args else ["--cache-dir", str(tmp_path)]
    proc = _run("--quick", *extra, *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_backend_option_runs_the_demo_there_and_gives_the_previous_backend_back(tmp_path, capsys):
    from minitspeft import backend, strict_xp

    before, copies = backend.get_backend(), strict_xp.transfer_count()
    assert demo.main(["--quick", "--no-progress", "--methods", "lora,ts-lora", "--cache-dir", str(tmp_path),
                      "--backend", "strict"]) == 0
    assert strict_xp.transfer_count() > copies  # its arrays were the stand-in's: their copies to the host count
    assert backend.get_backend() == before and "ts-lora" in capsys.readouterr().out


def test_json_path_that_is_a_folder_is_refused(tmp_path):
    proc = _run("--quick", "--cache-dir", str(tmp_path), "--json", str(tmp_path))
    assert proc.returncode == 2 and "is a folder" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_json_parent_folder_is_not_created(tmp_path):
    target = tmp_path / "missing" / "out.json"
    proc = _run("--quick", "--cache-dir", str(tmp_path / "c"), "--json", str(target))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / "missing").exists()


def test_cache_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "plain"
    f.write_text("x")
    proc = _run("--quick", "--cache-dir", str(f))
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _damage_truncate(path):
    path.write_bytes(path.read_bytes()[:10])


def _damage_empty(path):
    path.write_bytes(b"")


def _damage_flip(path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 8] = bytes(255 - b for b in data[mid:mid + 8])
    path.write_bytes(bytes(data))


def _damage_wrong_keys(path):
    import numpy as np

    np.savez(path, **{"unrelated.weight": np.zeros((2, 2))})


def _damage_npy(path):
    import numpy as np

    with open(path, "wb") as fh:  # an .npy file where the .npz should be
        np.save(fh, np.zeros(3))


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_empty, _damage_flip, _damage_wrong_keys, _damage_npy])
def test_damaged_cache_is_retrained_not_fatal(tmp_path, capsys, damage):
    cache = tmp_path / "cache"
    args = ["--quick", "--no-progress", "--cache-dir", str(cache)]
    assert demo.main(args) == 0
    (entry,) = cache.glob("*.npz")
    damage(entry)
    capsys.readouterr()
    assert demo.main(args) == 0
    captured = capsys.readouterr()
    assert "pretrained the backbone" in captured.out and "Ignoring the cached backbone" in captured.err
    assert demo.main(args) == 0  # the entry was rewritten whole
    assert "from the cache" in capsys.readouterr().out


def test_a_damaged_readable_copy_does_not_matter(tmp_path, capsys):
    """The cache entry is the .npz alone (arrays and record together); its .json is a copy for people."""
    cache = tmp_path / "cache"
    args = ["--quick", "--no-progress", "--cache-dir", str(cache)]
    assert demo.main(args) == 0
    (entry,) = cache.glob("*.npz")
    pathlib.Path(str(entry) + ".json").write_text("{not json")
    capsys.readouterr()
    assert demo.main(args) == 0
    assert "from the cache" in capsys.readouterr().out


def test_every_method_runs_and_is_recorded(tmp_path, capsys):
    out = tmp_path / "out.json"
    methods = ["lora", "ts-lora", "dora", "ts-dora", "adapter", "ts-adapter"]
    assert demo.main(["--quick", "--no-progress", "--cache-dir", str(tmp_path), "--json", str(out),
                      "--methods", ",".join(methods)]) == 0
    records = json.loads(out.read_text())
    assert [r["method"] for r in records] == methods
    text = capsys.readouterr().out
    for m in methods[1::2]:
        assert f"{m} gates per layer" in text
    counts = {r["method"]: r["trainable_params"] for r in records}
    assert counts["ts-lora"] - counts["lora"] == 6 and counts["ts-adapter"] - counts["adapter"] == 2  # one tau each
    assert counts["dora"] - counts["lora"] == 4 * 32 + 128 + 32  # magnitudes: q, k, v, o (32 each), fc1 (128), fc2 (32)


def test_needle_task_with_seeds_reports_salient_density(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert demo.main(["--quick", "--no-progress", "--cache-dir", str(tmp_path), "--json", str(out),
                      "--task", "all", "--seeds", "2", "--methods", "lora,ts-lora"]) == 0
    records = json.loads(out.read_text())
    assert [(r["task"], r["seed"], r["method"]) for r in records] == [
        (t, s, m) for t in ("digits", "needle") for s in (0, 1) for m in ("lora", "ts-lora")]
    text = capsys.readouterr().out
    assert "±" in text and "salient" in text
    for r in records:
        if r["task"] == "needle" and r["method"] == "ts-lora":
            assert len(r["salient_density"]) == len(r["other_density"]) == 1  # one block in the quick model
            assert all(0 <= v <= 1 for v in r["salient_density"] + r["other_density"])
        elif r["task"] == "needle":
            assert r["salient_density"] is None
        else:
            assert r["salient_density"] is None  # digits marks no salient tokens


def test_density_by_mask_counts_what_it_should():
    import numpy as np

    import minitspeft as mt
    from minitspeft import nn
    from minitspeft.peft import GateConfig, LoraConfig, get_peft_model
    from minitspeft.selectivity import gate_selectivity

    def density_by_mask(pm, x, mask):
        blocks = gate_selectivity(pm, x, mask)["blocks"]
        return [b["salient_density"] for b in blocks], [b["other_density"] for b in blocks]

    mt.manual_seed(0)
    cfg = nn.TransformerConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4, n_classes=2)
    pm = get_peft_model(nn.Transformer(cfg), LoraConfig(r=1, target_modules=["q_proj"]), gate=GateConfig())
    x = np.zeros((3, 4), dtype=int)
    mask = np.array([[0, 1, 0, 0]] * 3, dtype=bool)
    salient, other = density_by_mask(pm, x, mask)
    assert salient == [1.0] and other == [1.0]  # tau = 0: every gate open
    pm.base_model.blocks[0].attn.q_proj.gate.tau.data = np.asarray(np.float32(1.0))  # r = 0 < 1: all closed
    assert density_by_mask(pm, x, mask) == ([0.0], [0.0])


def test_plot_writes_the_figures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plots = tmp_path / "plots"
    assert demo.main(["--quick", "--no-progress", "--cache-dir", str(tmp_path), "--task", "all",
                      "--methods", "lora,ts-lora,ts-dora", "--plot", str(plots)]) == 0
    names = sorted(p.name for p in plots.iterdir())
    assert names == sorted(f"{t}_{k}.png" for t in ("digits", "needle")
                           for k in ("gates", "layers", "training", "tradeoff"))
    for p in plots.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert capsys.readouterr().out.count("wrote ") == 8


def test_importance_study_ranks_and_respects_the_budget(tmp_path, capsys):
    assert demo.main(["--quick", "--no-progress", "--cache-dir", str(tmp_path), "--analysis", "importance"]) == 0
    text = capsys.readouterr().out
    assert "module importance" in text and "same parameter budget" in text
    from minitspeft.experiment import EXPERIMENTS, importance_study, pretrained_backbone, quick

    exp = EXPERIMENTS["digits"]
    s = quick(exp.settings)
    state, cached = pretrained_backbone(exp, s, 0, str(tmp_path), False)
    assert cached
    study = importance_study(exp, s, state, 0, False)
    for key in ("density_ranking", "norm_ranking"):
        scores = [v for _, v in study[key]]
        assert scores == sorted(scores, reverse=True) and len(scores) == 6
    by_density, by_norm = study["runs"]
    assert by_density["layers"] == [n for n, _ in study["density_ranking"][:3]]
    assert by_norm["trainable_params"] <= by_density["trainable_params"]
    assert set(by_norm["layers"]) <= {n for n, _ in study["norm_ranking"]}


def test_validation_split_never_touches_the_test_images():
    import numpy as np

    from minitspeft.experiment import EXPERIMENTS

    exp = EXPERIMENTS["digits"]
    val, test = exp.finetune_data(0, "val"), exp.finetune_data(0, "test")
    x_fit, x_val, x_train, x_test = val.x_train, val.x_eval, test.x_train, test.x_eval
    assert len(x_fit) + len(x_val) == len(x_train)
    test_rows = {row.tobytes() for row in x_test}
    assert not any(row.tobytes() in test_rows for row in x_val)
    rows = {row.tobytes() for row in x_train}
    assert all(row.tobytes() in rows for row in np.concatenate([x_fit, x_val]))
    needle = EXPERIMENTS["needle"]
    val, test = needle.finetune_data(0, "val"), needle.finetune_data(0, "test")
    xv, yv, mv, xt = val.x_eval, val.y_eval, val.mask_eval, test.x_eval
    assert len(xv) == len(yv) == len(mv) and not np.array_equal(xv[: len(xt)], xt[: len(xv)])


def test_gate_variants_run_side_by_side_on_needle(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert demo.main(["--quick", "--no-progress", "--task", "needle", "--methods", "lora,ts-lora",
                      "--gate", "paper,router,top-k", "--cache-dir", str(tmp_path), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    records = json.loads(out.read_text())
    assert [(r["method"], r["gate"]) for r in records] == [("lora", None), ("ts-lora", "paper"),
                                                           ("ts-lora", "router"), ("ts-lora", "top-k")]
    for r in records[1:]:
        n_blocks = 1  # the quick model has one block
        assert len(r["token_auc"]) == n_blocks and all(0 <= a <= 1 for a in r["token_auc"])
        assert len(r["salient_density"]) == len(r["other_density"]) == n_blocks
        assert 0 <= r["useless_density"] <= 1
        assert len(r["layer_token_auc"]) == 6 and set(r["layer_selectivity"]) == {
            f"blocks.0.{p}" for p in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.fc1",
                                      "mlp.fc2")}
    assert records[3]["tau"] == [None] * 6  # top-k has no thresholds
    assert "Token selection" in text and "ts-lora/router" in text and "ts-lora/top-k" in text
    assert "where the gates open, per layer" in text and "provably useless updates applied" in text
