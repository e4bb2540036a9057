"""MoCo's loss: InfoNCE of queries against their keys and a queue of earlier keys (Eq. 1.1 with a queue), and its
AMCL forms: the hardest-negative form (Eq. 2.1 / 2.4, the queue's k most similar keys) and the softmax form (a
temperature per query-key pair). Per-head ``[C, B, d]`` queries and keys, a ``[C, K, d]`` queue; the
``[C, B, K]`` similarity matrix in float32 even under autocast.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from amcl.losses import contrastive  # what the SimCLR and MoCo forms share, named as contrastive.*
from amcl.losses.checks import check_count, check_features, check_temperatures
from amcl.losses.kernels import at_least_float32, largest_entries, log_sum_exp
from amcl.losses.partition import adaptive_log_partition, negative_side_weights
from amcl.losses.temperature import PairTemperatures, Temperatures, negative_regularization, selected_products

__all__ = ["amcl_moco_loss", "amcl_moco_terms", "amcl_softmax_moco_loss", "amcl_softmax_moco_terms",
           "moco_infonce_loss"]


def _check_queries(q: Any, k: Any, queue: Any) -> None:
    check_features("q", q, "[N, d] or [C, N, d]")
    check_features("k", k, "[N, d] or [C, N, d]")
    check_features("queue", queue, "[K, d] or [C, K, d] (an empty queue has no negatives)")


def _queries_keys_queue(q: Tensor, k: Tensor, queue: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised float32 ``[C, N, d]`` queries and keys and ``[C, K, d]`` queue (2-D inputs are one head)."""
    _check_queries(q, k, queue)
    if q.shape != k.shape:
        raise ValueError(f"queries and keys must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.dim() == 2:
        q, k = q.unsqueeze(0), k.unsqueeze(0)
    if queue.dim() == 2:
        queue = queue.unsqueeze(0)
    if q.dim() != 3 or queue.dim() != 3 or queue.shape[-1] != q.shape[-1] or queue.shape[0] not in (1, q.shape[0]):
        raise ValueError(
            f"need queries/keys [C, N, d] and a queue [C, K, d] with the same C and d, got "
            f"{tuple(q.shape)} and {tuple(queue.shape)}"
        )
    q, k, queue = (F.normalize(at_least_float32(t), dim=-1) for t in (q, k, queue))
    return q, k, queue


def moco_infonce_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.1) -> Tensor:
    """MoCo's InfoNCE over ``[positive | queue]``: per head and query i,

        -log exp(sim(q_i, k_i)/tau) / (exp(sim(q_i, k_i)/tau) + sum_j exp(sim(q_i, queue_j)/tau))

    averaged over the N queries and summed over heads. For MoCo v2's symmetric loss stack
    both directions as queries ``[q1; q2]`` with keys ``[k2; k1]``: the mean over the 2B
    queries is then the average of the two directions.

    Args:
        q: queries ``[C, N, d]`` (or ``[N, d]``), from the encoder being trained.
        k: their positive keys, same shape, from the momentum encoder (no gradient flows to them).
        queue: each head's negatives ``[C, K, d]`` (or ``[K, d]``).

    Example:
        >>> q, k, queue = torch.randn(3, 8, 128), torch.randn(3, 8, 128), torch.randn(3, 4096, 128)
        >>> loss = moco_infonce_loss(q, k, queue, temperature=0.1)
    """
    contrastive.check_constant("temperature", temperature)
    _check_queries(q, k, queue)
    with torch.autocast(q.device.type, enabled=False):
        q, k, queue = _queries_keys_queue(q, k, queue.detach())
        positive = (q * k.detach()).sum(-1) / temperature
        negatives = log_sum_exp(q @ queue.transpose(1, 2) / temperature)
        return (torch.logaddexp(positive, negatives) - positive).mean(-1).sum()


def _check_moco_temperatures(positive: Any, queue_side: Any, q: Tensor, queue: Tensor) -> None:
    heads, n, k = q.shape[0], q.shape[1], queue.shape[1]
    check_temperatures("positive_temperatures", positive, (heads, n))
    check_temperatures("queue_temperatures", queue_side, (heads, n, k))


