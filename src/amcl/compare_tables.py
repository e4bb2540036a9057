"""The results of ``amcl compare``: per cell the statistics of each metric over the seeds and each mode's
paired difference to the baseline of the same seed, as ``results.json`` and the tables of ``results.md``.

The seeds vary only the initialisation, the augmentations and the batch order (the data split has its
own ``split_seed``), so the difference of two runs with one seed is a paired measurement: the tables
report its mean, sample standard deviation and wins/ties/losses.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from amcl.compare_grid import (
    GRID_OPTIONS,
    KEY_SETTINGS,
    MODE_OPTIONS,
    MODE_TITLES,
    PER_METHOD,
    REFERENCE,
    Grid,
    Run,
    few_label_metric,
    metric_info,
)
from amcl.config import PretrainConfig
from amcl.files import write_atomic
from amcl.runs import RESUMABLE_CHANGES, summarize_runs
from amcl.stats import holm, paired_test, verdict

__all__ = ["metrics_text", "write_results"]

_DASH = "–"


def _metric_value(metrics: dict[str, Any] | None, metric: str) -> float | None:
    value = (metrics or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def metrics_text(metrics: dict[str, Any] | None, names: Sequence[str]) -> str:
    texts = []
    for name in names:
        value = _metric_value(metrics, name)
        texts.append(f"{name} {value:.4f}" if value is not None else f"{name} n/a")
    return ", ".join(texts)


def _title(mode: str) -> str:
    return MODE_TITLES.get(mode, mode)


def _statistics(runs: Sequence[Run], metric: str) -> dict[str, Any]:
    values = [_metric_value(r.metrics, metric) for r in runs if r.metrics is not None]
    present = [v for v in values if v is not None]
    return {
        "values": values,  # per finished seed, None where the run did not report the metric
        "n": len(present),
        "mean": statistics.fmean(present) if present else None,
        "std": statistics.stdev(present) if len(present) > 1 else None,  # sample std
    }


def _paired(grid: Grid, method: str, mode: str, policy: str, metric: str) -> dict[str, Any] | None:
    """This mode minus the baseline, seed by seed (same split, same seed): the differences, their mean and
    sample std, and wins/ties/losses (a win is better by the metric's direction). None for the baseline
    itself, or without one in the grid."""
    if mode == REFERENCE or REFERENCE not in grid.modes:
        return None
    higher = metric_info(metric)[2]
    reference = {r.seed: _metric_value(r.metrics, metric) for r in grid.cell_runs(method, REFERENCE, policy)}
    seeds, differences = [], []
    for run in grid.cell_runs(method, mode, policy):
        value, base = _metric_value(run.metrics, metric), reference.get(run.seed)
        if value is not None and base is not None:
            seeds.append(run.seed)
            differences.append(value - base)
    better = [d > 0 if higher else d < 0 for d in differences]
    ties = sum(d == 0 for d in differences)
    test = paired_test(differences, _margin(grid, metric))
    return {
        "reference": REFERENCE,
        "seeds": seeds,
        "differences": differences,
        "n": len(differences),
        "mean": test.mean,
        "std": test.std,
        "ci95": [test.low, test.high] if test.low is not None else None,  # Student's t, n - 1 degrees of freedom
        "p": test.p,
        "equivalence_p": test.equivalence_p,
        "wins": sum(better),
        "ties": ties,
        "losses": len(differences) - sum(better) - ties,
    }


def _margin(grid: Grid, metric: str) -> float | None:
    """The equivalence margin in the metric's own units (the option is in the table's: points for accuracies)."""
    if grid.margin is None:
        return None
    return grid.margin / 100 if metric_info(metric)[1] else grid.margin


def _judge(grid: Grid, cells: dict[tuple[str, str, str], dict[str, Any]], metric: str) -> None:
    """Each paired difference of a table gets its verdict; with ``grid.holm`` after Holm's adjustment of the
    p-values (and of the equivalence p-values) across the table's cells (``p_holm``, ``equivalence_p_holm``)."""
    blocks = [_metric_block(c, metric)["paired"] for c in cells.values()]
    blocks = [b for b in blocks if b is not None]
    adjusted = holm([b["p"] for b in blocks]) if grid.holm else [b["p"] for b in blocks]
    equivalent = holm([b["equivalence_p"] for b in blocks]) if grid.holm else [b["equivalence_p"] for b in blocks]
    percent = metric_info(metric)[1]
    margin = None if grid.margin is None else f"{grid.margin:g}{' points' if percent else ''}"
    for block, p, equivalence_p in zip(blocks, adjusted, equivalent):
        if grid.holm:
            block.update(p_holm=p, equivalence_p_holm=equivalence_p)
        test = paired_test(block["differences"], _margin(grid, metric))
        block["verdict"] = verdict(test, metric_info(metric)[2], p, equivalence_p, margin)


