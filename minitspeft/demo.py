"""``python -m minitspeft.demo``: dense PEFT versus token-selective PEFT (TS-PEFT, arXiv 2511.16147).

1. Pretrain a small backbone (cached in ``--cache-dir``): for **digits** a ViT
   on handwritten digits 0-4; for **needle** a text encoder on "the value
   after the first marker".
2. Freeze it; fine-tune a new head plus a PEFT method on the second task
   (digits 5-9; "(value1 + value2) mod 10"): by default all six methods:
   dense LoRA and DoRA on q, k, v, o, fc1 and fc2, bottleneck adapters, and
   their TS twins, whose gates apply each token's update only where
   ``||d|| / ||b|| >= tau``; ``--methods`` picks some.
3. Print trainable parameters, test accuracy, density of applied token
   updates, tau per gated layer, seconds; how token-level the gating is; a
   heatmap of where block 0's gates open (digits) or the density on salient
   versus filler tokens per block (needle).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace

import numpy as np

from . import backend
from .checks import check_int
from .io import output_file_problem, writable_dir_problem
from .experiment import (EXPERIMENTS, METHODS, finetune, importance_study, pretrained_backbone, quick,
                         token_level_summary)
from .peft import GATE_VARIANTS
from .viz import format_table, heatmap, plot_heatmaps, plot_training, plot_tradeoff, pyplot, shade

DEFAULT_METHODS = METHODS
SWEEP = (0.01, 0.03, 0.1, 0.3)  # sparsity weights of the accuracy-versus-density figure


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/minitspeft`` or ``~/.cache/minitspeft``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "minitspeft")


def _mean_spread(values: list) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def label(record: dict) -> str:
    """The row name of a record: its method, with the gate variant unless it is the paper's (``ts-lora/router``)."""
    gate = record.get("gate")
    return record["method"] if gate in (None, "paper") else f"{record['method']}/{gate}"


def summary_table(records: list) -> str:
    """One row per method: trainable params, accuracy, density (mean ± spread over seeds), tau range, seconds."""
    rows = []
    for method in dict.fromkeys(label(r) for r in records):
        rs = [r for r in records if label(r) == method]
        taus = [t for r in rs if r["tau"] for t in r["tau"] if t is not None]
        rows.append([method, f"{rs[0]['trainable_params']:,}", _mean_spread([r["accuracy"] for r in rs]),
                     _mean_spread([r["density"] for r in rs]),
                     f"{min(taus):.3f}..{max(taus):.3f}" if taus else "-",
                     f"{np.mean([r['seconds'] for r in rs]):.1f}"])
    return format_table(["method", "trainable params", "test accuracy", "density", "tau range", "seconds"], rows)


def _fmt(value, spec=".3f") -> str:
    return "-" if value is None else format(value, spec)


def selection_table(records: list) -> str:
    """One row per gated method: how well its gates select tokens (mean over seeds).

    Columns: ``useless`` (share of the provably useless updates applied),
    ``spread`` (std of ``S`` within a sequence), layers open/closed/mixed, and
    where salient tokens are marked, per block ``salient/other`` densities
    and ``token_auc`` of the gate's score."""
    rows = []
    for name in dict.fromkeys(label(r) for r in records if r.get("gate")):
        rs = [r for r in records if label(r) == name]
        mean = lambda key: None if rs[0][key] is None else float(np.mean([r[key] for r in rs]))  # noqa: E731
        kinds = [token_level_summary(r["layer_density"]) for r in rs]
        row = [name, _fmt(mean("useless_density")), _fmt(mean("seq_spread")),
               "/".join(f"{np.mean([k[key] for k in kinds]):.3g}" for key in ("open", "closed", "mixed"))]
        if rs[0]["salient_density"] is not None:
            n_blocks = len(rs[0]["salient_density"])
            for key in ("salient_density", "other_density", "token_auc"):
                row.append(" ".join(f"{np.mean([r[key][b] for r in rs]):.2f}" for b in range(n_blocks)))
        rows.append(row)
    head = ["method", "useless", "spread", "open/closed/mixed"]
    if rows and len(rows[0]) > len(head):
        head += ["salient (per block)", "other (per block)", "token_auc (per block)"]
    return format_table(head, rows)