def _per_anchor(temperatures: Temperatures, like: Tensor) -> Tensor:
    if torch.is_tensor(temperatures) and temperatures.dim() > 0:
        return at_least_float32(temperatures).expand_as(like)
    return torch.as_tensor(temperatures, dtype=like.dtype, device=like.device).expand_as(like)


def amcl_moco_terms(
    q: Tensor,
    k: Tensor,
    queue: Tensor,
    positive_temperatures: Temperatures,
    queue_temperatures: Temperatures,
    beta: float = 1e-4,
    topk: int = 1,
    include_positive: bool = False,
    omega_dim: int | None = None,
    negative_regularizer: str = "mean_omega",
) -> contrastive.ContrastiveTerms:
    """The terms of the AMCL MoCo loss: Eq. 2.1 with each head's queue as the negatives (Eq. 2.4
    with ``include_positive``).

    Per head c and query i, with positive key k_i and the hardest queue entries n*:

        -sim(q_i, k_i)/tau(q_i, k_i) + sim(q_i, n*)/tau(q_i, n*)
            + beta*Omega(tau(q_i, k_i)) - beta*Omega(tau(q_i, n*))

    averaged over the N queries, summed over heads; ``topk`` averages the negative terms over
    the k most similar queue entries (``topk=1`` is Eq. 2.1 exactly).

    Args:
        q, k, queue: as in :func:`moco_infonce_loss`.
        positive_temperatures: tau(q_i, k_i), ``[C, N]`` (e.g.
            :meth:`amcl.nn.TemperatureNet.paired_temperatures`) or a constant.
        queue_temperatures: tau(q_i, queue_j), ``[C, N, K]``: its factors (:class:`PairTemperatures` of
            phi's embeddings of queries and queue, the cheapest: only the k selected entries are computed),
            the matrix (:meth:`amcl.nn.TemperatureNet.pair_temperatures` of queries and queue) or a constant.
            Passing one adaptive and one constant source gives the positive-only /
            negative-only ablations.
        include_positive: the hardest of the K + 1 candidates ``[k_i | queue]`` (Eq. 2.4); the
            positive, when chosen, keeps its ``positive_temperatures`` value.
        omega_dim: d' in Omega; defaults to d.
        negative_regularizer: as in :func:`amcl_nt_xent_terms`.

    Example:
        >>> from amcl.nn import TemperatureNet
        >>> phi = TemperatureNet(128)
        >>> q, k, queue = torch.randn(3, 8, 128), torch.randn(3, 8, 128), torch.randn(3, 4096, 128)
        >>> terms = amcl_moco_terms(q, k, queue, phi.paired_temperatures(q, k), phi.pair_temperatures(q, queue))
        >>> loss = terms.loss()
    """
    _check_queries(q, k, queue)
    with torch.autocast(q.device.type, enabled=False):
        q, k, queue = _queries_keys_queue(q, k, queue.detach())
        _check_moco_temperatures(positive_temperatures, queue_temperatures, q, queue)
        contrastive.check_amcl_arguments(beta, omega_dim, negative_regularizer)
        omega_dim = q.shape[-1] if omega_dim is None else omega_dim
        check_count("topk", topk)
        contrastive.check_topk(topk, queue.shape[1] + int(include_positive))
        pos_sim = (q * k.detach()).sum(-1)
        pos_tau = _per_anchor(positive_temperatures, pos_sim)
        with torch.no_grad():
            queue_sim = q @ queue.transpose(1, 2)
        neg_sim, neg_index = largest_entries(queue_sim, min(topk, queue.shape[1]))
        neg_sim = selected_products(q, queue, neg_index, neg_sim)
        neg_tau = contrastive.select_temperatures(queue_temperatures, neg_index, neg_sim)
        if include_positive:
            # the k hardest of [positive | queue] are among the positive and the k hardest of the queue
            neg_sim, best = torch.cat([pos_sim.unsqueeze(-1), neg_sim], -1).topk(topk, dim=-1)
            neg_tau = torch.cat([pos_tau.unsqueeze(-1), neg_tau], -1).gather(-1, best)
        return contrastive.hardest_terms(pos_sim, pos_tau, neg_sim, neg_tau, beta, omega_dim, negative_regularizer)