def _cell_record(grid: Grid, method: str, mode: str, policy: str) -> dict[str, Any]:
    runs = grid.cell_runs(method, mode, policy)
    finished = [r for r in runs if r.metrics is not None]
    per_seed = []
    for run in finished:
        values = {k: v["mean"] for k, v in summarize_runs([run.metrics]).items()}
        per_seed.append({"seed": run.seed, **{m: _metric_value(run.metrics, m) for m in grid.metrics},
                         **{k: v for k, v in values.items() if k not in grid.metrics}})
    status = "pending" if not finished else "complete" if len(finished) == len(runs) else "partial"
    record = {
        "method": method,
        "mode": mode,
        "options": {k: v for k, v in grid.variants[mode].items()},
        "policy": policy,
        "out": str(grid.out / f"{method}-{mode}-{policy}"),
        "status": status,
        "seeds": [r.seed for r in runs],
        "finished_seeds": [r.seed for r in finished],
        "metric": grid.metric,
        **_statistics(runs, grid.metric),
        "paired": _paired(grid, method, mode, policy, grid.metric),
        "per_seed": per_seed,
        "summary": summarize_runs([r.metrics for r in finished]) if finished else {},
        "config": {k: getattr(runs[0].config, k) for k in PER_METHOD},
    }
    for metric in grid.metrics[1:]:
        record[metric] = {**_statistics(runs, metric), "paired": _paired(grid, method, mode, policy, metric)}
    return record


def _metric_block(cell: dict[str, Any], metric: str) -> dict[str, Any]:
    """A cell's statistics of ``metric``: the record itself for the grid's metric, else its sub-record."""
    return cell if cell["metric"] == metric else cell[metric]


def _has_every_seed(cell: dict[str, Any], metric: str) -> bool:
    """Whether every seed of the cell finished and reported ``metric``."""
    return cell["status"] == "complete" and _metric_block(cell, metric)["n"] == len(cell["seeds"])


def _format(cell: dict[str, Any], metric: str) -> str:
    block = _metric_block(cell, metric)
    if cell["status"] == "pending":
        return "pending"
    if block["mean"] is None:
        return "n/a"
    _, percent, _ = metric_info(metric)
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    text = f"{scale * block['mean']:.{digits}f}"
    if block["std"] is not None:
        text += f" ± {scale * block['std']:.{digits}f}"
    if block["n"] < len(cell["seeds"]):
        text += f" ({block['n']}/{len(cell['seeds'])} seeds)"
    return text


def _signed(value: float, digits: int) -> str:
    text = f"{value:+.{digits}f}"
    return text[1:] if text[1:] == f"{0:.{digits}f}" else text  # no sign on a zero difference


def _format_paired(paired: dict[str, Any], metric: str) -> str:
    """``+1.23 ± 0.80 [+0.45, +2.01] p 0.004, better (8/0/2)``."""
    scale, digits = (100.0, 2) if metric_info(metric)[1] else (1.0, 4)
    text = _signed(scale * paired["mean"], digits)
    if paired["std"] is not None:
        text += f" ± {scale * paired['std']:.{digits}f}"
    if paired.get("ci95") is not None:
        low, high = paired["ci95"]
        p = paired.get("p_holm", paired["p"])
        text += f" [{_signed(scale * low, digits)}, {_signed(scale * high, digits)}] p {_p_text(p)}"
    if paired.get("verdict"):
        text += f", {paired['verdict']}"
    return text + f" ({paired['wins']}/{paired['ties']}/{paired['losses']})"


