"""The benchmark's command line: ``python -m minitspeft.bench [--config NAME] [--json PATH] ...``.

It runs each case in a fresh process, back to back, and prints the median
milliseconds per step after warm-up and the growth of peak resident memory:
the dense LoRA and TS-LoRA training steps, the same two steps in PyTorch and
in HIPS autograd where they are installed (the twins, with each step's time
as a multiple of PyTorch's and of minitspeft's), TS-LoRA at forced densities
(with the inference forward), and with ``--scaling`` the step as the sequence
and the width double.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

from tqdm.auto import tqdm

from .. import backend
from ..viz import format_table
from ..io import output_file_problem, save_json
from .config import CONFIGS, VARIANTS, scaled, update_flop_share
from .measure import run_in_child, worker

DENSITIES = (1.0, 0.5, 0.2)
TWINS = ("torch", "autograd")  # the twins' impl names, each also the module it needs


def twins(args) -> list:
    """The twins to run: those whose library is installed, none with ``--no-twins``."""
    return [] if args.no_twins else [t for t in TWINS if importlib.util.find_spec(t) is not None]


def _threads(text: str) -> int:
    """An argparse type for ``--threads``: an integer in ``[1, os.cpu_count()]`` (more BLAS threads than
    cores only slow a step down), refused with a one-line message naming the range."""
    cores = os.cpu_count() or 1
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 1 <= value <= cores:
        raise argparse.ArgumentTypeError(f"must be an integer in [1, {cores}] (this machine's CPU count), "
                                         f"got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minitspeft.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="bench-small")
    p.add_argument("--steps", type=int, default=20, help="timed steps per case (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--threads", type=_threads, default=1,
                   help="host BLAS threads, 1 to the CPU count (default 1)")
    p.add_argument("--backend", choices=backend.BACKENDS, default=backend.get_backend(),
                   help="array backend (default: the active one, MINITSPEFT_BACKEND or numpy)")
    p.add_argument("--scaling", action="store_true", help="also time the step as seq_len and n_embd double")
    p.add_argument("--no-densities", action="store_true", help="skip the forced-density cases")
    p.add_argument("--no-twins", action="store_true", help="skip the PyTorch and HIPS autograd steps")
    p.add_argument("--json", metavar="PATH", help="write {config, update_flop_share, results} to PATH")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def cases(args) -> list:
    """Every case to run, as dicts for :func:`~minitspeft.bench.measure.worker`."""
    base = CONFIGS[args.config]
    common = {"impl": "minitspeft", "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
              "backend": args.backend}
    out = [{**common, "variant": v, "config": base.to_dict(), "density": None, "forward_only": False,
            "table": "step"} for v in VARIANTS]
    out += [{**common, "impl": t, "variant": v, "config": base.to_dict(), "density": None, "forward_only": False,
             "table": "step"} for t in twins(args) for v in VARIANTS]
    if not args.no_densities:
        for forward_only in (False, True):
            out += [{**common, "variant": "ts-lora", "config": base.to_dict(), "density": d,
                     "forward_only": forward_only, "table": "density"} for d in DENSITIES]
    if args.scaling:
        sizes = [("seq_len", n) for n in (32, 64, 128, 256)] + [("n_embd", n) for n in (64, 128, 256)]
        out += [{**common, "variant": v, "config": scaled(base, **{k: n}).to_dict(), "density": None,
                 "forward_only": False, "table": "scaling", "change": f"{k}={n}"} for k, n in sizes for v in VARIANTS]
    return out


def add_ratios(results: list) -> None:
    """Give each step row ``x_torch`` and ``x_minitspeft``: its median over the median of the torch and of
    the minitspeft step of the same variant (None where that step was not run)."""
    step = [r for r in results if r["table"] == "step"]
    median = {(r["impl"], r["variant"]): r["median_ms"] for r in step}
    for r in step:
        for impl in ("torch", "minitspeft"):
            ref = median.get((impl, r["variant"]))
            r[f"x_{impl}"] = r["median_ms"] / ref if ref else None


def report(results: list, share: dict | None = None) -> str:
    """The text tables of a run (step rows with their ratios from :func:`add_ratios`; ``share``:
    :func:`~minitspeft.bench.config.update_flop_share`, printed under the density table)."""
    step = [r for r in results if r["table"] == "step"]
    twinned = any(r["impl"] != "minitspeft" for r in step)
    header = ["impl", "variant", "median ms/step", "peak MB", "page faults/step"]
    rows = [[r["impl"], r["variant"], f"{r['median_ms']:.1f}", f"{r['peak_mb']:.0f}",
             f"{r['minor_faults_per_step']:,.0f}"] for r in step]
    if any(r.get("device_mb") is not None for r in step):  # a GPU run: what CuPy's pool held there
        header.append("GPU MB")
        for row, r in zip(rows, step, strict=True):
            row.append("-" if r.get("device_mb") is None else f"{r['device_mb']:.0f}")
    if twinned:
        header += ["x torch", "x minitspeft"]
        for row, r in zip(rows, step, strict=True):
            row += ["-" if r.get(k) is None else f"{r[k]:.2f}" for k in ("x_torch", "x_minitspeft")]
    text = [format_table(header, rows)]
    if twinned:
        text[0] += ("\nx torch, x minitspeft: the median over the median of the torch or the minitspeft step "
                    "of the same variant (above 1: slower)")
    dens = [[("forward" if r["forward_only"] else "step"), f"{r['density']:.2f}", f"{r['median_ms']:.1f}"]
            for r in results if r["table"] == "density"]
    if dens:
        text.append(format_table(["what", "density", "median ms"], dens))
        if share:
            text[-1] += (f"\nupper bound: LoRA's B u, the work a closed token can skip, is {share['forward']:.1%} "
                         f"of the forward's FLOPs and {share['step']:.1%} of the step's; at density D the "
                         "saving is at most (1 - D) times that")
    scale = [[r["change"], r["variant"], f"{r['median_ms']:.1f}"] for r in results if r["table"] == "scaling"]
    if scale:
        text.append(format_table(["size", "variant", "median ms/step"], scale))
    return "\n\n".join(text)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:  # a child process: one case, its result as JSON on the last line
        case = json.loads(args.worker)
        backend.set_backend(case["backend"])
        print(json.dumps(worker(case)))
        return 0
    if args.steps < 1:
        build_parser().error("--steps must be >= 1")
    if args.warmup < 0:
        build_parser().error("--warmup must be >= 0")
    problem = output_file_problem(args.json) if args.json is not None else None
    if problem:  # refused before the run, not after it
        build_parser().error(f"--json: {problem}")
    if args.backend != backend.get_backend():
        try:  # the children set it; a backend that cannot load is refused here, once
            backend.set_backend(args.backend)
        except (ImportError, ValueError) as exc:
            build_parser().error(f"--backend: {exc}")
    results = []
    for case in tqdm(cases(args), desc="bench", leave=False):
        result = run_in_child(case)
        results.append({k: v for k, v in case.items() if k not in ("config",)} | result
                       | {"seq_len": case["config"]["seq_len"], "n_embd": case["config"]["n_embd"]})
    add_ratios(results)
    print(f"minitspeft.bench: config {args.config}, {args.threads} BLAS thread(s), backend {args.backend}, "
          f"twins: {', '.join(twins(args)) or 'none'}\n")
    share = update_flop_share(CONFIGS[args.config])
    print(report(results, share))
    if args.json:
        save_json(args.json, {"config": CONFIGS[args.config].to_dict(), "update_flop_share": share,
                              "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
