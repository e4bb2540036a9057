"""``make demo``: each method three ways on the bundled digits, then a small table: the baseline, AMCL as
the paper prints it (its spec's ``paper_literal`` options), and AMCL as we recommend it (``--amcl`` with its defaults).

By default SimCLR only (about 1.5 minutes on 2 CPU cores); ``--methods simclr moco simsiam barlow_twins``
runs all four with each method's own defaults.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from amcl.config import METHODS, PretrainConfig, load_yaml
from amcl.errors import AmclError, RunInterrupted, warnings_on_one_line
from amcl.specs import METHOD_SPECS
from amcl.train import pretrain

#: The demo's three runs per method: a name suffix, what the table calls it, and the options over the config.
MODES = (
    ("", "baseline", lambda method: {"amcl": False}),
    ("-amcl-paper", "AMCL as printed", lambda method: {"amcl": True, **METHOD_SPECS[method].paper_literal}),
    ("-amcl", "AMCL (recommended)", lambda method: {"amcl": True}),
)


def run_demo(config_path: str, out: str, epochs: int | None = None, methods: list[str] | None = None) -> list[dict]:
    """Every method x mode run; a run that fails (e.g. non-finite) is a row with its one-line ``error`` and
    the others still run. A config that cannot be read or resolved raises :class:`AmclError` at once."""
    base = PretrainConfig(**load_yaml(config_path))
    if epochs is not None:
        base = replace(base, epochs=epochs)
    rows = []
    for method in methods or [base.method]:
        for suffix, title, options in MODES:
            name = method + suffix
            config = replace(base, method=method, **options(method), out=str(Path(out) / name)).resolved()
            form = config.amcl_form or ("" if not config.amcl else f"tau {config.tau_min:g}-{config.tau_max:g}")
            print(f"== {name}: {title}{f' ({form})' if config.amcl else ''}, {config.heads} head(s), "
                  f"{config.epochs} epochs on {config.dataset}", flush=True)
            row = {"run": name, "what": title, "heads": config.heads, "out": config.out}
            try:
                summary = pretrain(config, overwrite=True)  # each demo starts afresh
            except AmclError as exc:  # this run failed: report it beside the runs that finished
                print(f"== {name} failed: {exc}", file=sys.stderr, flush=True)
                rows.append({**row, "error": str(exc)})
                continue
            rows.append({**row, "knn": summary["best_knn_acc"], "final": summary["final_knn_acc"],
                         "time": summary["time_s"]})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| run | what | heads | best kNN acc | final kNN acc | time (s) | outputs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['run']} | {r['what']} | {r['heads']} | failed | failed | - | {r['out']} |")
            continue
        lines.append(f"| {r['run']} | {r['what']} | {r['heads']} | {100 * r['knn']:.1f}% | {100 * r['final']:.1f}% | "
                     f"{r['time']:.0f} | {r['out']} |")
    failed = [f"{r['run']} failed: {r['error']}" for r in rows if "error" in r]
    return "\n".join(lines + ([""] + failed if failed else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m amcl.demo", description=__doc__)
    parser.add_argument("--config", default="configs/demo-digits.yaml")
    parser.add_argument("--out", default="demo-runs")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="methods to run (default: the config's)")
    args = parser.parse_args(argv)
    try:
        with warnings_on_one_line():
            rows = run_demo(args.config, args.out, args.epochs, args.methods)
    except AmclError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as stopped:
        print(f"demo: {stopped.continued_by('the demo again (it starts its runs afresh)')}", file=sys.stderr)
        return stopped.exit_status
    print()
    print(format_table(rows))
    print("\nEach run folder holds config.yaml, metrics.json (per-epoch loss and kNN accuracy) and last.ckpt.")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
