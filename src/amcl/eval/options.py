"""The options of ``amcl eval``, ``analyze`` and ``export``: one small dataclass per command on a shared
base (the data a checkpoint is read with, the device, the seed). The CLI's flags are generated from
their fields, as ``pretrain``'s are from :class:`~amcl.config.PretrainConfig`, and each command's
function takes the same names as keyword arguments; :meth:`validate` checks what needs no data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from amcl.errors import AmclError
from amcl.options import option
from amcl.policies import parse_policy

__all__ = ["AnalyzeOptions", "CheckpointOptions", "EvalOptions", "ExportOptions", "PROTOCOLS"]

PROTOCOLS = ("knn", "linear")


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None, metavar: str | None = None) -> Any:
    return option(default, help, choices, metavar=metavar)


def _at_least(name: str, value: int, least: int, why: str = "") -> None:
    if value is None or isinstance(value, bool) or int(value) < least:
        raise AmclError(f"--{name} must be at least {least}{why}, got {value}")


@dataclass
class CheckpointOptions:
    """What every command reading a checkpoint shares: the data it reads and where it computes."""

    dataset: str | None = _opt(None, "read another dataset than the checkpoint's (same choices as pretrain)",
                               metavar="DATASET")
    data_root: str | None = _opt(None, "where that dataset's files are [default: the checkpoint's]", metavar="DIR")
    workers: int | None = _opt(None, "DataLoader processes decoding folder images", metavar="N")
    device: str = _opt("auto", "auto (cuda if available), cpu, cuda, cuda:1 ...")
    seed: int = _opt(0, "random seed")

    def validate(self) -> None:
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 0):
            raise AmclError(f"--workers must be 0 (decode in the main process) or more, got {self.workers}")


@dataclass
class EvalOptions(CheckpointOptions):
    """``amcl eval``: weighted kNN or a linear probe on the frozen encoder."""

    protocol: str = _opt("knn", "evaluation protocol", PROTOCOLS)
    knn_k: int | None = _opt(None, "kNN neighbours [default: the checkpoint's]")
    knn_t: float | None = _opt(None, "kNN temperature [default: the checkpoint's]")
    epochs: int = _opt(100, "linear probe epochs")
    lr: float = _opt(0.1, "linear probe SGD learning rate, cosine schedule")
    batch_size: int = _opt(256, "linear probe batch size")
    weight_decay: float = _opt(0.0, "linear probe weight decay")
    augment: bool = _opt(False, "train the probe on augmented views (crop + flip) through the frozen encoder each "
                                "epoch, instead of on precomputed features (slower)")
    labels_per_class: int | None = _opt(
        None, "the paper's few-label protocol: the bank (kNN) or the probe's training set is this many labelled "
        "training images per class, drawn class by class with --seed (+ d for draw d); evaluated on the whole test "
        "split [default: every label]", metavar="N")
    label_draws: int = _opt(1, "with --labels-per-class: independent draws of the labelled images; the result is "
                               "their mean, with the std and every draw's value", metavar="K")
    out: str | None = _opt(None, "result file [default: beside the checkpoint, named by the protocol and every "
                                 "setting not at its default, so that no earlier result is overwritten: "
                                 "eval-knn.json, eval-knn-k5.json, eval-linear-10-per-class-draws5.json, "
                                 "eval-knn-epoch-20.json for epoch-20.ckpt]", metavar="FILE.json")

    def validate(self) -> None:
        super().validate()
        if self.labels_per_class is not None:
            _at_least("labels-per-class", self.labels_per_class, 1)
            if self.augment:
                raise AmclError("--augment reads every training image through the encoder; with --labels-per-class "
                                "use the probe on precomputed features (drop --augment)")
        _at_least("label-draws", self.label_draws, 1)
        if self.label_draws > 1 and self.labels_per_class is None:
            raise AmclError(f"--label-draws {self.label_draws} draws labelled images for --labels-per-class N; give "
                            "--labels-per-class too (with every label there is one evaluation)")
        if self.protocol not in PROTOCOLS:
            raise AmclError(f"unknown --protocol {self.protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
        if self.knn_k is not None:
            _at_least("knn-k", self.knn_k, 1)
        if self.knn_t is not None and not (math.isfinite(self.knn_t) and self.knn_t > 0):
            raise AmclError(f"--knn-t must be a positive number, got {self.knn_t}")
        _at_least("epochs", self.epochs, 1)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise AmclError(f"--lr must be a positive number, got {self.lr}")
        _at_least("batch-size", self.batch_size, 1)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise AmclError(f"--weight-decay must be a number >= 0, got {self.weight_decay}")
        if self.augment and self.protocol != "linear":
            raise AmclError("--augment applies to --protocol linear only")


@dataclass
class AnalyzeOptions(CheckpointOptions):
    """``amcl analyze``: positive against negative pairs of held-out images."""

    pairs: int = _opt(500, "positive and negative pairs each")
    augs: str | None = _opt(None, "augmentation policy of the views [default: the checkpoint's]")
    bins: int = _opt(40, "histogram bins")
    out: str | None = _opt(None, "output folder [default: analysis/ beside the checkpoint]", metavar="DIR")

    def validate(self) -> None:
        super().validate()
        _at_least("pairs", self.pairs, 2, " (a negative pair needs two different images)")
        _at_least("bins", self.bins, 2)
        if self.augs is not None:
            try:
                parse_policy(self.augs)
            except ValueError as exc:
                raise AmclError(f"--augs: {exc}") from None


@dataclass
class ExportOptions(CheckpointOptions):
    """``amcl export``: the encoder as a plain state dict, and optionally features of the splits."""

    format: str = _opt("auto", "the weights' names: torchvision's (ResNets), timm's (ViTs) or amcl's own; auto picks "
                               "the library the backbone comes from (amcl for the small convnet)",
                       ("auto", "torchvision", "timm", "amcl"))
    features: bool = _opt(False, "also write the features of the dataset's splits")
    splits: tuple[str, ...] = _opt(("train", "test"), "splits whose features to write", ("train", "test"))
    out: str | None = _opt(None, "output folder [default: export/ beside the checkpoint]", metavar="DIR")

    def validate(self) -> None:
        super().validate()
        unknown = [s for s in self.splits if s not in ("train", "test")]
        if unknown or not self.splits:
            raise AmclError(f"--splits: choose from train and test, got {' '.join(map(str, self.splits)) or 'none'}")
        if self.format not in ("auto", "torchvision", "timm", "amcl"):
            raise AmclError(f"unknown --format {self.format!r}; choose one of: auto, torchvision, timm, amcl")
