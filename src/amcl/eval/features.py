"""Frozen-encoder features of a dataset's labelled images, for kNN, linear probes, analysis and export."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

import torch
from torch import Tensor, nn

from amcl.data.datasets import load_configured_dataset
from amcl.data.module import ContrastiveDataModule
from amcl.eval.checkpoint import Pretrained

__all__ = ["evaluation_data", "extract_features"]


def evaluation_data(pretrained: Pretrained, eval_batch_size: int = 512, **overrides) -> ContrastiveDataModule:
    """The data a checkpoint was trained on (or ``overrides`` of its config: ``dataset``, ``data_root``,
    ``workers``...), normalised exactly as in its pre-training, as a data module.

    Images are resized to the checkpoint's ``image_size`` whatever the dataset.
    """
    config = replace(pretrained.config, **overrides) if overrides else pretrained.config
    if overrides:
        config.validate()
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
