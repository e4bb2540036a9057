"""The grid of ``amcl compare``: its modes, metrics and runs, checked and resolved before anything trains.

A mode is ``baseline`` (the method's plain loss), ``amcl`` (AMCL with the shared options) or a named
variant: a set of options on top of the shared ones (e.g. ``softmax: {amcl-form: softmax}``). Every
run of the grid lives in ``<out>/<method>-<mode>-<policy>/seed-<seed>/``; a run that finished there
with the settings it would run with now is read back (:func:`finished_run_metrics`), one saved with other
settings stops the grid before anything is trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from amcl.config import PretrainConfig, coerce, option_names
from amcl.errors import AmclError, warn
from amcl.policies import parse_policy
from amcl.runs import config_differences, finished_metrics, read_config
from amcl.specs import method_dependent_options, method_names

#: The built-in modes: each method's baseline, and AMCL with the shared options.
MODES = ("baseline", "amcl")
MODE_OPTIONS: dict[str, dict[str, Any]] = {"baseline": {"amcl": False}, "amcl": {"amcl": True}}
MODE_TITLES = {"baseline": "baseline", "amcl": "AMCL"}
#: The mode every other one is compared with, seed by seed.
REFERENCE = "baseline"

#: Metrics the table can report: (description, shown in %, higher is better). Besides these, the few-label
#: metrics of ``--labels-per-class`` (:func:`few_label_metric`).
METRICS: dict[str, tuple[str, bool, bool]] = {
    "final_knn_acc": ("final kNN accuracy (after the last epoch)", True, True),
    "best_knn_acc": ("best kNN accuracy over the epochs", True, True),
    "final_loss": ("final training loss", False, False),
    "linear_top1": ("linear-probe top-1 accuracy (frozen features)", True, True),
    "final_val_knn_acc": ("final kNN accuracy on the validation split", True, True),
    "best_val_knn_acc": ("best kNN accuracy on the validation split over the epochs", True, True),
    "linear_val_top1": ("linear-probe top-1 accuracy on the validation split", True, True),
}
#: Each test-split metric's validation-split counterpart (reported beside it when the runs have a validation split).
VAL_METRICS = {"final_knn_acc": "final_val_knn_acc", "best_knn_acc": "best_val_knn_acc",
               "linear_top1": "linear_val_top1"}
#: The protocols of ``--labels-per-class``.
LABEL_PROTOCOLS = ("linear", "knn")


def few_label_metric(protocol: str, labels_per_class: int, val: bool = False) -> str:
    """The name of a few-label metric: ``linear_top1_10_per_class``, ``knn_val_top1_50_per_class``."""
    return f"{protocol}_{'val_' if val else ''}top1_{labels_per_class}_per_class"


def _few_label(name: str) -> tuple[str, bool, int] | None:
    """(protocol, validation split, labels per class) of a few-label metric's name, or None."""
    parts = name.split("_")
    if len(parts) < 5 or parts[0] not in LABEL_PROTOCOLS or parts[-2:] != ["per", "class"]:
        return None
    val = parts[1] == "val"
    if parts[1 + val] != "top1" or len(parts) != 5 + val or not parts[2 + val].isdigit():
        return None
    return parts[0], val, int(parts[2 + val])


def metric_info(name: str) -> tuple[str, bool, bool]:
    """A metric's (description, shown in %, higher is better); AmclError for an unknown name."""
    if name in METRICS:
        return METRICS[name]
    few = _few_label(name)
    if few is None:
        raise AmclError(f"unknown metric {name!r}; choose one of: {', '.join(METRICS)}, or "
                        f"{few_label_metric('linear', 10)} (with --labels-per-class 10)")
    protocol, val, n = few
    what = "linear-probe top-1" if protocol == "linear" else "kNN top-1"
    split = " on the validation split" if val else ""
    return f"{what} accuracy{split} with {n} labelled images per class (mean over draws)", True, True


def val_metric(name: str) -> str | None:
    """The validation-split counterpart of a test-split metric (None for those without one)."""
    few = _few_label(name)
    if few is not None:
        return None if few[1] else few_label_metric(few[0], few[2], val=True)
    return VAL_METRICS.get(name)


#: Options the grid sets per run (they are not shared settings); a variant may set none but amcl.
GRID_OPTIONS = ("method", "amcl", "augs", "seed", "runs", "out")
#: Options whose defaults depend on the method or on AMCL (shown per method in results.md and recorded per cell in
#: results.json), derived from the method specs.
PER_METHOD = method_dependent_options()
#: Shared options always named in results.md (others only when they differ from their default).
KEY_SETTINGS = ("dataset", "backbone", "image_size", "epochs", "batch_size")

