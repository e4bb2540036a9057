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

from amcl.config import METHODS, PretrainConfig, coerce, option_names
from amcl.errors import AmclError, warn
from amcl.policies import parse_policy
from amcl.runs import config_differences, finished_metrics, read_config

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

#: Options the grid sets per run (they are not shared settings); a variant may set none but amcl.
GRID_OPTIONS = ("method", "amcl", "augs", "seed", "runs", "out")
#: Options whose defaults depend on the method or on AMCL (shown per method in results.md).
PER_METHOD = ("lr", "temperature", "beta", "heads", "proj_hidden", "proj_dim", "proj_layers", "predictor_hidden")
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

    @property
    def metrics(self) -> list[str]:
        return [self.metric] + (["linear_top1"] if self.linear and self.metric != "linear_top1" else [])

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
          linear: bool) -> Grid:
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
    grid = Grid(base, methods, modes, list(canonical), seeds, Path(out), metric, options, linear)
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
