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

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

from amcl.compare_grid import (
    MODES,
    REFERENCE,
    Grid,
    Run,
    few_label_metric,
    finished_run_metrics,
    parse_variants,
    plan_grid,
)
from amcl.compare_tables import metrics_text, write_results
from amcl.config import PretrainConfig
from amcl.errors import AmclError, RunInterrupted
from amcl.eval.protocols import evaluate_checkpoint, result_name
from amcl.runs import MARKER, folder_entries, held_run, locked_folder, refuse_unsafe_out, write_config, write_marker
from amcl.train import pretrain_once

__all__ = ["parse_variants", "run_comparison"]


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
    holm: bool = False,
    margin: float | None = None,
    labels_per_class: Sequence[int] = (),
    label_protocol: str = "linear",
    label_draws: int = 5,
) -> dict[str, Any]:
    """Pre-train (or read back) every run of the grid and write ``results.md`` and ``results.json``.

    ``base`` holds the shared options (``None`` fields get each method's defaults); its method,
    amcl, augs, seed, runs and out are set per run. ``variants`` names extra modes, each a mapping of
    options over ``base`` (AMCL unless it sets ``amcl: false``); ``modes`` picks the modes to run
    (default: baseline and amcl, or baseline and every variant). With ``linear`` every run is also
    evaluated with the linear probe (:func:`amcl.eval.protocols.evaluate_checkpoint`, kept as
    ``eval-linear.json`` beside its checkpoint), reported in a second table; with ``labels_per_class`` also
    with the few-label protocol at each N (``label_protocol``, ``label_draws`` draws per run; kept as
    ``eval-<protocol>-<N>-per-class.json``), one table per N, and ``few-labels.png`` draws accuracy against N.
    Each paired difference gets its t-interval, p-value and verdict (:mod:`amcl.stats`); ``holm`` adjusts the
    p-values across the cells of each table, ``margin`` (points) allows "equivalent". Every run's config is
    checked, and finished runs in ``out`` are compared with it, before anything is trained. Returns
    ``table`` (the markdown tables and their legends), ``markdown`` and ``json`` (the files' paths),
    ``cells`` (one record per method x mode x policy, as in results.json), ``trained`` and ``reused``
    (run counts).
    """
    variants = parse_variants(variants or {})
    if modes is None:
        modes = [REFERENCE, *variants] if variants else list(MODES)
    grid = plan_grid(base, methods, policies, seeds, modes, out, metric, variants, linear, holm, margin,
                     labels_per_class, label_protocol, label_draws)
    for run in grid.runs:
        run.metrics = finished_run_metrics(run)
        run.reused = run.metrics is not None
    _check_grid_folder(grid.out)
    created = [p for p in (grid.out, grid.out / "results.md", grid.out / "results.json", grid.out / MARKER)
               if not p.exists()]
    write_config(grid.out)  # the folder, or one line naming --out
    try:
        with locked_folder(grid.out):  # one grid per folder at a time
            write_marker(grid.out, "grid")
            paths = _run_grid(grid)
    except AmclError:
        if not any(r.metrics for r in grid.runs):  # the grid could not even start (e.g. bad data path)
            _remove_created(created, grid.runs[0].folder)
        raise
    table, cells = paths.pop("table"), paths.pop("cells")
    reused = sum(r.reused for r in grid.runs)
    return {"table": table, "cells": cells, "trained": len(grid.runs) - reused, "reused": reused, **paths}


def _run_grid(grid: Grid) -> dict[str, Any]:
    """Train (or read back) every run in order, rewriting the results after each; returns their paths."""
    total, reused = len(grid.runs), sum(r.reused for r in grid.runs)
    print(f"amcl compare: {total} runs ({', '.join(grid.methods)} x {', '.join(grid.modes)} x augs "
          f"{', '.join(grid.policies)} x seeds {', '.join(map(str, grid.seeds))}) in {grid.out}"
          + (f"; {reused} finished earlier" if reused else ""), flush=True)
    write_results(grid)
    for i, run in enumerate(grid.runs, 1):
        prefix = f"[{i}/{total}] {run.label}"
        if run.reused:
            _add_evaluations(grid, run)
            print(f"{prefix}: skipped (finished earlier), {metrics_text(run.metrics, grid.metrics)}", flush=True)
            continue
        resumed = (run.folder / "last.ckpt").is_file()
        print(f"{prefix}: {'resuming from its last checkpoint' if resumed else 'training'}", flush=True)
        started = time.perf_counter()
        try:
            run.metrics = pretrain_once(run.config, resume=True)  # an unfinished run continues where it stopped
        except RunInterrupted as stopped:  # the grid continues as a whole: its finished runs are kept
            raise stopped.continued_by("the same `amcl compare` command (finished runs are reused)") from None
        _add_evaluations(grid, run)
        print(f"{prefix}: done in {time.perf_counter() - started:.1f} s, {metrics_text(run.metrics, grid.metrics)}",
              flush=True)
        write_results(grid)
    return write_results(grid)  # with the linear probes of reused runs


def _add_evaluations(grid: Grid, run: Run) -> None:
    """The run's evaluations into its metrics, each read back from its file beside the checkpoint (as ``amcl
    eval`` writes it) or evaluated once now: with ``--linear`` the linear probe (``linear_top1``), with
    ``--labels-per-class`` the few-label protocol at each N (:func:`few_label_metric`); with a validation split
    their validation-split values too."""
    if run.metrics is None:
        return
    if grid.linear:
        result = _evaluation(run, "linear", None, 1)
        run.metrics["linear_top1"] = result.get("top1")
        if "val_top1" in result:
            run.metrics["linear_val_top1"] = result["val_top1"]
    for n in grid.labels_per_class:
        result = _evaluation(run, grid.label_protocol, n, grid.label_draws)
        run.metrics[few_label_metric(grid.label_protocol, n)] = result.get("top1")
        if "val_top1" in result:
            run.metrics[few_label_metric(grid.label_protocol, n, val=True)] = result["val_top1"]


def _evaluation(run: Run, protocol: str, labels_per_class: int | None, draws: int) -> dict[str, Any]:
    path = run.folder / result_name(protocol, labels_per_class, {"label_draws": draws} if draws != 1 else {})
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        result = None
    if not isinstance(result, dict) or (labels_per_class and result.get("label_draws") != draws):
        options = {"labels_per_class": labels_per_class, "label_draws": draws} if labels_per_class else {}
        result = evaluate_checkpoint(run.folder / "last.ckpt", protocol, out=path, **options)
    return result


def _check_grid_folder(out: Path) -> None:
    """A grid writes into a new or empty folder or its own earlier grid (which it continues); never into a run's
    folder or one holding files that are not amcl's."""
    refuse_unsafe_out(out)
    entries = folder_entries(out)
    held = held_run(out) if entries else None
    if entries and (held is None or not held.endswith("compare grid")):
        what = f"holds {held}" if held else \
            f"is not empty and is not an amcl compare grid (it holds {', '.join(entries[:4])})"
        raise AmclError(f"{out} {what}; a compare grid writes only into a new or empty folder, or continues its own "
                        "earlier grid: choose another --out")


def _remove_created(created: list[Path], run_folder: Path) -> None:
    """Undo what a grid that failed on its first run wrote: its result files, and folders left empty."""
    for path in [p for p in created if p.is_file()]:
        path.unlink()
    for folder in (run_folder, run_folder.parent, *[p for p in created if not p.suffix]):
        try:
            folder.rmdir()  # only if empty
        except OSError:
            pass