def layer_grid(record: dict) -> tuple:
    """``(columns, layer names, grid)``: where each gated layer opens: at CLS, and on salient and other
    tokens where the task marks them (else on all other tokens); ``grid`` is ``(layers, columns)``."""
    layers = record["layer_selectivity"]
    keys = ["cls_density", "salient_density", "other_density"] if record["salient_density"] is not None else \
        ["cls_density", "non_cls_density"]
    columns = ["CLS", "salient", "other"] if len(keys) == 3 else ["CLS", "others"]
    return columns, list(layers), np.array([[row[k] for k in keys] for row in layers.values()])


def layer_picture(record: dict) -> str:
    """:func:`layer_grid` as text: one row per gated layer, each value followed by its shade; ``*`` marks the
    layers whose non-CLS updates are provably useless."""
    columns, names, grid = layer_grid(record)
    useless = {n for n, row in record["layer_selectivity"].items() if row["useless"]}
    width = max(len(n) for n in names) + 2
    lines = [f"{label(record)}: where the gates open, per layer (share of updates applied; "
             "* = its non-CLS updates cannot reach the output)",
             " " * width + "".join(f"{c:>9}" for c in columns)]
    for name, row in zip(names, grid, strict=True):
        mark = "*" if name in useless else " "
        lines.append(f"{name + mark:<{width}}" + "".join(f"{v:7.2f}{shade(v) * 2}" for v in row))
    return "\n".join(lines)


def gate_report(exp, method: str, record: dict, pm, result) -> str:
    """Per-layer gates, fit's notes, how token-level the gating is, and the task's picture, as text."""
    stats = pm.gate_stats()
    aucs = record.get("layer_token_auc") or [None] * len(stats)
    rows = [[name, _fmt(v["tau"]), f"{d:.3f}", f"{v['mean_r']:.3f}", _fmt(a)]
            for (name, v), d, a in zip(stats.items(), record["layer_density"], aucs, strict=True)]
    kinds = token_level_summary(record["layer_density"])
    score = "r" if pm.gate_config.score == "ratio" else "score"
    out = ["", f"{label(record)} gates per layer (density, mean {score} and token_auc on the evaluation set, "
           f"seed {record['seed']}):",
           format_table(["gated layer", "tau", "density", f"mean {score}", "token_auc"], rows)]
    out += [f"note: {note}" for note in result.notes]
    out.append(f"token-level? {kinds['open']} layers fully open, {kinds['closed']} fully closed, "
               f"{kinds['mixed']} mixed (a layer counts as full when within 0.01 of 0 or 1)")
    if record.get("useless_density") is not None:
        out.append(f"provably useless updates applied (last block, non-CLS positions of its per-position "
                   f"layers): {record['useless_density']:.3f}")
    out += ["", layer_picture(record)]
    if exp.grid is not None:
        block0 = np.mean([v["position_density"] for k, v in stats.items() if k.startswith("blocks.0.")], axis=0)
        out += ["", heatmap(block0[1:].reshape(exp.grid),
                            f"{label(record)}, block 0: share of token updates applied per 2x2 patch "
                            f"(mean over its gated layers; CLS token {block0[0]:.2f})")]
    if record.get("salient_density") is not None:
        rows = [[f"block {i}", f"{s:.3f}", f"{o:.3f}"]
                for i, (s, o) in enumerate(zip(record["salient_density"], record["other_density"], strict=True))]
        out += ["", f"{label(record)}: share of token updates applied on salient tokens (markers, values) vs fillers:",
                format_table(["block", "salient", "filler"], rows)]
    return "\n".join(out)


