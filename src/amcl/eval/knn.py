"""Weighted k-nearest-neighbour classification of frozen features (Wu et al., 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["knn_accuracy", "knn_predict"]


@torch.no_grad()
def knn_predict(
    features: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores ``[N, num_classes]`` of each query by a similarity-weighted vote of its k neighbours.

    Each of the k most cosine-similar bank entries votes for its label with weight exp(sim / t).
    Queries are processed in chunks, so only ``chunk_size x len(bank)`` similarities exist at once.
    """
    with torch.autocast(features.device.type, enabled=False):  # votes in float32 under mixed precision
        bank = F.normalize(bank.float(), dim=1)
        k = min(k, bank.shape[0])
        scores = []
        for chunk in F.normalize(features.float(), dim=1).split(chunk_size):
            sim, index = (chunk @ bank.T).topk(k, dim=1)
            votes = torch.zeros(chunk.shape[0], num_classes, device=chunk.device)
            scores.append(votes.scatter_add_(1, bank_labels[index], (sim / t).exp()))
        return torch.cat(scores)


def knn_accuracy(
    features: Tensor, labels: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int = 200, t: float = 0.1
) -> float:
    """Top-1 accuracy (0-1) of :func:`knn_predict`."""
    predicted = knn_predict(features, bank, bank_labels, num_classes, k, t).argmax(1)
    return (predicted == labels).float().mean().item()