def _p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _table(grid: Grid, cells: dict[tuple[str, str, str], dict[str, Any]], metric: str) -> str:
    description, percent, higher = metric_info(metric)
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    paired = REFERENCE in grid.modes and len(grid.modes) > 1
    header = ["method", "augs"]
    for mode in grid.modes:
        header.append(_title(mode))
        if paired and mode != REFERENCE:
            header.append(f"Δ {_title(mode)} (paired)")
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for method in grid.methods:
        for policy in grid.policies:
            row = {m: cells[(method, m, policy)] for m in grid.modes}
            texts = {m: _format(c, metric) for m, c in row.items()}
            complete = all(_has_every_seed(c, metric) for c in row.values())
            if complete and len(row) > 1:  # bold: the best mean of the row, none on a tie
                shown = {m: round(scale * _metric_block(c, metric)["mean"], digits) for m, c in row.items()}
                best = (max if higher else min)(shown.values())
                winners = [m for m, v in shown.items() if v == best]
                if len(winners) == 1:
                    texts[winners[0]] = f"**{texts[winners[0]]}**"
            values = []
            for mode in grid.modes:
                values.append(texts[mode])
                if paired and mode != REFERENCE:
                    difference = _metric_block(row[mode], metric)["paired"]
                    shown_delta = (_has_every_seed(row[REFERENCE], metric) and _has_every_seed(row[mode], metric)
                                   and difference["n"] > 0)
                    values.append(_format_paired(difference, metric) if shown_delta else _DASH)
            lines.append("| " + " | ".join([method, policy, *values]) + " |")
    n = len(grid.seeds)
    unit = " in %" if percent else ""
    legend = (f"{_capital(description)}{unit}, mean ± sample std over {n} seed{'s' * (n > 1)} "
              f"({', '.join(map(str, grid.seeds))}), {digits} decimals; pending: not run yet; n/a: the runs did "
              f"not report {metric}")
    if len(grid.modes) > 1:
        legend += f". Bold: the best mean of the row ({'higher' if higher else 'lower'} is better; none on a tie)"
    if paired:
        adjusted = " (Holm-adjusted across this table's cells)" if grid.holm else ""
        equivalence = (f", 'equivalent within ±{grid.margin:g}' when both one-sided tests reject a difference of "
                       f"that size (TOST at 0.05)" if grid.margin is not None else "")
        legend += (f"; Δ (paired) = the mode minus the baseline of the same seed{' in percentage points' * percent}"
                   f": mean ± sample std of those differences, their 95% t-interval [low, high] and the p-value of "
                   f"no difference{adjusted}, the verdict ('better' or 'worse' when p < 0.05{equivalence}, else 'no "
                   f"difference detected', which is not evidence of equality: see the interval), then "
                   f"(wins/ties/losses) over the seeds, shown when both cells have every seed")
    return "\n".join(lines) + "\n\n" + legend + "."


def _settings(grid: Grid) -> list[str]:
    """Markdown lines describing the grid's shared settings and each method's resolved defaults."""
    first = grid.runs[0].config
    defaults = PretrainConfig()
    shown = [f"{name.replace('_', ' ')} {_value(getattr(first, name))}" for name in KEY_SETTINGS]
    skip = set(KEY_SETTINGS) | set(GRID_OPTIONS) | set(RESUMABLE_CHANGES) | set(PER_METHOD)
    others = [f"--{name.replace('_', '-')} {_value(value)}" for name, value in first.as_dict().items()
              if name not in skip and value != getattr(defaults, name)
              and all(getattr(run.config, name) == value for run in grid.runs)]
    lines = ["Shared settings: " + ", ".join(shown) + "."]
    if others:
        lines.append("Other options set for every run: " + ", ".join(others) + ".")
    per_method = []
    for method in grid.methods:
        configs = {mode: grid.cell_runs(method, mode, grid.policies[0])[0].config for mode in grid.modes}
        some = next(iter(configs.values()))
        heads = " / ".join(f"{c.heads} {_title(m)}" for m, c in configs.items())
        per_method.append(f"{method} lr {_value(some.lr)}, temperature {_value(some.temperature)}, heads {heads}")
    lines.append("Per method (its defaults unless set): " + "; ".join(per_method) + ".")
    amcl_modes = []
    for mode in grid.modes:
        config = grid.cell_runs(grid.methods[0], mode, grid.policies[0])[0].config
        if config.amcl:
            form = f"form {config.amcl_form}, " if config.amcl_form else ""
            tau = (f"constant tau {_value(config.temperature)}" if config.temperature_mode == "constant" else
                   f"{config.temperature_mode} tau in [{_value(config.tau_min)}, {_value(config.tau_max)}]")
            amcl_modes.append(f"{_title(mode)}: {form}{tau}, beta {_value(config.beta)}, "
                              f"heads' {config.head_reduction}")
    if amcl_modes:
        lines.append(f"AMCL settings as run ({grid.methods[0]}): " + "; ".join(amcl_modes) + ".")
    named = [m for m in grid.modes if m not in MODE_OPTIONS]
    if named:
        lines.append("Variants: " + "; ".join(
            f"{m}: " + ", ".join(f"--{k.replace('_', '-')} {_value(v)}" for k, v in grid.variants[m].items())
            for m in named) + ".")
    return lines


