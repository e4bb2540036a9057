"""Rank a tuning grid's settings per side, from its results.json (docs/results.md, "Fashion-MNIST").

    .venv/bin/python studies/tuning.py runs/study-fmnist-tune/results.json --top 3

The grid's modes split into two sides with the same budget: the baseline's settings and AMCL's (by their
``amcl`` option). Each setting's mean of the grid's metric (the validation split's: settings are never chosen on
the test split) over the seeds it finished, with the sample std and the seeds, best first. ``--top K`` prints the
K best of each side as one line of mode names: the next round of a successive-halving search runs those with
more seeds (``amcl compare ... --modes <that line>``). ``--seeds`` keeps only the given seeds (a round compares
settings on the seeds all of them ran).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def ranking(results: dict[str, Any], seeds: list[int] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Per side (``baseline``, ``amcl``), the modes with their mean, std and seeds of the grid's metric, best first
    (higher is better unless the metric is a loss). A mode counts the seeds it finished; with ``seeds``, exactly
    those, and a mode that has not finished all of them is left out."""
    lower_is_better = "loss" in results["metric"]
    sides: dict[str, list[dict[str, Any]]] = {"baseline": [], "amcl": []}
    for cell in results["cells"]:
        pairs = [(seed, value) for seed, value in zip(cell["seeds"], cell["values"])
                 if value is not None and (seeds is None or seed in seeds)]
        if not pairs or (seeds is not None and len(pairs) < len(seeds)):
            continue  # a setting is ranked on the seeds every one of the round ran
        values = [100 * value for _, value in pairs]
        side = "amcl" if cell["options"].get("amcl") else "baseline"  # a grid cell's mode options say it
        sides[side].append({"mode": cell["mode"], "mean": statistics.fmean(values),
                            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                            "seeds": [seed for seed, _ in pairs]})
    for rows in sides.values():
        rows.sort(key=lambda row: row["mean"], reverse=not lower_is_better)
    return sides


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a compare grid's results.json")
    parser.add_argument("--top", type=int, default=3, help="settings of each side to carry on [default: 3]")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds [default: every finished one]")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    sides = ranking(results, args.seeds)
    print(f"{results['metric']} (x100), mean ± std over the finished seeds, best first")
    for side, rows in sides.items():
        print(f"\n{side}:")
        for row in rows:
            print(f"  {row['mode']:<22} {row['mean']:6.2f} ± {row['std']:4.2f}  seeds {row['seeds']}")
    print("\ncarry on: " + " ".join(row["mode"] for rows in sides.values() for row in rows[:args.top]))


if __name__ == "__main__":
    main()
