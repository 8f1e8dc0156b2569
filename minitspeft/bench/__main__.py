"""The benchmark's command line: ``python -m minitspeft.bench [--config NAME] [--json PATH] ...``.

It runs each case in a fresh process, back to back, and prints the median
milliseconds per step after warm-up and the growth of peak resident memory:
the dense LoRA and TS-LoRA training steps, TS-LoRA at forced densities (with
the inference forward), and with ``--scaling`` the step as the sequence and
the width double.
"""

from __future__ import annotations

import argparse
import json
import sys

from tqdm.auto import tqdm

from .. import backend
from ..viz import format_table
from .config import CONFIGS, VARIANTS, scaled
from .measure import run_in_child, worker

DENSITIES = (1.0, 0.5, 0.2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minitspeft.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="bench-small")
    p.add_argument("--steps", type=int, default=20, help="timed steps per case (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--threads", type=int, default=1, help="host BLAS threads (default 1)")
    p.add_argument("--backend", choices=["numpy", "cupy"], default=backend.get_backend())
    p.add_argument("--scaling", action="store_true", help="also time the step as seq_len and n_embd double")
    p.add_argument("--no-densities", action="store_true", help="skip the forced-density cases")
    p.add_argument("--json", metavar="PATH", help="write {config, results} to PATH")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def cases(args) -> list:
    """Every case to run, as dicts for :func:`~minitspeft.bench.measure.worker`."""
    base = CONFIGS[args.config]
    common = {"impl": "minitspeft", "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
              "backend": args.backend}
    out = [{**common, "variant": v, "config": base.to_dict(), "density": None, "forward_only": False,
            "table": "step"} for v in VARIANTS]
    if not args.no_densities:
        for forward_only in (False, True):
            out += [{**common, "variant": "ts-lora", "config": base.to_dict(), "density": d,
                     "forward_only": forward_only, "table": "density"} for d in DENSITIES]
    if args.scaling:
        sizes = [("seq_len", n) for n in (32, 64, 128, 256)] + [("n_embd", n) for n in (64, 128, 256)]
        out += [{**common, "variant": v, "config": scaled(base, **{k: n}).to_dict(), "density": None,
                 "forward_only": False, "table": "scaling", "change": f"{k}={n}"} for k, n in sizes for v in VARIANTS]
    return out


def report(results: list) -> str:
    """The text tables of a run."""
    rows = [[r["impl"], r["variant"], f"{r['median_ms']:.1f}", f"{r['peak_mb']:.0f}",
             f"{r['minor_faults_per_step']:,.0f}"] for r in results if r["table"] == "step"]
    text = [format_table(["impl", "variant", "median ms/step", "peak MB", "page faults/step"], rows)]
    dens = [[("forward" if r["forward_only"] else "step"), f"{r['density']:.2f}", f"{r['median_ms']:.1f}"]
            for r in results if r["table"] == "density"]
    if dens:
        text.append(format_table(["what", "density", "median ms"], dens))
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
    for name in ("steps", "threads"):
        if getattr(args, name) < 1:
            build_parser().error(f"--{name} must be >= 1")
    if args.warmup < 0:
        build_parser().error("--warmup must be >= 0")
    results = []
    for case in tqdm(cases(args), desc="bench", leave=False):
        result = run_in_child(case)
        results.append({k: v for k, v in case.items() if k not in ("config",)} | result
                       | {"seq_len": case["config"]["seq_len"], "n_embd": case["config"]["n_embd"]})
    print(f"minitspeft.bench: config {args.config}, {args.threads} BLAS thread(s), backend {args.backend}\n")
    print(report(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": CONFIGS[args.config].to_dict(), "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