def _capital(text: str) -> str:
    """``text`` starting with a capital, names such as kNN left as they are."""
    return text if text.startswith("kNN") else text[:1].upper() + text[1:]


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def write_results(grid: Grid) -> dict[str, Any]:
    cells = {(m, mode, p): _cell_record(grid, m, mode, p)
             for m in grid.methods for p in grid.policies for mode in grid.modes}
    for metric in grid.metrics:
        _judge(grid, cells, metric)
    tables = [_table(grid, cells, metric) for metric in grid.metrics]
    finished = sum(r.metrics is not None for r in grid.runs)
    description = metric_info(grid.metric)[0]
    title = f"# amcl compare: {' vs '.join(_title(m) for m in grid.modes)}, {description.split(' (')[0]}"
    lines = [title, "",
             f"Methods {', '.join(grid.methods)}; augmentation policies {', '.join(grid.policies)}; "
             f"seeds {', '.join(map(str, grid.seeds))}; {finished} of {len(grid.runs)} runs finished.", "",
             *_settings(grid), ""]
    for metric, table in zip(grid.metrics, tables):
        if len(tables) > 1:
            title = metric_info(metric)[0]
            lines += [f"## {_capital(title)}", ""]
        lines += [table, ""]
    if finished < len(grid.runs):
        lines += ["The grid is not finished: the same `amcl compare` command with the same --out resumes it.", ""]
    shared = {k: v for k, v in grid.base.as_dict().items() if k not in GRID_OPTIONS}
    data = {
        "metric": grid.metric,
        "metric_description": description,
        "metrics": grid.metrics,
        "methods": grid.methods,
        "modes": grid.modes,
        "variants": {m: grid.variants[m] for m in grid.modes},
        "reference": REFERENCE if REFERENCE in grid.modes else None,
        "policies": grid.policies,
        "seeds": grid.seeds,
        "holm": grid.holm,
        "equivalence_margin": grid.margin,
        "labels_per_class": grid.labels_per_class,
        "label_protocol": grid.label_protocol if grid.labels_per_class else None,
        "label_draws": grid.label_draws if grid.labels_per_class else None,
        "config": shared,  # None: each method's default (see each cell's "config")
        "runs_finished": finished,
        "runs_total": len(grid.runs),
        "cells": list(cells.values()),
    }
    json_path, md_path = grid.out / "results.json", grid.out / "results.md"
    write_atomic(json_path, json.dumps(data, indent=2) + "\n")
    write_atomic(md_path, "\n".join(lines))
    paths = {"markdown": str(md_path), "json": str(json_path)}
    if grid.labels_per_class and any(r.metrics for r in grid.runs):
        paths["figure"] = str(few_label_figure(grid, cells))
    return {"table": "\n\n".join(tables), "cells": data["cells"], **paths}


def few_label_figure(grid: Grid, cells: dict[tuple[str, str, str], dict[str, Any]]) -> Path:
    """``few-labels.png``: accuracy against labelled images per class (log axis), one line per mode with the
    std over seeds as error bars, one panel per method and policy (the test split, as the paper's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    panels = [(m, p) for m in grid.methods for p in grid.policies]
    fig = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (method, policy) in zip(axes, panels):
        for mode in grid.modes:
            points = []
            for n in grid.labels_per_class:
                block = _metric_block(cells[(method, mode, policy)], few_label_metric(grid.label_protocol, n))
                if block["mean"] is not None:
                    points.append((n, 100 * block["mean"], 100 * (block["std"] or 0.0)))
            if points:
                xs, ys, errors = zip(*points)
                ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=_title(mode))
        ax.set_xscale("log")
        ax.set_xticks(grid.labels_per_class, [str(n) for n in grid.labels_per_class])
        ax.set_xlabel("labelled images per class")
        protocol = "linear-probe" if grid.label_protocol == "linear" else "kNN"
        ax.set_ylabel(f"{protocol} top-1 on test (%), ± std over seeds", fontsize=8)
        ax.set_title(f"{method}, augs {policy}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path = grid.out / "few-labels.png"
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path
