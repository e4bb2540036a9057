"""What the temperatures did in a finished `amcl compare` grid (docs/results.md): per mode and policy, head 1's
last-epoch temperatures, their spread over pairs, their correlation with similarity, the share at the floor
and the similarities, averaged over the seeds.

    .venv/bin/python studies/temperatures.py runs/study-digits

It reads each run's metrics.json (written by `amcl pretrain`) and prints one Markdown table. Modes whose runs
without recorded temperatures or similarities (the baselines) are left out.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

COLUMNS = {  # column title: the key of head 1's statistic in a metrics.json epoch
    "tau+": "head1/tau_pos_mean", "tau-": "head1/tau_neg_mean", "spread": "head1/tau_spread",
    "corr": "head1/tau_sim_corr", "at floor": "head1/share_at_tau_min", "s+": "head1/sim_pos_mean",
    "s-": "head1/sim_neg_mean",
}


def last_epochs(grid: Path) -> dict[str, list[dict]]:
    """The last epoch of every finished run, by cell folder name (method-mode-policy)."""
    cells: dict[str, list[dict]] = {}
    for metrics in sorted(grid.glob("*/seed-*/metrics.json")):
        epochs = json.loads(metrics.read_text())["epochs"]
        if epochs:
            cells.setdefault(metrics.parent.parent.name, []).append(epochs[-1])
    return cells


def table(cells: dict[str, list[dict]]) -> str:
    lines = ["| cell | seeds | " + " | ".join(COLUMNS) + " |", "|---|---:|" + "---:|" * len(COLUMNS)]
    for name, epochs in cells.items():
        values = []
        for key in COLUMNS.values():
            found = [e[key] for e in epochs if e.get(key) is not None]
            if not found and key.endswith("sim_pos_mean"):  # one head: no head1/ prefix
                found = [e[key.removeprefix("head1/")] for e in epochs if key.removeprefix("head1/") in e]
            values.append(f"{statistics.fmean(found):.3f}" if found else "")
        if any(values):
            lines.append(f"| {name} | {len(epochs)} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path, help="the --out folder of an amcl compare grid")
    args = parser.parse_args()
    cells = last_epochs(args.grid)
    if not cells:
        raise SystemExit(f"no finished runs (*/seed-*/metrics.json) under {args.grid}")
    print(table(cells))


if __name__ == "__main__":
    main()