amcl_moco_loss = contrastive.scalar_loss(
    amcl_moco_terms, "amcl_moco_loss",
    "The AMCL MoCo loss as a scalar, ``amcl_moco_terms(...).loss()``; the same arguments.")


def amcl_softmax_moco_terms(
    q: Tensor,
    k: Tensor,
    queue: Tensor,
    positive_temperatures: Temperatures,
    queue_temperatures: Temperatures,
    beta: float = 1e-4,
    omega_dim: int | None = None,
    negative_regularizer: str = "mean_omega",
) -> contrastive.ContrastiveTerms:
    """The terms of the AMCL MoCo loss in softmax form (our extension, as
    :func:`amcl_softmax_nt_xent_terms`): per head c and query i with positive key k_i and each
    head's queue entries n as negatives,

        -s(q_i, k_i)/tau(q_i, k_i) + log( exp(s(q_i, k_i)/tau(q_i, k_i)) + sum_n exp(s(q_i, n)/tau(q_i, n)) )
            + beta*Omega(tau(q_i, k_i)) - beta*mean_n Omega(tau(q_i, n))

    averaged over the N queries, summed over heads. With one head, a constant temperature and
    beta = 0 it is :func:`moco_infonce_loss` exactly.

    Args:
        q, k, queue: as in :func:`moco_infonce_loss`.
        positive_temperatures: tau(q_i, k_i), ``[C, N]``, or a constant.
        queue_temperatures: tau(q_i, queue_j), ``[C, N, K]``: phi's factors of queries and queue (a
            :class:`PairTemperatures`, mapped inside one fused pass, as in :func:`amcl_softmax_nt_xent_terms`),
            the matrix (:func:`amcl.losses.pair_temperatures`), or a constant.
        omega_dim, negative_regularizer: as in :func:`amcl_softmax_nt_xent_terms`.
    """
    _check_queries(q, k, queue)
    with torch.autocast(q.device.type, enabled=False):
        q, k, queue = _queries_keys_queue(q, k, queue.detach())
        _check_moco_temperatures(positive_temperatures, queue_temperatures, q, queue)
        contrastive.check_amcl_arguments(beta, omega_dim, negative_regularizer)
        omega_dim = q.shape[-1] if omega_dim is None else omega_dim
        pos_sim = (q * k.detach()).sum(-1)
        pos_tau = _per_anchor(positive_temperatures, pos_sim)
        neg_sim = q @ queue.transpose(1, 2)
        if isinstance(queue_temperatures, PairTemperatures):  # one fused pass over [C, N, K]
            queue_partition, negative_side, neg_tau = adaptive_log_partition(
                neg_sim, queue_temperatures.scores(), queue_temperatures.tau_min, queue_temperatures.tau_max,
                *negative_side_weights(negative_regularizer, omega_dim, queue.shape[1]))
        else:
            neg_tau = contrastive.pair_matrix(queue_temperatures, neg_sim)
            queue_partition = log_sum_exp(neg_sim / neg_tau)
            negative_side = negative_regularization(neg_tau, omega_dim, negative_regularizer)
        log_partition = torch.logaddexp(pos_sim / pos_tau, queue_partition)
        return contrastive.softmax_terms(pos_sim, pos_tau, log_partition, negative_side, neg_sim, neg_tau, beta,
                                         omega_dim)


amcl_softmax_moco_loss = contrastive.scalar_loss(
    amcl_softmax_moco_terms, "amcl_softmax_moco_loss",
    "The AMCL MoCo loss in softmax form as a scalar, ``amcl_softmax_moco_terms(...).loss()``; the same "
    "arguments.")