# --------------------------------------------------------------- the CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block, no traceback
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _int_at_least(name: str, low: int):
    """An argparse type: an integer ``>= low``, refused with a one-line message naming ``name``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
            check_int("demo", name, value, low)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer >= {low}, got {text!r}") from None
        return value

    return parse


def _name_list(what: str, choices: tuple):
    """An argparse type for a comma-separated list of names from ``choices`` (``what`` names them in errors)."""
    def parse(text: str) -> tuple:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        bad = [n for n in names if n not in choices]
        if not names or bad:
            raise argparse.ArgumentTypeError(f"unknown {what}(s) {bad or [text]}; choose from {', '.join(choices)}")
        return tuple(dict.fromkeys(names))  # keep the order, drop repeats

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m minitspeft.demo",
                description="Dense PEFT versus token-selective PEFT (TS-PEFT, arXiv 2511.16147) on real handwritten "
                            "digits and a synthetic needle task.")
    p.add_argument("--task", choices=["digits", "needle", "all"], default="digits", help="which task(s) to run")
    p.add_argument("--methods", type=_name_list("method", METHODS), default=DEFAULT_METHODS, metavar="M[,M...]",
                   help=f"comma-separated methods from {', '.join(METHODS)} (default {','.join(DEFAULT_METHODS)})")
    p.add_argument("--gate", type=_name_list("gate variant", GATE_VARIANTS), default=("paper",),
                   metavar="NAME[,NAME...]",
                   help=f"gate variant(s) of the ts- methods, from {', '.join(GATE_VARIANTS)} (default paper: "
                        "the ratio test of TS-PEFT); several run each ts- method once per variant")
    p.add_argument("--seed", type=_int_at_least("seed", 0), default=0, help="first seed of data split, initialisation and batches (>= 0)")
    p.add_argument("--seeds", type=_int_at_least("seeds", 1), default=1, help="run seeds seed..seed+N-1 and report mean ± spread")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="evaluate on the test split (default) or a validation split held out of the training "
                        "data (for choosing settings without looking at the test split)")
    p.add_argument("--quick", action="store_true", help="a smoke run of about a second (tiny model, few steps; "
                                                        "accuracy near chance)")
    p.add_argument("--json", metavar="PATH", help="write one record per (task, method, seed) to PATH")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help=f"where pretrained backbones are cached (default {default_cache_dir()})")
    p.add_argument("--plot", metavar="DIR", help="write PNG figures to DIR (needs matplotlib; adds a sweep of "
                                                  f"sparsity_weight {SWEEP} for ts-lora)")
    p.add_argument("--analysis", choices=["importance"], help="also run the module-importance study: rank layers "
                   "by learned density and by dense update norm, fine-tune the top layers of each")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--backend", choices=backend.BACKENDS, default=None,
                   help="array backend: numpy, cupy (a GPU; the gpu extra) or strict (NumPy with CuPy's refusals); "
                        "default: MINITSPEFT_BACKEND, else numpy")
    return p


def _check_paths(parser, args) -> str:
    cache_dir = args.cache_dir or default_cache_dir()
    problem = writable_dir_problem(cache_dir, create=True)
    if problem:
        parser.error(f"--cache-dir: {problem}")
    if args.json is not None:
        problem = output_file_problem(args.json)
        if problem:
            parser.error(f"--json: {problem}")
    if args.plot is not None:
        problem = writable_dir_problem(args.plot, create=True)
        if problem:
            parser.error(f"--plot: {problem}")
        try:
            pyplot()
        except ImportError as exc:
            parser.error(f"--plot: {exc}")
    return cache_dir


def write_plots(exp, s, state: dict, records: list, first_gated: dict, folder: str, progress: bool) -> list:
    """Write the task's PNG figures into ``folder``; return their paths.

    ``first_gated`` maps a method's label to its first :class:`~minitspeft.experiment.FinetuneRun`.
    ``{task}_gates.png``: where each TS method's gates open, per block (first seed);
    ``{task}_training.png``: density and tau over training steps;
    ``{task}_tradeoff.png``: accuracy against density for TS-LoRA over ``SWEEP`` (extra runs, first seed).
    """
    paths = []
    if first_gated:
        grids, titles = [], []
        for method, run in first_gated.items():
            stats = run.model.gate_stats()
            for b in sorted({int(k.split(".")[1]) for k in stats}):
                pos = np.mean([v["position_density"] for k, v in stats.items() if k.startswith(f"blocks.{b}.")], 0)
                grids.append(pos[1:].reshape(exp.grid) if exp.grid else pos[None, :])
                titles.append(f"{method} block {b}" + (f" (CLS {pos[0]:.2f})" if exp.grid else " (positions)"))
        paths.append(os.path.join(folder, f"{exp.name}_gates.png"))
        plot_heatmaps(paths[-1], grids, titles)
        pictures = [layer_grid(run.record) for run in first_gated.values()]
        paths.append(os.path.join(folder, f"{exp.name}_layers.png"))
        plot_heatmaps(paths[-1], [grid for _, _, grid in pictures], list(first_gated),
                      row_labels=pictures[0][1], col_labels=pictures[0][0])
        paths.append(os.path.join(folder, f"{exp.name}_training.png"))
        plot_training(paths[-1], {m: run.fit.history for m, run in first_gated.items()})
    points = []
    for weight in SWEEP:
        record = finetune(exp, "ts-lora", state, replace(s, sparsity_weight=weight), records[0]["seed"],
                          progress).record
        points.append((weight, record["density"], record["accuracy"]))
    dense = [r["accuracy"] for r in records if r["method"] == "lora" and r["seed"] == records[0]["seed"]]
    paths.append(os.path.join(folder, f"{exp.name}_tradeoff.png"))
    plot_tradeoff(paths[-1], points, dense[0] if dense else None)
    return paths


def run_task(exp, args, cache_dir: str) -> list:
    """Run every method and seed of one task, print its report (and figures), and return its records."""
    s = quick(exp.settings) if args.quick else exp.settings
    progress = not args.no_progress
    records, first_gated, first_state = [], {}, None
    for seed in range(args.seed, args.seed + args.seeds):
        state, cached = pretrained_backbone(exp, s, seed, cache_dir, progress)
        first_state = first_state or state
        print(f"[{exp.name}, seed {seed}] " + ("loaded the pretrained backbone from the cache (skipping pretraining)"
                                               if cached else f"pretrained the backbone and cached it in {cache_dir}"))
        for method in args.methods:
            for gate in (args.gate if method.startswith("ts-") else ("paper",)):
                run = finetune(exp, method, state, s, seed, progress, split=args.split, gate=gate)
                records.append(run.record)
                if run.model.gate_config is not None and label(run.record) not in first_gated:
                    first_gated[label(run.record)] = run
    seeds = f"seed {args.seed}" if args.seeds == 1 else f"seeds {args.seed}..{args.seed + args.seeds - 1}"
    split = "test split" if args.split == "test" else "VALIDATION split: for choosing settings"
    print(f"\n{exp.name}: fine-tuning results ({seeds}; {split})\n")
    print(summary_table(records))
    if first_gated:
        print(f"\nToken selection ({seeds}; mean over seeds):\n")
        print(selection_table(records))
    for method, run in first_gated.items():
        print(gate_report(exp, method, run.record, run.model, run.fit))
    if args.plot:
        for path in write_plots(exp, s, first_state, records, first_gated, args.plot, progress):
            print(f"wrote {path}")
    if args.analysis == "importance":
        print(importance_report(exp, importance_study(exp, s, first_state, args.seed, progress)))
    print()
    return records


def importance_report(exp, study: dict) -> str:
    """The module-importance study as text: both rankings and the accuracy of each top-layer choice."""
    rows = [[f"{i + 1}", d[0], f"{d[1]:.3f}", n[0], f"{n[1]:.3f}"]
            for i, (d, n) in enumerate(zip(study["density_ranking"], study["norm_ranking"], strict=True))]
    out = ["", f"{exp.name}: module importance (seed of the first run)",
           format_table(["rank", "by TS-LoRA density", "density", "by dense update norm", "||dW||"], rows), "",
           "LoRA on the top layers of each ranking, same parameter budget:"]
    out.append(format_table(["ranking", "layers", "trainable params", "test accuracy"],
                            [[r["ranking"], str(len(r["layers"])), f"{r['trainable_params']:,}",
                              f"{r['accuracy']:.3f}"] for r in study["runs"]]))
    return "\n".join(out)


def main(argv=None) -> int:
    """Run the demo; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    before = backend.get_backend()
    if args.backend is not None:
        try:  # models are built after this, so their arrays live there
            backend.set_backend(args.backend)
        except ImportError as exc:  # cupy where it cannot load: one line, as for the other options
            parser.error(f"--backend: {exc}")
    try:
        return _run(args, _check_paths(parser, args))
    finally:
        backend.set_backend(before)


def _run(args, cache_dir: str) -> int:
    start = time.perf_counter()
    tasks = ["digits", "needle"] if args.task == "all" else [args.task]
    records = []
    for name in tasks:
        records += run_task(EXPERIMENTS[name], args, cache_dir)
    print(f"Total time {time.perf_counter() - start:.1f} s")
    if args.json is not None:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=2)
        print(f"Wrote {len(records)} records to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
