"""Frozen-encoder features of a dataset's labelled images, for kNN, linear probes, analysis and export."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from amcl.config import PretrainConfig
from amcl.data.datasets import load_configured_dataset
from amcl.data.module import ContrastiveDataModule
from amcl.eval.checkpoint import Pretrained
from amcl.eval.options import CheckpointOptions

__all__ = ["evaluation_config", "evaluation_data", "extract_features"]


def evaluation_config(saved: PretrainConfig, options: CheckpointOptions | None = None, *, augs: str | None = None,
                      unlabeled: bool = False, stream_folder: bool = False) -> PretrainConfig:
    """The config a checkpoint's data is read with for eval, analyze and export: the checkpoint's own
    (``saved``), with the ``dataset``, ``data_root`` and ``workers`` of ``options`` and the policy ``augs``
    when given, validated. ``unlabeled`` keeps the dataset's unlabeled split (evaluation never needs it:
    STL-10's holds 100,000 images); ``stream_folder`` decodes an image folder's files when they are read
    (only the files drawn, and each row keeps its file) instead of caching them all."""
    options = options or CheckpointOptions()
    overrides: dict[str, Any] = {k: v for k, v in (("dataset", options.dataset), ("data_root", options.data_root),
                                                   ("workers", options.workers), ("augs", augs)) if v is not None}
    dataset = overrides.get("dataset", saved.dataset)
    if dataset != saved.dataset and dataset != "folder":
        overrides["class_list"] = None  # a folder's class list means nothing to another dataset
    if saved.unlabeled and not unlabeled:
        overrides["unlabeled"] = False
    if stream_folder and dataset == "folder":
        overrides["cache_images"] = "never"
    if not overrides:
        return saved
    config = replace(saved, **overrides)
    config.validate()
    return config


def evaluation_data(pretrained: Pretrained, config: PretrainConfig | None = None,
                    eval_batch_size: int = 512) -> ContrastiveDataModule:
    """The data of ``config`` (default: the checkpoint's; see :func:`evaluation_config`), normalised exactly
    as in the checkpoint's pre-training and resized to its ``image_size``, as a data module."""
    config = config or pretrained.config
    splits = load_configured_dataset(config)
    return ContrastiveDataModule(splits, config.batch_size, config.augs, pretrained.config.image_size,
                                 config.color_strength, eval_batch_size, config.workers, pretrained.normalization)


@torch.no_grad()
def extract_features(encoder: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """``encoder`` (in eval mode) applied to every ``(images, labels)`` batch: float32 features ``[N, D]``
    and int64 labels ``[N]``, both on the CPU."""
    was_training = encoder.training
    encoder.eval()
    features, labels = [], []
    for images, batch_labels in batches:
        features.append(encoder(images).float().cpu())
        labels.append(batch_labels.cpu())
    encoder.train(was_training)
    if not features:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.int64)
    return torch.cat(features), torch.cat(labels)