_MAX_SEED = 2**32 - 1


@dataclass
class Run:
    """One pre-training run of the grid: a method, a mode, a policy and a seed, with its resolved config."""

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
class Grid:
    """The runs of every method x mode x policy x seed, and what the tables report."""

    base: PretrainConfig
    methods: list[str]
    modes: list[str]
    policies: list[str]
    seeds: list[int]
    out: Path
    metric: str
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # each mode's options (MODE_OPTIONS too)
    linear: bool = False  # also report the linear probe (``linear_top1``)
    runs: list[Run] = field(default_factory=list)
    holm: bool = False  # Holm-adjust the p-values across the cells of each table
    margin: float | None = None  # equivalence margin, in the table's units (points for accuracies)
    labels_per_class: list[int] = field(default_factory=list)  # the few-label protocol's N (one table each)
    label_protocol: str = "linear"
    label_draws: int = 5

    @property
    def metrics(self) -> list[str]:
        """The tables' metrics, in order: the chosen one, the linear probe's, the few-label ones; each with its
        validation-split counterpart when the runs have a validation split."""
        names = [self.metric] + (["linear_top1"] if self.linear else [])
        names += [few_label_metric(self.label_protocol, n) for n in self.labels_per_class]
        shown: list[str] = []
        for name in names:
            shown.append(name)
            partner = val_metric(name)
            if partner is not None and self.base.val_fraction:
                shown.append(partner)
        return list(dict.fromkeys(shown))

    def cell_runs(self, method: str, mode: str, policy: str) -> list[Run]:
        return [r for r in self.runs if (r.method, r.mode, r.policy) == (method, mode, policy)]


def parse_variants(variants: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Check named variants (``{name: {option: value}}``; option names with - or _) and return them with
    typed values and ``amcl`` set (True unless given). Raises AmclError naming the problem."""
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


def plan_grid(base: PretrainConfig, methods: Sequence[str], policies: Sequence[str], seeds: Sequence[int],
              modes: Sequence[str], out: str | os.PathLike, metric: str, variants: dict[str, dict[str, Any]],
              linear: bool, holm: bool = False, margin: float | None = None,
              labels_per_class: Sequence[int] = (), label_protocol: str = "linear", label_draws: int = 5) -> Grid:
    """Check the grid's inputs and resolve every run's config (raises AmclError, trains nothing)."""
    metric_info(metric)
    few = _few_label(metric)
    if ("_val_" in metric or metric.startswith("val_")) and not base.val_fraction:
        raise AmclError(f"--metric {metric} reads the validation split: give --val-fraction (e.g. 0.1) too")
    methods = _unique("--methods", methods, "a method, e.g. simclr")
    for method in methods:
        if method not in method_names():
            raise AmclError(f"unknown method {method!r}; choose one of: {', '.join(method_names())}")
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
    if few is not None and (few[0], few[2]) not in [(label_protocol, n) for n in labels_per_class]:
        raise AmclError(f"--metric {metric} needs --labels-per-class {few[2]} with --label-protocol {few[0]}")
    if label_protocol not in LABEL_PROTOCOLS:
        raise AmclError(f"unknown --label-protocol {label_protocol!r}; choose one of: {', '.join(LABEL_PROTOCOLS)}")
    for n in labels_per_class:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise AmclError(f"--labels-per-class: {n!r} is not a number of images; use whole numbers >= 1")
    if label_draws < 1:
        raise AmclError(f"--label-draws must be at least 1, got {label_draws}")
    if margin is not None and not (margin > 0 and margin < float("inf")):
        raise AmclError(f"--equivalence-margin must be a positive number (in points for accuracies), got {margin}")
    grid = Grid(base, methods, modes, list(canonical), seeds, Path(out), metric, options,
                linear or metric in ("linear_top1", "linear_val_top1"), holm=holm, margin=margin,
                labels_per_class=sorted(set(labels_per_class)), label_protocol=label_protocol,
                label_draws=label_draws)
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
                    grid.runs.append(Run(method, mode, policy, seed, config))
    return grid


def _unique(option: str, values: Iterable[Any] | None, example: str) -> list[Any]:
    """The values in their order, duplicates dropped; AmclError when there are none."""
    if isinstance(values, (str, int)):
        values = [values]
    unique = list(dict.fromkeys(values or []))
    if not unique:
        raise AmclError(f"{option}: give at least one, {example}")
    return unique


def finished_run_metrics(run: Run) -> dict[str, Any] | None:
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
