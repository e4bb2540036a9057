"""``amcl compare``: baseline vs AMCL over a grid of methods x augmentation policies x seeds.

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

import yaml

from amcl.config import METHODS, PretrainConfig
from amcl.errors import AmclError, warn

MODES = ("baseline", "amcl")
MODE_TITLES = {"baseline": "baseline", "amcl": "AMCL"}

#: Metrics the table can report: (description, shown in %, higher is better).
METRICS: dict[str, tuple[str, bool, bool]] = {
    "final_knn_acc": ("final kNN accuracy (after the last epoch)", True, True),
    "best_knn_acc": ("best kNN accuracy over the epochs", True, True),
    "final_loss": ("final training loss", False, False),
}

#: Options the grid sets per run (they are not shared settings).
GRID_OPTIONS = ("method", "amcl", "augs", "seed", "runs", "out")
#: Options that do not change what a run trains: a finished run saved with other values is still reused.
NOT_COMPARED = ("out", "progress", "workers", "cache_images")
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
    runs: list[_Run] = field(default_factory=list)

    def cell_runs(self, method: str, mode: str, policy: str) -> list[_Run]:
        return [r for r in self.runs if (r.method, r.mode, r.policy) == (method, mode, policy)]


def run_comparison(
    base: PretrainConfig,
    methods: Sequence[str],
    policies: Sequence[str],
    seeds: Sequence[int],
    modes: Sequence[str] = MODES,
    out: str | os.PathLike = "runs/compare",
    metric: str = "final_knn_acc",
) -> dict[str, Any]:
    """Pre-train (or read back) every run of the grid and write ``results.md`` and ``results.json``.

    ``base`` holds the shared options (``None`` fields get each method's defaults); its method,
    amcl, augs, seed, runs and out are set per run. Every run's config is checked, and finished
    runs in ``out`` are compared with it, before anything is trained. Returns ``table`` (the
    markdown table and its legend), ``markdown`` and ``json`` (the files' paths), ``cells`` (one
    record per method x mode x policy, as in results.json), ``trained`` and ``reused`` (run counts).
    """
    grid = _plan(base, methods, policies, seeds, modes, out, metric)
    for run in grid.runs:
        run.metrics = _finished_metrics(run)
        run.reused = run.metrics is not None
    created = [p for p in (grid.out, grid.out / "results.md", grid.out / "results.json") if not p.exists()]
    try:
        grid.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AmclError(f"cannot write outputs to --out {grid.out}: {exc.strerror}; choose a writable folder") \
            from None

    from amcl.train import pretrain_once

    total, reused = len(grid.runs), sum(r.reused for r in grid.runs)
    print(f"amcl compare: {total} runs ({', '.join(grid.methods)} x {', '.join(grid.modes)} x augs "
          f"{', '.join(grid.policies)} x seeds {', '.join(map(str, grid.seeds))}) in {grid.out}"
          + (f"; {reused} finished earlier" if reused else ""), flush=True)
    paths = _write_results(grid)
    for i, run in enumerate(grid.runs, 1):
        prefix = f"[{i}/{total}] {run.label}"
        if run.reused:
            print(f"{prefix}: skipped (finished earlier), {_metric_text(run.metrics, grid.metric)}", flush=True)
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
        print(f"{prefix}: done in {time.perf_counter() - started:.1f} s, {_metric_text(run.metrics, grid.metric)}",
              flush=True)
        paths = _write_results(grid)
    table, cells = paths.pop("table"), paths.pop("cells")
    return {"table": table, "cells": cells, "trained": total - reused, "reused": reused, **paths}


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
          modes: Sequence[str], out: str | os.PathLike, metric: str) -> _Grid:
    """Check the grid's inputs and resolve every run's config (raises AmclError, trains nothing)."""
    from amcl.data.augment import parse_policy

    if metric not in METRICS:
        raise AmclError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    methods = _unique("--methods", methods, "a method, e.g. simclr")
    for method in methods:
        if method not in METHODS:
            raise AmclError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    modes = _unique("--modes", modes, "baseline and/or amcl")
    for mode in modes:
        if mode not in MODES:
            raise AmclError(f"unknown mode {mode!r}; choose baseline and/or amcl")
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
    grid = _Grid(base, methods, modes, list(canonical), seeds, Path(out), metric)
    for method in grid.methods:
        for policy in grid.policies:
            for seed in grid.seeds:
                for mode in grid.modes:
                    folder = grid.out / f"{method}-{mode}-{policy}" / f"seed-{seed}"
                    config = replace(base, method=method, amcl=mode == "amcl", augs=policy, seed=seed, runs=1,
                                     out=str(folder))
                    try:
                        config = config.resolved()
                        config = replace(config, precision=_effective_precision(config))  # as pretrain saves it
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
    from amcl.train import finished_metrics

    folder = run.folder
    metrics = finished_metrics(folder)
    if metrics is None:
        return None  # not started, or cut off: train (or resume) it
    fix = f"use another --out for this grid, or delete {folder} to run it again"
    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        saved = None
    if not isinstance(saved, dict):
        raise AmclError(f"the finished run in {folder} has no readable config.yaml, so its settings cannot be "
                        f"checked; {fix}")
    differences = _differences(saved, dataclasses.asdict(run.config))
    if differences:
        shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
        raise AmclError(f"{folder} holds a finished run with other settings ({shown}); {fix}")
    return metrics


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    from amcl.data.augment import parse_policy

    def same(name: str, a: Any, b: Any) -> bool:
        if name == "augs":
            try:
                return parse_policy(str(a)) == parse_policy(str(b))
            except ValueError:
                return False
        return a == b and isinstance(a, bool) == isinstance(b, bool)  # 1 == 1.0, but True != 1

    out = []
    for name in dict.fromkeys([*current, *saved]):
        if name in NOT_COMPARED:
            continue
        there, now = saved.get(name, "(unset)"), current.get(name, "(unknown option)")
        if not same(name, there, now):
            out.append(f"{name.replace('_', '-')} {there} there, {now} now")
    return out


# ---------------------------------------------------------------------------------------------- results


def _metric_value(metrics: dict[str, Any] | None, metric: str) -> float | None:
    value = (metrics or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _metric_text(metrics: dict[str, Any] | None, metric: str) -> str:
    value = _metric_value(metrics, metric)
    return f"{metric} {value:.4f}" if value is not None else f"{metric} n/a"


def _cell_record(grid: _Grid, method: str, mode: str, policy: str) -> dict[str, Any]:
    from amcl.train import summarize_runs

    runs = grid.cell_runs(method, mode, policy)
    finished = [r for r in runs if r.metrics is not None]
    per_seed = []
    for run in finished:
        values = {k: v["mean"] for k, v in summarize_runs([run.metrics]).items()}
        per_seed.append({"seed": run.seed, grid.metric: _metric_value(run.metrics, grid.metric),
                         **{k: v for k, v in values.items() if k != grid.metric}})
    values = [_metric_value(r.metrics, grid.metric) for r in finished]
    present = [v for v in values if v is not None]
    status = "pending" if not finished else "complete" if len(finished) == len(runs) else "partial"
    return {
        "method": method,
        "mode": mode,
        "policy": policy,
        "out": str(grid.out / f"{method}-{mode}-{policy}"),
        "status": status,
        "seeds": [r.seed for r in runs],
        "finished_seeds": [r.seed for r in finished],
        "metric": grid.metric,
        "values": values,  # per finished seed, None where the run did not report the metric
        "n": len(present),
        "mean": statistics.fmean(present) if present else None,
        "std": statistics.stdev(present) if len(present) > 1 else None,  # sample std
        "per_seed": per_seed,
        "summary": summarize_runs([r.metrics for r in finished]) if finished else {},
        "config": {k: getattr(runs[0].config, k) for k in PER_METHOD},
    }


def _format(cell: dict[str, Any], grid: _Grid) -> str:
    if cell["status"] == "pending":
        return "pending"
    if cell["mean"] is None:
        return "n/a"
    _, percent, _ = METRICS[grid.metric]
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    text = f"{scale * cell['mean']:.{digits}f}"
    if cell["std"] is not None:
        text += f" ± {scale * cell['std']:.{digits}f}"
    if cell["n"] < len(cell["seeds"]):
        text += f" ({cell['n']}/{len(cell['seeds'])} seeds)"
    return text


def _table(grid: _Grid, cells: dict[tuple[str, str, str], dict[str, Any]]) -> str:
    description, percent, higher = METRICS[grid.metric]
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    pair = len(grid.modes) == 2
    header = ["method", "augs", *(MODE_TITLES[m] for m in grid.modes)]
    if pair:
        header.append("Δ AMCL − baseline")
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for method in grid.methods:
        for policy in grid.policies:
            row = [cells[(method, m, policy)] for m in grid.modes]
            texts = [_format(c, grid) for c in row]
            if pair:
                base, amcl = (cells[(method, m, policy)] for m in ("baseline", "amcl"))
                delta = _DASH
                if all(c["status"] == "complete" and c["n"] == len(c["seeds"]) for c in (base, amcl)):
                    delta = f"{scale * (amcl['mean'] - base['mean']):+.{digits}f}"
                    if delta[1:] == f"{0:.{digits}f}":
                        delta = delta[1:]  # no sign on a zero difference
                    shown = [round(scale * c["mean"], digits) for c in (base, amcl)]
                    if shown[0] != shown[1]:
                        better = (shown[1] > shown[0]) == higher
                        index = grid.modes.index("amcl" if better else "baseline")
                        texts[index] = f"**{texts[index]}**"
                texts.append(delta)
            lines.append("| " + " | ".join([method, policy, *texts]) + " |")
    n = len(grid.seeds)
    unit = " in %" if percent else ""
    legend = (f"{description[0].upper()}{description[1:]}{unit}, mean ± sample std over {n} seed{'s' * (n > 1)} "
              f"({', '.join(map(str, grid.seeds))}), {digits} decimals; pending: not run yet; n/a: the runs did "
              f"not report {grid.metric}")
    if pair:
        legend += (f". Bold: the better mean of each baseline/AMCL pair ({'higher' if higher else 'lower'} is "
                   f"better; none on a tie); Δ = AMCL − baseline{' in percentage points' if percent else ''}, "
                   f"shown when both cells have every seed")
    return "\n".join(lines) + "\n\n" + legend + "."


def _settings(grid: _Grid) -> list[str]:
    """Markdown lines describing the grid's shared settings and each method's resolved defaults."""
    first = grid.runs[0].config
    defaults = PretrainConfig()
    shown = [f"{name.replace('_', ' ')} {_value(getattr(first, name))}" for name in KEY_SETTINGS]
    skip = set(KEY_SETTINGS) | set(GRID_OPTIONS) | set(NOT_COMPARED) | set(PER_METHOD)
    others = [f"--{f.name.replace('_', '-')} {_value(getattr(first, f.name))}" for f in dataclasses.fields(first)
              if f.name not in skip and getattr(first, f.name) != getattr(defaults, f.name)]
    lines = ["Shared settings: " + ", ".join(shown) + "."]
    if others:
        lines.append("Other options set for every run: " + ", ".join(others) + ".")
    per_method = []
    for method in grid.methods:
        configs = {mode: grid.cell_runs(method, mode, grid.policies[0])[0].config for mode in grid.modes}
        some = next(iter(configs.values()))
        heads = " / ".join(f"{c.heads} {MODE_TITLES[m]}" for m, c in configs.items())
        per_method.append(f"{method} lr {_value(some.lr)}, temperature {_value(some.temperature)}, heads {heads}")
    lines.append("Per method (its defaults unless set): " + "; ".join(per_method) + ".")
    return lines


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _write_results(grid: _Grid) -> dict[str, Any]:
    cells = {(m, mode, p): _cell_record(grid, m, mode, p)
             for m in grid.methods for p in grid.policies for mode in grid.modes}
    table = _table(grid, cells)
    finished = sum(r.metrics is not None for r in grid.runs)
    description = METRICS[grid.metric][0]
    title = f"# amcl compare: {' vs '.join(MODE_TITLES[m] for m in grid.modes)}, {description.split(' (')[0]}"
    lines = [title, "",
             f"Methods {', '.join(grid.methods)}; augmentation policies {', '.join(grid.policies)}; "
             f"seeds {', '.join(map(str, grid.seeds))}; {finished} of {len(grid.runs)} runs finished.", "",
             *_settings(grid), "", table, ""]
    if finished < len(grid.runs):
        lines += ["The grid is not finished: the same `amcl compare` command with the same --out resumes it.", ""]
    shared = {k: v for k, v in dataclasses.asdict(grid.base).items() if k not in GRID_OPTIONS}
    data = {
        "metric": grid.metric,
        "metric_description": description,
        "methods": grid.methods,
        "modes": grid.modes,
        "policies": grid.policies,
        "seeds": grid.seeds,
        "config": shared,  # None: each method's default (see each cell's "config")
        "runs_finished": finished,
        "runs_total": len(grid.runs),
        "cells": list(cells.values()),
    }
    json_path, md_path = grid.out / "results.json", grid.out / "results.md"
    _write_atomic(json_path, json.dumps(data, indent=2) + "\n")
    _write_atomic(md_path, "\n".join(lines))
    return {"table": table, "cells": data["cells"], "markdown": str(md_path), "json": str(json_path)}


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file and ``os.replace``: a reader, or a grid killed while
    writing, never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _effective_precision(config: PretrainConfig) -> str:
    from amcl.train import effective_precision

    return effective_precision(config)
