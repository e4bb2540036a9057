"""The typed pre-training configuration: every option of ``amcl pretrain``, its default and its checks.

Defaults that depend on the method (learning rate, temperature, beta) live in ``METHOD_DEFAULTS``
and fill the options left unset (``None``); paper settings beyond those are YAML presets in
``configs/``. A config can come from YAML (``--config FILE.yaml``) and the command line, the
command line winning.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from amcl.errors import AmclError

METHODS = ("simclr",)
DATASETS = ("digits", "synthetic", "cifar10", "cifar100", "stl10")
TEMPERATURE_MODES = ("adaptive", "constant", "positive", "negative")

#: Per-method defaults from the authors' code (DESIGN section 2).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "simclr": {"lr": 0.06, "temperature": 0.5, "beta": 1e-4, "proj_hidden": 512, "proj_dim": 128, "proj_layers": 2},
}

#: Image size used when ``image_size`` is unset.
DATASET_IMAGE_SIZES = {"digits": 16, "synthetic": 32, "cifar10": 32, "cifar100": 32, "stl10": 96}


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class PretrainConfig:
    """All options of a pre-training run. ``None`` means "the method's or dataset's default"."""

    # method
    method: str = _opt("simclr", "self-supervised method", METHODS)
    amcl: bool = _opt(False, "use the AMCL loss (several heads, adaptive temperature) instead of the baseline")
    heads: int | None = _opt(None, "number of projection heads C (default: 3 with --amcl, else 1)")
    temperature_mode: str = _opt(
        "adaptive",
        "AMCL temperatures: adaptive (learned, pair-wise), constant (--temperature), or adaptive only for "
        "positive / negative pairs (the paper's ablations)",
        TEMPERATURE_MODES,
    )
    beta: float | None = _opt(None, "weight of the temperature regulariser Omega (default: 1e-4)")
    tau_min: float = _opt(1e-5, "lowest adaptive temperature")
    tau_max: float = _opt(2.0, "highest adaptive temperature")
    topk: int = _opt(1, "AMCL: average the negative terms over the k hardest negatives (1 = Eq. 2.1 exactly)")
    temperature: float | None = _opt(None, "constant temperature of the baseline loss (SimCLR: 0.5)")
    temperature_hidden: int = _opt(128, "hidden width of the temperature network phi")
    proj_hidden: int | None = _opt(None, "hidden width of each projection head (SimCLR: 512)")
    proj_dim: int | None = _opt(None, "output size d' of each projection head (SimCLR: 128)")
    proj_layers: int | None = _opt(None, "linear layers per projection head (SimCLR: 2)")
    # data
    dataset: str = _opt("digits", "dataset to pre-train on", DATASETS)
    data_root: str | None = _opt(None, "folder holding the dataset files (not needed for digits, synthetic)")
    image_size: int | None = _opt(None, "side of the training images in pixels (default: the dataset's)")
    augs: str = _opt("default", "augmentation policy: letters from abcde, 'default' (= acde) or 'color'")
    color_strength: float = _opt(0.5, "colour distortion strength s (policy letter d and 'color')")
    # model and optimisation
    backbone: str = _opt("resnet18", "encoder: resnet18/34/50 (CIFAR stem), *_imagenet stems, small_cnn")
    epochs: int = _opt(800, "training epochs")
    batch_size: int = _opt(512, "images per batch (each gives two views)")
    lr: float | None = _opt(None, "SGD learning rate (SimCLR: 0.06)")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(5e-4, "SGD weight decay")
    max_steps: int = _opt(-1, "stop after this many optimisation steps (-1: run all epochs)")
    # monitoring and runs
    knn_k: int = _opt(200, "neighbours of the kNN monitor")
    knn_t: float = _opt(0.1, "temperature of the kNN monitor's weights")
    knn_every: int = _opt(1, "run the kNN monitor every N epochs")
    runs: int = _opt(1, "repeat the run with seeds seed, seed+1, ... and summarise mean and std")
    seed: int = _opt(0, "random seed")
    out: str = _opt("runs/pretrain", "output folder (config.yaml, metrics.json, last.ckpt)")
    accelerator: str = _opt("auto", "Lightning accelerator: auto, cpu, gpu")
    precision: str = _opt("32-true", "Lightning precision, e.g. 32-true or bf16-mixed")
    progress: bool = _opt(True, "show a progress bar")

    def resolved(self) -> "PretrainConfig":
        """A copy with every ``None`` replaced by its default, validated (raises AmclError)."""
        values = dataclasses.asdict(self)
        for key, value in METHOD_DEFAULTS.get(self.method, {}).items():
            if values[key] is None:
                values[key] = value
        if values["heads"] is None:
            values["heads"] = 3 if self.amcl else 1
        if values["image_size"] is None:
            values["image_size"] = DATASET_IMAGE_SIZES.get(self.dataset, 32)
        cfg = PretrainConfig(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check values that need no data; raises AmclError naming the option and the fix."""
        for name in ("method", "dataset", "temperature_mode"):
            choices = _choices(name)
            if getattr(self, name) not in choices:
                raise AmclError(f"unknown {name} {getattr(self, name)!r}; choose one of: {', '.join(choices)}")
        from amcl.data.augment import parse_policy
        from amcl.nn.backbones import BACKBONES

        try:
            parse_policy(self.augs)
        except ValueError as exc:
            raise AmclError(f"--augs: {exc}") from None
        if self.backbone not in BACKBONES:
            raise AmclError(f"unknown backbone {self.backbone!r}; choose one of: {', '.join(sorted(BACKBONES))}")
        positive = ["heads", "epochs", "batch_size", "topk", "knn_k", "knn_every", "runs", "image_size",
                    "proj_hidden", "proj_dim", "proj_layers", "temperature_hidden"]
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise AmclError(f"--{_flag(name)} must be at least 1, got {getattr(self, name)}")
        if not (self.tau_min > 0 and self.tau_min < self.tau_max):
            raise AmclError(
                f"need 0 < --tau-min < --tau-max, got tau_min={self.tau_min}, tau_max={self.tau_max}"
            )
        for name in ("temperature", "lr", "knn_t"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise AmclError(f"--{_flag(name)} must be a positive number, got {value}")
        for name in ("beta", "color_strength", "momentum", "weight_decay"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise AmclError(f"--{_flag(name)} must be a number >= 0, got {value}")
        negatives = 2 * self.batch_size - 2
        if self.amcl and self.topk > negatives:
            raise AmclError(
                f"--topk {self.topk} is larger than the {negatives} negatives of a batch of {self.batch_size}; "
                f"use --topk <= {negatives} or a larger --batch-size"
            )
        if self.dataset in ("cifar10", "cifar100", "stl10") and not self.data_root:
            raise AmclError(f"--dataset {self.dataset} needs --data-root DIR (the folder holding its files)")

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _choices(name: str) -> tuple[str, ...]:
    return next(f.metadata["choices"] for f in dataclasses.fields(PretrainConfig) if f.name == name)


def field_types() -> dict[str, type]:
    """Each option's base type (int, float, str or bool), ``Optional`` unwrapped."""
    hints = typing.get_type_hints(PretrainConfig)
    out = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = args[0] if args else hint
    return out


def coerce(name: str, value: Any) -> Any:
    """Convert a YAML or CLI value to the option's type, or raise AmclError."""
    kind = field_types()[name]
    if value is None:
        return None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "on"):
                return True
            if str(value).lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise AmclError(f"option {_flag(name)}: expected {kind.__name__}, got {value!r}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Options from a YAML file (keys with - or _), checked against the known options."""
    path = Path(path)
    if not path.is_file():
        raise AmclError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise AmclError(f"config file {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise AmclError(f"config file {str(path)!r} must hold a mapping of option: value")
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise AmclError(f"config file {str(path)!r}: unknown option {key!r}; valid: {', '.join(sorted(known))}")
        out[name] = coerce(name, value)
    return out
