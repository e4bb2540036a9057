"""``make demo``: each method's baseline and its AMCL form on the bundled digits, then a small table.

By default SimCLR only (about a minute on 2 CPU cores); ``--methods simclr moco simsiam barlow_twins``
runs all four with each method's own defaults.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from amcl.config import METHODS, PretrainConfig, load_yaml
from amcl.errors import AmclError
from amcl.train import pretrain


def run_demo(config_path: str, out: str, epochs: int | None = None, methods: list[str] | None = None) -> list[dict]:
    base = PretrainConfig(**load_yaml(config_path))
    if epochs is not None:
        base = replace(base, epochs=epochs)
    rows = []
    runs = [(method, amcl) for method in (methods or [base.method]) for amcl in (False, True)]
    for method, amcl in runs:
        name = method + ("-amcl" if amcl else "")
        config = replace(base, method=method, amcl=amcl, out=str(Path(out) / name)).resolved()
        print(f"== {name}: {config.heads} head(s), {config.epochs} epochs on {config.dataset}", flush=True)
        summary = pretrain(config)
        rows.append({"run": name, "heads": config.heads, "knn": summary["best_knn_acc"],
                     "final": summary["final_knn_acc"], "time": summary["time_s"], "out": config.out})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| run | heads | best kNN acc | final kNN acc | time (s) | outputs |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['heads']} | {100 * r['knn']:.1f}% | {100 * r['final']:.1f}% | "
                     f"{r['time']:.0f} | {r['out']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m amcl.demo", description=__doc__)
    parser.add_argument("--config", default="configs/demo-digits.yaml")
    parser.add_argument("--out", default="demo-runs")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="methods to run (default: the config's)")
    args = parser.parse_args(argv)
    try:
        rows = run_demo(args.config, args.out, args.epochs, args.methods)
    except AmclError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    print()
    print(format_table(rows))
    print(f"\nEach run folder holds config.yaml, metrics.json (per-epoch loss and kNN accuracy) and last.ckpt.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
