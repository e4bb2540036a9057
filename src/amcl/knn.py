"""Weighted k-nearest-neighbour classification of frozen features (Wu et al., 2018), and top-k accuracy."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["default_k", "knn_accuracy", "knn_predict", "topk_accuracies"]

#: Above this ``1 / t``, ``exp(sim / t)`` could overflow float32 (``exp(88.7)``), so votes are scaled per query.
_MAX_INVERSE_T = 80.0


#: With no k given, one neighbour per this many labelled bank images, at most :data:`MAX_DEFAULT_K`.
BANK_IMAGES_PER_NEIGHBOUR = 70
MAX_DEFAULT_K = 200


def default_k(labelled_bank: int) -> int:
    """The kNN's k when none is given: ``labelled_bank // 70``, between 1 and 200.

    k = 200 is the usual monitor for a 50,000-image bank (CIFAR); in a bank of 1,437 digits, 200
    neighbours reach far into the other classes (a 98% encoder scores 89% with k = 200, 98% with
    k = 20, which is what this gives)."""
    return max(1, min(MAX_DEFAULT_K, labelled_bank // BANK_IMAGES_PER_NEIGHBOUR))


@torch.no_grad()
def knn_predict(
    features: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
    chunk_size: int = 1024,
    bank_chunk_size: int = 16384,
) -> Tensor:
    """Class scores ``[N, num_classes]`` of each query by a similarity-weighted vote of its k neighbours.

    Each of the k most cosine-similar bank entries votes for its label with weight exp(sim / t).
    Bank entries labelled -1 (unlabeled images) never vote; k is capped at the number of labelled
    entries. Queries are processed ``chunk_size`` at a time and the bank ``bank_chunk_size`` at a time,
    keeping the best k candidates of each query across bank chunks, so at most
    ``chunk_size x (bank_chunk_size + k)`` similarities exist at once whatever the bank size.

    For a very small ``t`` (``1 / t > 80``), where exp(sim / t) would overflow float32, each query's
    votes are scaled by exp(-max_sim / t) (its nearest neighbour votes 1): the ranking of the classes,
    hence every top-k prediction, is the same.
    """
    if chunk_size < 1 or bank_chunk_size < 1:
        raise ValueError(f"chunk sizes must be at least 1, got {chunk_size} and {bank_chunk_size}")
    if k < 1 or not t > 0:
        raise ValueError(f"need k >= 1 and t > 0, got k={k}, t={t}")
    with torch.autocast(features.device.type, enabled=False):  # votes in float32 under mixed precision
        labelled = bank_labels >= 0
        if not bool(labelled.all()):
            bank, bank_labels = bank[labelled], bank_labels[labelled]
        if bank.shape[0] == 0:
            raise ValueError("the kNN bank has no labelled entries")
        bank = F.normalize(bank.float(), dim=1)
        bank_labels = bank_labels.to(bank.device)
        k = min(k, bank.shape[0])
        bank_chunks = list(zip(bank.split(bank_chunk_size), bank_labels.split(bank_chunk_size)))
        scores = []
        for chunk in F.normalize(features.float(), dim=1).split(chunk_size):
            if len(bank_chunks) == 1:  # the whole bank at once (the common case)
                sim, index = (chunk @ bank.T).topk(k, dim=1)
                neighbour_labels = bank_labels[index]
            else:
                sim, neighbour_labels = _merged_topk(chunk, bank_chunks, k)
            weights = (sim / t - sim[:, :1] / t).exp() if 1.0 / t > _MAX_INVERSE_T else (sim / t).exp()
            votes = torch.zeros(chunk.shape[0], num_classes, device=chunk.device)
            scores.append(votes.scatter_add_(1, neighbour_labels, weights))
        if not scores:
            return torch.zeros(0, num_classes, device=features.device)
        return torch.cat(scores)


def _merged_topk(queries: Tensor, bank_chunks: list[tuple[Tensor, Tensor]], k: int) -> tuple[Tensor, Tensor]:
    """The k largest similarities of each query over all bank chunks (sorted, largest first), with the
    labels of those bank entries."""
    best_sim = queries.new_empty(queries.shape[0], 0)
    best_labels = torch.empty(queries.shape[0], 0, dtype=torch.long, device=queries.device)
    for bank, labels in bank_chunks:
        sim, index = (queries @ bank.T).topk(min(k, bank.shape[0]), dim=1)
        sim = torch.cat([best_sim, sim], dim=1)
        candidates = torch.cat([best_labels, labels[index]], dim=1)
        best_sim, keep = sim.topk(min(k, sim.shape[1]), dim=1)
        best_labels = candidates.gather(1, keep)
    return best_sim, best_labels


def knn_accuracy(
    features: Tensor, labels: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int = 200, t: float = 0.1
) -> float:
    """Top-1 accuracy (0-1) of :func:`knn_predict`."""
    predicted = knn_predict(features, bank, bank_labels, num_classes, k, t).argmax(1)
    return (predicted == labels.to(predicted.device)).float().mean().item()


@torch.no_grad()
def topk_accuracies(scores: Tensor, labels: Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """``{k: fraction of rows whose label is among the k highest scores}`` for each k in ``ks``.

    ``scores`` is ``[N, C]``, ``labels`` ``[N]``. A k above the number of classes C counts as C
    (top-5 of a 3-class problem is 1.0). Ties between scores are broken by :func:`torch.topk`.
    """
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {ks}")
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"need scores [N, C] and labels [N], got {tuple(scores.shape)} and {tuple(labels.shape)}")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError("topk_accuracies needs at least one row and one class")
    from torchmetrics.functional.classification import multiclass_accuracy  # installed with Lightning

    classes, labels = scores.shape[1], labels.to(scores.device)
    if classes == 1:  # torchmetrics wants two classes; with one, every row is right
        return {k: 1.0 for k in ks}
    return {k: multiclass_accuracy(scores, labels, classes, top_k=min(k, classes), average="micro").item()
            for k in ks}
