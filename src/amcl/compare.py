"""``amcl compare``: baseline vs AMCL over a grid of methods x modes x augmentation policies x seeds.

A mode is ``baseline`` (the method's plain loss), ``amcl`` (AMCL with the shared options) or a named
variant: a set of options on top of the shared ones (e.g. ``softmax: {amcl-form: softmax}``), so one
grid can hold the paper's form, ours and the ablations. Every mode is compared with the baseline
seed by seed: the seeds vary only the initialisation, the augmentations and the batch order (the
data split has its own ``split_seed``), so the difference of two runs with one seed is a paired
measurement, and the table reports its mean, standard deviation and wins/ties/losses.

Every run of the grid lives in ``<out>/<method>-<mode>-<policy>/seed-<seed>/`` (the usual
``config.yaml``, ``metrics.json``, ``last.ckpt`` of :func:`amcl.train.pretrain_once`). After each
finished run ``<out>/results.json`` and ``<out>/results.md`` are rewritten (atomically), so a grid
stopped half-way still leaves a valid, partial table.

Resuming: a run whose ``metrics.json`` says ``"complete": true`` and whose ``config.yaml`` equals
the config it would run now is read back, not trained again; one saved with other settings stops
the grid with an :class:`AmclError` before anything is trained (results of different settings are
never mixed in one table); an unfinished run is trained again from scratch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence


from amcl.config import METHODS, PretrainConfig
from amcl.errors import AmclError, warn
from amcl.policies import parse_policy
from amcl.runs import RESUMABLE_CHANGES, config_differences, finished_metrics, read_config, summarize_runs, write_atomic

#: The built-in modes: each method's baseline, and AMCL with the shared options.
MODES = ("baseline", "amcl")
MODE_OPTIONS: dict[str, dict[str, Any]] = {"baseline": {"amcl": False}, "amcl": {"amcl": True}}
MODE_TITLES = {"baseline": "baseline", "amcl": "AMCL"}
#: The mode every other one is compared with, seed by seed.
REFERENCE = "baseline"

#: Metrics the table can report: (description, shown in %, higher is better).
METRICS: dict[str, tuple[str, bool, bool]] = {
    "final_knn_acc": ("final kNN accuracy (after the last epoch)", True, True),
    "best_knn_acc": ("best kNN accuracy over the epochs", True, True),
    "final_loss": ("final training loss", False, False),
    "linear_top1": ("linear-probe top-1 accuracy (frozen features)", True, True),
}
#: Where the linear-probe result of a run is kept (beside its checkpoint, as ``amcl eval`` writes it).
LINEAR_RESULT = "eval-linear.json"

#: Options the grid sets per run (they are not shared settings); a variant may set none but amcl.
GRID_OPTIONS = ("method", "amcl", "augs", "seed", "runs", "out")
#: Options whose defaults depend on the method or on AMCL (shown per method in results.md).
PER_METHOD = ("lr", "temperature", "beta", "heads", "proj_hidden", "proj_dim", "proj_layers", "predictor_hidden")
#: Shared options always named in results.md (others only when they differ from their default).
KEY_SETTINGS = ("dataset", "backbone", "image_size", "epochs", "batch_size")

_MAX_SEED = 2**32 - 1
_DASH = "–"


@dataclass
class _Run:
    """One pre-training run of the grid: a method, a mode, a policy and a seed."""

    method: str
    mode: str
    policy: str
    seed: int
    config: PretrainConfig
    metrics: dict[str, Any] | None = None  # the finished run's metrics.json
    reused: bool = False

    @property
    def folder(self) -> Path:
        return Path(self.config.out)

    @property
    def label(self) -> str:
        return f"{self.method} {self.mode} {self.policy} seed {self.seed}"


@dataclass
class _Grid:
    base: PretrainConfig
    methods: list[str]
    modes: list[str]
    policies: list[str]
    seeds: list[int]
    out: Path
    metric: str
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # each mode's options (MODE_OPTIONS too)
    linear: bool = False  # also report the linear probe (``linear_top1``)
    runs: list[_Run] = field(default_factory=list)

    @property
    def metrics(self) -> list[str]:
        return [self.metric] + (["linear_top1"] if self.linear and self.metric != "linear_top1" else [])

    def cell_runs(self, method: str, mode: str, policy: str) -> list[_Run]:
        return [r for r in self.runs if (r.method, r.mode, r.policy) == (method, mode, policy)]


def run_comparison(
    base: PretrainConfig,
    methods: Sequence[str],
    policies: Sequence[str],
    seeds: Sequence[int],
    modes: Sequence[str] | None = None,
    out: str | os.PathLike = "runs/compare",
    metric: str = "final_knn_acc",
    variants: dict[str, dict[str, Any]] | None = None,
    linear: bool = False,
) -> dict[str, Any]:
    """Pre-train (or read back) every run of the grid and write ``results.md`` and ``results.json``.

    ``base`` holds the shared options (``None`` fields get each method's defaults); its method,
    amcl, augs, seed, runs and out are set per run. ``variants`` names extra modes, each a mapping of
    options over ``base`` (AMCL unless it sets ``amcl: false``); ``modes`` picks the modes to run
    (default: baseline and amcl, or baseline and every variant). With ``linear`` every run is also
    evaluated with the linear probe (:func:`amcl.eval.protocols.evaluate_checkpoint`, kept as
    ``eval-linear.json`` beside its checkpoint), reported in a second table. Every run's config is
    checked, and finished runs in ``out`` are compared with it, before anything is trained. Returns
    ``table`` (the markdown tables and their legends), ``markdown`` and ``json`` (the files' paths),
    ``cells`` (one record per method x mode x policy, as in results.json), ``trained`` and ``reused``
    (run counts).
    """
    variants = parse_variants(variants or {})
    linear = linear or metric == "linear_top1"
    if modes is None:
        modes = [REFERENCE, *variants] if variants else list(MODES)
    grid = _plan(base, methods, policies, seeds, modes, out, metric, variants, linear)
    for run in grid.runs:
        run.metrics = _finished_metrics(run)
        run.reused = run.metrics is not None
    created = [p for p in (grid.out, grid.out / "results.md", grid.out / "results.json") if not p.exists()]
    try:
        grid.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AmclError(f"cannot write outputs to --out {grid.out}: {exc.strerror}; choose a writable folder") \
            from None

    from amcl.train import pretrain_once  # Lightning loads only when a grid trains

    total, reused = len(grid.runs), sum(r.reused for r in grid.runs)
    print(f"amcl compare: {total} runs ({', '.join(grid.methods)} x {', '.join(grid.modes)} x augs "
          f"{', '.join(grid.policies)} x seeds {', '.join(map(str, grid.seeds))}) in {grid.out}"
          + (f"; {reused} finished earlier" if reused else ""), flush=True)
    paths = _write_results(grid)
    for i, run in enumerate(grid.runs, 1):
        prefix = f"[{i}/{total}] {run.label}"
        if run.reused:
            _add_linear(grid, run)
            print(f"{prefix}: skipped (finished earlier), {_metrics_text(run.metrics, grid.metrics)}", flush=True)
            continue
        resumed = (run.folder / "last.ckpt").is_file()
        print(f"{prefix}: {'resuming from its last checkpoint' if resumed else 'training'}", flush=True)
        started = time.perf_counter()
        try:
            run.metrics = pretrain_once(run.config, resume=True)  # an unfinished run continues where it stopped
        except AmclError:
            if not any(r.metrics for r in grid.runs):  # the grid could not even start (e.g. bad data path)
                _remove_created(created, run.folder)
            raise
        _add_linear(grid, run)
        print(f"{prefix}: done in {time.perf_counter() - started:.1f} s, {_metrics_text(run.metrics, grid.metrics)}",
              flush=True)
        paths = _write_results(grid)
    paths = _write_results(grid)  # with the linear probes of reused runs
    table, cells = paths.pop("table"), paths.pop("cells")
    return {"table": table, "cells": cells, "trained": total - reused, "reused": reused, **paths}


def _add_linear(grid: _Grid, run: _Run) -> None:
    """With ``--linear``: the run's linear-probe top-1 into its metrics (read back, or evaluated once now)."""
    if not grid.linear or run.metrics is None:
        return
    result_path = run.folder / LINEAR_RESULT
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        from amcl.eval.protocols import evaluate_checkpoint

        result = evaluate_checkpoint(run.folder / "last.ckpt", "linear", out=result_path)
    run.metrics["linear_top1"] = result.get("top1")


def parse_variants(variants: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Check named variants (``{name: {option: value}}``; option names with - or _) and return them with
    typed values and ``amcl`` set (True unless given). Raises AmclError naming the problem."""
    from amcl.config import coerce, option_names

    known = set(option_names())
    parsed: dict[str, dict[str, Any]] = {}
    if not isinstance(variants, dict):
        raise AmclError("variants must be a mapping of name: {option: value, ...}")
    for name, options in variants.items():
        name = str(name)
        if name in MODE_OPTIONS:
            raise AmclError(f"variant {name!r}: the name is a built-in mode ({', '.join(MODES)}); choose another")
        if not name or not all(ch.isalnum() or ch in "._-" for ch in name):
            raise AmclError(f"variant {name!r}: use letters, digits, '.', '_' and '-' only (it names the run folders)")
        if not isinstance(options, dict):
            raise AmclError(f"variant {name!r} must map options to values, e.g. {{amcl-form: softmax}}")
        values: dict[str, Any] = {"amcl": True}
        for key, value in options.items():
            option = str(key).replace("-", "_")
            if option not in known:
                raise AmclError(f"variant {name!r}: unknown option {key!r}")
            if option in GRID_OPTIONS and option != "amcl":
                raise AmclError(f"variant {name!r}: --{option.replace('_', '-')} is set by the grid for every run; "
                                "a variant may not set it")
            values[option] = coerce(option, value)
        parsed[name] = values
    return parsed


def _remove_created(created: list[Path], run_folder: Path) -> None:
    """Undo what a grid that failed on its first run wrote: its result files, and folders left empty."""
    for path in [p for p in created if p.is_file()]:
        path.unlink()
    for folder in (run_folder, run_folder.parent, *[p for p in created if not p.suffix]):
        try:
            folder.rmdir()  # only if empty
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------- planning


def _plan(base: PretrainConfig, methods: Sequence[str], policies: Sequence[str], seeds: Sequence[int],
          modes: Sequence[str], out: str | os.PathLike, metric: str, variants: dict[str, dict[str, Any]],
          linear: bool) -> _Grid:
    """Check the grid's inputs and resolve every run's config (raises AmclError, trains nothing)."""
    if metric not in METRICS:
        raise AmclError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    methods = _unique("--methods", methods, "a method, e.g. simclr")
    for method in methods:
        if method not in METHODS:
            raise AmclError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    modes = _unique("--modes", modes, "baseline and/or amcl")
    options = {**MODE_OPTIONS, **variants}
    for mode in modes:
        if mode not in options:
            named = f", or a variant ({', '.join(variants)})" if variants else ""
            raise AmclError(f"unknown mode {mode!r}; choose baseline and/or amcl{named}")
    seeds = _unique("--seeds", seeds, "a seed, e.g. 0")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
            raise AmclError(f"--seeds: {seed!r} is not a seed; use whole numbers from 0 to {_MAX_SEED}")
    if isinstance(policies, str):
        policies = policies.split(",")
    canonical: dict[str, str] = {}
    for text in _unique("--augs", [str(p).strip().lower() for p in policies], "a policy, e.g. a,ab,abc"):
        try:
            key = parse_policy(text)
        except ValueError as exc:
            raise AmclError(f"--augs: {exc}") from None
        if key in canonical.values():
            same = next(p for p, k in canonical.items() if k == key)
            warn(f"augmentation policy {text!r} is the same as {same!r}; it is run once, as {same!r}")
            continue
        canonical[text] = key
    grid = _Grid(base, methods, modes, list(canonical), seeds, Path(out), metric, options, linear)
    for method in grid.methods:
        for policy in grid.policies:
            for seed in grid.seeds:
                for mode in grid.modes:
                    folder = grid.out / f"{method}-{mode}-{policy}" / f"seed-{seed}"
                    config = replace(base, **options[mode], method=method, augs=policy, seed=seed, runs=1,
                                     out=str(folder))
                    try:
                        config = config.resolved()
                    except AmclError as exc:
                        raise AmclError(f"{method} {mode}: {exc}") from None
                    grid.runs.append(_Run(method, mode, policy, seed, config))
    return grid


def _unique(option: str, values: Iterable[Any] | None, example: str) -> list[Any]:
    """The values in their order, duplicates dropped; AmclError when there are none."""
    if isinstance(values, (str, int)):
        values = [values]
    unique = list(dict.fromkeys(values or []))
    if not unique:
        raise AmclError(f"{option}: give at least one, {example}")
    return unique


def _finished_metrics(run: _Run) -> dict[str, Any] | None:
    """The run's metrics if it finished with the settings it would run with now; None to (re-)train it."""
    folder = run.folder
    metrics = finished_metrics(folder)
    if metrics is None:
        return None  # not started, or cut off: train (or resume) it
    fix = f"use another --out for this grid, or delete {folder} to run it again"
    try:
        saved = read_config(folder / "config.yaml")
    except AmclError:
        raise AmclError(f"the finished run in {folder} has no readable config.yaml, so its settings cannot be "
                        f"checked; {fix}") from None
    differences = config_differences(saved, run.config)
    if differences:
        shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
        raise AmclError(f"{folder} holds a finished run with other settings ({shown}); {fix}")
    return metrics


# ---------------------------------------------------------------------------------------------- results


def _metric_value(metrics: dict[str, Any] | None, metric: str) -> float | None:
    value = (metrics or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _metrics_text(metrics: dict[str, Any] | None, names: Sequence[str]) -> str:
    texts = []
    for name in names:
        value = _metric_value(metrics, name)
        texts.append(f"{name} {value:.4f}" if value is not None else f"{name} n/a")
    return ", ".join(texts)


def _title(mode: str) -> str:
    return MODE_TITLES.get(mode, mode)


def _statistics(runs: Sequence[_Run], metric: str) -> dict[str, Any]:
    values = [_metric_value(r.metrics, metric) for r in runs if r.metrics is not None]
    present = [v for v in values if v is not None]
    return {
        "values": values,  # per finished seed, None where the run did not report the metric
        "n": len(present),
        "mean": statistics.fmean(present) if present else None,
        "std": statistics.stdev(present) if len(present) > 1 else None,  # sample std
    }


def _paired(grid: _Grid, method: str, mode: str, policy: str, metric: str) -> dict[str, Any] | None:
    """This mode minus the baseline, seed by seed (same split, same seed): the differences, their mean and
    sample std, and wins/ties/losses (a win is better by the metric's direction). None for the baseline
    itself, or without one in the grid."""
    if mode == REFERENCE or REFERENCE not in grid.modes:
        return None
    higher = METRICS[metric][2]
    reference = {r.seed: _metric_value(r.metrics, metric) for r in grid.cell_runs(method, REFERENCE, policy)}
    seeds, differences = [], []
    for run in grid.cell_runs(method, mode, policy):
        value, base = _metric_value(run.metrics, metric), reference.get(run.seed)
        if value is not None and base is not None:
            seeds.append(run.seed)
            differences.append(value - base)
    better = [d > 0 if higher else d < 0 for d in differences]
    ties = sum(d == 0 for d in differences)
    return {
        "reference": REFERENCE,
        "seeds": seeds,
        "differences": differences,
        "n": len(differences),
        "mean": statistics.fmean(differences) if differences else None,
        "std": statistics.stdev(differences) if len(differences) > 1 else None,
        "wins": sum(better),
        "ties": ties,
        "losses": len(differences) - sum(better) - ties,
    }


def _cell_record(grid: _Grid, method: str, mode: str, policy: str) -> dict[str, Any]:
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
    _, percent, _ = METRICS[metric]
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
    scale, digits = (100.0, 2) if METRICS[metric][1] else (1.0, 4)
    text = _signed(scale * paired["mean"], digits)
    if paired["std"] is not None:
        text += f" ± {scale * paired['std']:.{digits}f}"
    return text + f" ({paired['wins']}/{paired['ties']}/{paired['losses']})"


def _table(grid: _Grid, cells: dict[tuple[str, str, str], dict[str, Any]], metric: str) -> str:
    description, percent, higher = METRICS[metric]
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
    legend = (f"{description[0].upper()}{description[1:]}{unit}, mean ± sample std over {n} seed{'s' * (n > 1)} "
              f"({', '.join(map(str, grid.seeds))}), {digits} decimals; pending: not run yet; n/a: the runs did "
              f"not report {metric}")
    if len(grid.modes) > 1:
        legend += f". Bold: the best mean of the row ({'higher' if higher else 'lower'} is better; none on a tie)"
    if paired:
        legend += (f"; Δ (paired) = the mode minus the baseline of the same seed{' in percentage points' * percent}"
                   f", mean ± sample std of those differences, then (wins/ties/losses) over the seeds, shown when "
                   f"both cells have every seed")
    return "\n".join(lines) + "\n\n" + legend + "."


def _settings(grid: _Grid) -> list[str]:
    """Markdown lines describing the grid's shared settings and each method's resolved defaults."""
    first = grid.runs[0].config
    defaults = PretrainConfig()
    shown = [f"{name.replace('_', ' ')} {_value(getattr(first, name))}" for name in KEY_SETTINGS]
    skip = set(KEY_SETTINGS) | set(GRID_OPTIONS) | set(RESUMABLE_CHANGES) | set(PER_METHOD)
    others = [f"--{f.name.replace('_', '-')} {_value(getattr(first, f.name))}" for f in dataclasses.fields(first)
              if f.name not in skip and getattr(first, f.name) != getattr(defaults, f.name)
              and all(getattr(run.config, f.name) == getattr(first, f.name) for run in grid.runs)]
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
            amcl_modes.append(f"{_title(mode)}: {form}{tau}, beta {_value(config.beta)}, heads' {config.head_reduction}")
    if amcl_modes:
        lines.append(f"AMCL settings as run ({grid.methods[0]}): " + "; ".join(amcl_modes) + ".")
    named = [m for m in grid.modes if m not in MODE_OPTIONS]
    if named:
        lines.append("Variants: " + "; ".join(
            f"{m}: " + ", ".join(f"--{k.replace('_', '-')} {_value(v)}" for k, v in grid.variants[m].items())
            for m in named) + ".")
    return lines


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _write_results(grid: _Grid) -> dict[str, Any]:
    cells = {(m, mode, p): _cell_record(grid, m, mode, p)
             for m in grid.methods for p in grid.policies for mode in grid.modes}
    tables = [_table(grid, cells, metric) for metric in grid.metrics]
    finished = sum(r.metrics is not None for r in grid.runs)
    description = METRICS[grid.metric][0]
    title = f"# amcl compare: {' vs '.join(_title(m) for m in grid.modes)}, {description.split(' (')[0]}"
    lines = [title, "",
             f"Methods {', '.join(grid.methods)}; augmentation policies {', '.join(grid.policies)}; "
             f"seeds {', '.join(map(str, grid.seeds))}; {finished} of {len(grid.runs)} runs finished.", "",
             *_settings(grid), ""]
    for metric, table in zip(grid.metrics, tables):
        if len(tables) > 1:
            lines += [f"## {METRICS[metric][0][0].upper()}{METRICS[metric][0][1:]}", ""]
        lines += [table, ""]
    if finished < len(grid.runs):
        lines += ["The grid is not finished: the same `amcl compare` command with the same --out resumes it.", ""]
    shared = {k: v for k, v in dataclasses.asdict(grid.base).items() if k not in GRID_OPTIONS}
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
        "config": shared,  # None: each method's default (see each cell's "config")
        "runs_finished": finished,
        "runs_total": len(grid.runs),
        "cells": list(cells.values()),
    }
    json_path, md_path = grid.out / "results.json", grid.out / "results.md"
    write_atomic(json_path, json.dumps(data, indent=2) + "\n")
    write_atomic(md_path, "\n".join(lines))
    return {"table": "\n\n".join(tables), "cells": data["cells"], "markdown": str(md_path), "json": str(json_path)}
