"""Contrastive losses: SimCLR's NT-Xent (Eq. 1.1), MoCo's InfoNCE with a queue, and their AMCL
forms: the paper's hardest-negative forms (Eq. 2.1 / 2.4) and our softmax form, the log-sum-exp
over all candidates that the max of Eq. 2.4 approximates, with a temperature per pair.

Features come per head as ``[C, B, d]`` (a plain ``[B, d]`` is one head). The 2B views of a
batch are stacked as ``[z1; z2]``, so view i's positive is view (i + B) mod 2B. Everything is
computed in matrix form over the ``[C, 2B, 2B]`` similarity matrix, in float32 even under
autocast, and no ``[B, B, d]`` tensor is ever built.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from amcl.losses.checks import check_count, check_features, check_number, check_temperatures
from amcl.losses.temperature import (
    NEGATIVE_REGULARIZERS,
    Temperatures,
    at_least_float32,
    negative_regularization,
    omega,
)

__all__ = [
    "ContrastiveTerms",
    "amcl_moco_loss",
    "amcl_moco_terms",
    "amcl_nt_xent_loss",
    "amcl_nt_xent_terms",
    "amcl_softmax_moco_loss",
    "amcl_softmax_moco_terms",
    "amcl_softmax_nt_xent_loss",
    "amcl_softmax_nt_xent_terms",
    "hardest_negatives",
    "moco_infonce_loss",
    "nt_xent_loss",
    "view_similarities",
]


def _as_heads(z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
    check_features("z1", z1)
    check_features("z2", z2)
    if z1.shape != z2.shape:
        raise ValueError(f"the two views must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.dim() == 2:
        z1, z2 = z1.unsqueeze(0), z2.unsqueeze(0)
    if z1.dim() != 3:
        raise ValueError(f"features must be [B, d] or [C, B, d], got {tuple(z1.shape)}")
    if z1.shape[1] < 2:
        raise ValueError("a contrastive loss needs at least 2 images per batch")
    return z1, z2


def view_similarities(z1: Tensor, z2: Tensor) -> Tensor:
    """Cosine similarities of all 2B views of each head: ``[C, 2B, 2B]`` for ``[C, B, d]`` inputs."""
    z1, z2 = _as_heads(z1, z2)
    z = F.normalize(at_least_float32(torch.cat([z1, z2], dim=1)), dim=-1)
    return z @ z.transpose(1, 2)


def _check_constant(name: str, value: Any) -> None:
    """A constant temperature given as a Python number must be positive (a tensor is not read)."""
    if not torch.is_tensor(value):
        check_number(name, value)


def _check_amcl_arguments(beta: Any, omega_dim: Any, negative_regularizer: Any) -> None:
    check_number("beta", beta, positive=False)
    if omega_dim is not None:
        check_count("omega_dim", omega_dim)
    if negative_regularizer not in NEGATIVE_REGULARIZERS:
        raise ValueError(f"negative_regularizer must be one of {', '.join(NEGATIVE_REGULARIZERS)}, got "
                         f"{negative_regularizer!r}")


def _positive_index(batch_size: int, device: torch.device) -> Tensor:
    return torch.arange(2 * batch_size, device=device).roll(batch_size)


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.5, decoupled: bool = False) -> Tensor:
    """NT-Xent, SimCLR's normalised temperature-scaled cross entropy (Eq. 1.1).

    For each of the 2B views i with positive i+:
    ``-log exp(s(i, i+)/tau) / sum_{j != i} exp(s(i, j)/tau)``, averaged over the 2B views
    (both view directions) and summed over heads. SimCLR's denominator includes the
    positive; ``decoupled=True`` drops it, which is Eq. 1.1 exactly as printed (sum over
    the negatives only).

    Example:
        >>> z1, z2 = torch.randn(8, 128), torch.randn(8, 128)
        >>> loss = nt_xent_loss(z1, z2, temperature=0.5)
    """
    _check_constant("temperature", temperature)
    z1, z2 = _as_heads(z1, z2)
    with torch.autocast(z1.device.type, enabled=False):
        sim = view_similarities(z1, z2)
        n = sim.shape[-1]
        pos = _positive_index(n // 2, sim.device)
        logits = sim / temperature
        masked = torch.eye(n, dtype=torch.bool, device=sim.device)
        if decoupled:
            masked = masked | masked.roll(n // 2, dims=1)  # the positives: no one_hot, no host sync
        positive_logits = logits.gather(-1, pos.expand(logits.shape[0], n).unsqueeze(-1)).squeeze(-1)
        per_view = torch.logsumexp(logits.masked_fill(masked, float("-inf")), dim=-1) - positive_logits
        return per_view.mean(dim=-1).sum()


def hardest_negatives(sim: Tensor, k: int, include_positive: bool = False) -> tuple[Tensor, Tensor]:
    """The k most similar negatives of every view: ``(similarities, indices)``, each ``[C, 2B, k]``.

    Candidates for view i are the other 2B - 2 views (Eq. 2.1), or the other 2B - 1 views
    including the positive with ``include_positive=True`` (the N + 1 candidates of Eq. 2.4).
    """
    check_count("k", k)
    n = sim.shape[-1]
    candidates = n - 1 if include_positive else n - 2
    if not 1 <= k <= candidates:
        raise ValueError(f"top-k must be between 1 and the number of negatives ({candidates}), got {k}")
    excluded = torch.eye(n, dtype=torch.bool, device=sim.device)
    if not include_positive:  # view i's positive is view i + B (mod 2B): the identity rolled by B
        excluded = excluded | excluded.roll(n // 2, dims=1)
    return sim.masked_fill(excluded, float("-inf")).topk(k, dim=-1)


class ContrastiveTerms(NamedTuple):
    """The parts of an AMCL contrastive loss, per head (each ``[C]``), and the temperatures used.

    ``loss()`` is their sum over parts and heads. For the hardest-negative forms (Eq. 2.1 / 2.4) the
    negative tensors hold the k selected negatives of each anchor, ``[C, N, k]``. For the softmax
    form they hold every candidate, ``[C, N, M]``, and ``negative_mask`` (``[N, M]``, broadcast over
    heads) marks which entries are negatives (SimCLR's matrix also holds each view itself and its
    positive); ``None`` means every entry is one.
    """

    positive: Tensor  # mean over anchors of -sim(i, i+)/tau(i, i+)
    negative: Tensor  # hardest forms: mean over anchors and the top-k of sim(i, n)/tau(i, n);
    #                   softmax form: mean over anchors of log(exp(s+/tau+) + sum_n exp(s_n/tau_n))
    regularizer: Tensor  # beta * (Omega(tau+) - the negative side), averaged over anchors
    positive_temperatures: Tensor  # [C, N]
    negative_temperatures: Tensor  # [C, N, k] or [C, N, M]
    positive_similarities: Tensor  # [C, N]
    negative_similarities: Tensor  # [C, N, k] or [C, N, M]
    negative_mask: Tensor | None = None  # [N, M] bool: which entries of the negative tensors are negatives

    def loss(self) -> Tensor:
        return (self.positive + self.negative + self.regularizer).sum()


def _select(temperatures: Temperatures, index: Tensor, like: Tensor) -> Tensor:
    """Entries of a pair-temperature matrix (or a constant) at ``index`` along the last axis."""
    if not torch.is_tensor(temperatures) or temperatures.dim() == 0:
        return torch.as_tensor(temperatures, dtype=like.dtype, device=like.device).expand_as(like)
    full = at_least_float32(temperatures).expand(*like.shape[:-1], temperatures.shape[-1])
    return full.gather(-1, index)


def _terms(
    pos_sim: Tensor, pos_tau: Tensor, neg_sim: Tensor, neg_tau: Tensor, beta: float, omega_dim: int,
    negative_regularizer: str = "mean_omega",
) -> ContrastiveTerms:
    """Eq. 2.1 from the gathered positive ``[C, N]`` and hardest-negative ``[C, N, k]`` pairs."""
    negative_side = negative_regularization(neg_tau, omega_dim, negative_regularizer)
    regularizer = beta * (omega(pos_tau, omega_dim) - negative_side)
    return ContrastiveTerms(
        positive=(-pos_sim / pos_tau).mean(-1),
        negative=(neg_sim / neg_tau).mean(-1).mean(-1),
        regularizer=regularizer.mean(-1),
        positive_temperatures=pos_tau,
        negative_temperatures=neg_tau,
        positive_similarities=pos_sim,
        negative_similarities=neg_sim,
    )


def amcl_nt_xent_terms(
    z1: Tensor,
    z2: Tensor,
    temperatures: Temperatures,
    beta: float = 1e-4,
    topk: int = 1,
    negative_temperatures: Temperatures | None = None,
    include_positive: bool = False,
    omega_dim: int | None = None,
    negative_regularizer: str = "mean_omega",
) -> ContrastiveTerms:
    """The terms of the AMCL SimCLR loss (Eq. 2.1), or its InfoNCE form (Eq. 2.4).

    Per head c and anchor view i, with positive i+ and the hardest negatives n*:

        -sim(i, i+)/tau(i, i+) + sim(i, n*)/tau(i, n*) + beta*Omega(tau(i, i+)) - beta*Omega(tau(i, n*))

    averaged over the 2B anchors (both view directions) and summed over heads. n* is the
    most similar negative; with ``topk = k`` the negative terms are averaged over the k most
    similar negatives, so ``topk=1`` is exactly Eq. 2.1.

    Args:
        z1, z2: projections of the two views, ``[C, B, d]`` or ``[B, d]``.
        temperatures: tau for every pair of the 2B stacked views ``[z1; z2]``: a tensor
            broadcastable to ``[C, 2B, 2B]`` (e.g. from
            :meth:`amcl.nn.TemperatureNet.pair_temperatures`) or a constant float.
        beta: weight of the regulariser Omega.
        topk: number of hardest negatives averaged.
        negative_temperatures: if given, used for the negatives while ``temperatures`` serves
            the positives (the paper's positive-only / negative-only adaptive ablations).
        include_positive: take the hardest of the N + 1 candidates, positive included (Eq. 2.4).
        omega_dim: d' in Omega; defaults to the feature dimension d.
        negative_regularizer: the negative side of the regulariser over the k negatives:
            ``mean_omega`` (beta * mean_k Omega(tau_k), Eq. 2.1 for k = 1) or ``sum_log_inverse``
            (beta * sum_k (log tau_k + 1/tau_k), the authors' later code); see
            :data:`amcl.losses.NEGATIVE_REGULARIZERS`.
    """
    z1, z2 = _as_heads(z1, z2)
    pairs = (z1.shape[0], 2 * z1.shape[1], 2 * z1.shape[1])
    check_temperatures("temperatures", temperatures, pairs)
    if negative_temperatures is not None:
        check_temperatures("negative_temperatures", negative_temperatures, pairs)
    check_count("topk", topk)
    _check_amcl_arguments(beta, omega_dim, negative_regularizer)
    with torch.autocast(z1.device.type, enabled=False):
        omega_dim = z1.shape[-1] if omega_dim is None else omega_dim
        neg_temps = temperatures if negative_temperatures is None else negative_temperatures
        sim = view_similarities(z1, z2)
        heads, n = sim.shape[0], sim.shape[-1]
        pos_index = _positive_index(n // 2, sim.device).expand(heads, n).unsqueeze(-1)
        pos_sim = sim.gather(-1, pos_index).squeeze(-1)
        pos_tau = _select(temperatures, pos_index, pos_sim.unsqueeze(-1)).squeeze(-1)
        neg_sim, neg_index = hardest_negatives(sim, topk, include_positive)
        neg_tau = _select(neg_temps, neg_index, neg_sim)
        return _terms(pos_sim, pos_tau, neg_sim, neg_tau, beta, omega_dim, negative_regularizer)


def amcl_nt_xent_loss(
    z1: Tensor,
    z2: Tensor,
    temperatures: Temperatures,
    beta: float = 1e-4,
    topk: int = 1,
    negative_temperatures: Temperatures | None = None,
    include_positive: bool = False,
    omega_dim: int | None = None,
    negative_regularizer: str = "mean_omega",
) -> Tensor:
    """The AMCL SimCLR loss (Eq. 2.1; Eq. 2.4 with ``include_positive``): a scalar.

    See :func:`amcl_nt_xent_terms` for the arguments.

    Example:
        >>> from amcl.nn import TemperatureNet
        >>> z1, z2 = torch.randn(3, 8, 128), torch.randn(3, 8, 128)  # C=3 heads, B=8
        >>> phi = TemperatureNet(128)
        >>> taus = phi.pair_temperatures(torch.cat([z1, z2], dim=1))  # [3, 16, 16]
        >>> loss = amcl_nt_xent_loss(z1, z2, taus, beta=1e-4)
    """
    return amcl_nt_xent_terms(
        z1, z2, temperatures, beta, topk, negative_temperatures, include_positive, omega_dim, negative_regularizer
    ).loss()


def _pair_matrix(temperatures: Temperatures, like: Tensor) -> Tensor:
    """A pair-temperature source (a tensor broadcastable to ``like``, or a constant) as a ``like``-shaped
    tensor; a constant is only expanded, never copied."""
    if torch.is_tensor(temperatures):
        return at_least_float32(temperatures).expand_as(like)
    return torch.as_tensor(temperatures, dtype=like.dtype, device=like.device).expand_as(like)


def amcl_softmax_nt_xent_terms(
    z1: Tensor,
    z2: Tensor,
    temperatures: Temperatures,
    beta: float = 1e-4,
    negative_temperatures: Temperatures | None = None,
    omega_dim: int | None = None,
    negative_regularizer: str = "mean_omega",
) -> ContrastiveTerms:
    """The terms of the AMCL SimCLR loss in softmax form: our extension, not an equation of the paper.

    Per head c and anchor view i, with positive i+ and the other 2B - 2 views n as negatives:

        -s(i, i+)/tau(i, i+) + log( exp(s(i, i+)/tau(i, i+)) + sum_n exp(s(i, n)/tau(i, n)) )
            + beta*Omega(tau(i, i+)) - beta*mean_n Omega(tau(i, n))

    averaged over the 2B anchors (both view directions) and summed over heads. The log-sum-exp is
    the smooth maximum that the max over the N + 1 candidates of Eq. 2.4 approximates
    (``max_j x_j <= log sum_j exp(x_j) <= max_j x_j + log(N + 1)``), so every negative pushes, each
    with its own temperature. With one head, a constant temperature and beta = 0 it is NT-Xent
    (Eq. 1.1 in SimCLR's form) exactly.

    Everything is one ``[C, 2B, 2B]`` similarity matrix divided by one ``[C, 2B, 2B]`` temperature
    matrix; the returned negative tensors are those full matrices with ``negative_mask``.

    Args:
        z1, z2: projections of the two views, ``[C, B, d]`` or ``[B, d]``.
        temperatures: tau of every pair of the 2B stacked views ``[z1; z2]``, broadcastable to
            ``[C, 2B, 2B]`` (:meth:`amcl.nn.TemperatureNet.pair_temperatures`), or a constant.
        beta: weight of the regulariser Omega.
        negative_temperatures: if given, the negatives' temperatures while ``temperatures`` serves
            the positives (the positive-only / negative-only ablations).
        omega_dim: d' in Omega; defaults to the feature dimension d.
        negative_regularizer: ``mean_omega`` (mean over the 2B - 2 negatives, as printed above) or
            ``sum_log_inverse`` (their sum of log tau + 1/tau); see :func:`amcl_nt_xent_terms`.

    Example:
        >>> from amcl.nn import TemperatureNet
        >>> z1, z2 = torch.randn(3, 8, 128), torch.randn(3, 8, 128)
        >>> phi = TemperatureNet(128, tau_min=0.1, tau_max=1.0)
        >>> terms = amcl_softmax_nt_xent_terms(z1, z2, phi.pair_temperatures(torch.cat([z1, z2], dim=1)))
        >>> loss = terms.loss()
    """
    z1, z2 = _as_heads(z1, z2)
    pairs = (z1.shape[0], 2 * z1.shape[1], 2 * z1.shape[1])
    check_temperatures("temperatures", temperatures, pairs)
    if negative_temperatures is not None:
        check_temperatures("negative_temperatures", negative_temperatures, pairs)
    _check_amcl_arguments(beta, omega_dim, negative_regularizer)
    with torch.autocast(z1.device.type, enabled=False):
        omega_dim = z1.shape[-1] if omega_dim is None else omega_dim
        sim = view_similarities(z1, z2)
        heads, n = sim.shape[0], sim.shape[-1]
        itself = torch.eye(n, dtype=torch.bool, device=sim.device)
        positives = itself.roll(n // 2, dims=1)  # view i's positive is view i + B (mod 2B): no one_hot, no sync
        tau = _pair_matrix(temperatures, sim)
        if negative_temperatures is not None:
            tau = torch.where(positives, tau, _pair_matrix(negative_temperatures, sim))
        logits = sim / tau
        pos_index = _positive_index(n // 2, sim.device).expand(heads, n).unsqueeze(-1)
        pos_sim = sim.gather(-1, pos_index).squeeze(-1)
        pos_tau = tau.gather(-1, pos_index).squeeze(-1)
        pos_logit = logits.gather(-1, pos_index).squeeze(-1)
        log_partition = torch.logsumexp(logits.masked_fill(itself, float("-inf")), dim=-1)
        not_negative = torch.cat([torch.arange(n, device=sim.device).expand(heads, n).unsqueeze(-1), pos_index], -1)
        negative_side = negative_regularization(tau, omega_dim, negative_regularizer, exclude=not_negative)
        return ContrastiveTerms(
            positive=(-pos_logit).mean(-1),
            negative=log_partition.mean(-1),
            regularizer=(beta * (omega(pos_tau, omega_dim) - negative_side)).mean(-1),
            positive_temperatures=pos_tau,
            negative_temperatures=tau,
            positive_similarities=pos_sim,
            negative_similarities=sim,
            negative_mask=~(itself | positives),
        )


def amcl_softmax_nt_xent_loss(
    z1: Tensor,
    z2: Tensor,
    temperatures: Temperatures,
    beta: float = 1e-4,
    negative_temperatures: Temperatures | None = None,
    omega_dim: int | None = None,
    negative_regularizer: str = "mean_omega",
) -> Tensor:
    """The AMCL SimCLR loss in softmax form as a scalar; see :func:`amcl_softmax_nt_xent_terms`."""
    return amcl_softmax_nt_xent_terms(
        z1, z2, temperatures, beta, negative_temperatures, omega_dim, negative_regularizer
    ).loss()


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
    _check_constant("temperature", temperature)
    _check_queries(q, k, queue)
    with torch.autocast(q.device.type, enabled=False):
        q, k, queue = _queries_keys_queue(q, k, queue.detach())
        positive = (q * k.detach()).sum(-1) / temperature
        negatives = torch.logsumexp(q @ queue.transpose(1, 2) / temperature, dim=-1)
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
) -> ContrastiveTerms:
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
        queue_temperatures: tau(q_i, queue_j), ``[C, N, K]`` (e.g.
            :meth:`amcl.nn.TemperatureNet.pair_temperatures` of queries and queue) or a constant.
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
        _check_amcl_arguments(beta, omega_dim, negative_regularizer)
        omega_dim = q.shape[-1] if omega_dim is None else omega_dim
        candidates = queue.shape[1] + int(include_positive)
        check_count("topk", topk)
        if not 1 <= topk <= candidates:
            raise ValueError(f"top-k must be between 1 and the number of negatives ({candidates}), got {topk}")
        pos_sim = (q * k.detach()).sum(-1)
        pos_tau = _per_anchor(positive_temperatures, pos_sim)
        neg_sim, neg_index = (q @ queue.transpose(1, 2)).topk(min(topk, queue.shape[1]), dim=-1)
        neg_tau = _select(queue_temperatures, neg_index, neg_sim)
        if include_positive:
            # the k hardest of [positive | queue] are among the positive and the k hardest of the queue
            neg_sim, best = torch.cat([pos_sim.unsqueeze(-1), neg_sim], -1).topk(topk, dim=-1)
            neg_tau = torch.cat([pos_tau.unsqueeze(-1), neg_tau], -1).gather(-1, best)
        return _terms(pos_sim, pos_tau, neg_sim, neg_tau, beta, omega_dim, negative_regularizer)


def amcl_moco_loss(
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
) -> Tensor:
    """The AMCL MoCo loss as a scalar; see :func:`amcl_moco_terms`."""
    return amcl_moco_terms(
        q, k, queue, positive_temperatures, queue_temperatures, beta, topk, include_positive, omega_dim,
        negative_regularizer,
    ).loss()


def amcl_softmax_moco_terms(
    q: Tensor,
    k: Tensor,
    queue: Tensor,
    positive_temperatures: Temperatures,
    queue_temperatures: Temperatures,
    beta: float = 1e-4,
    omega_dim: int | None = None,
    negative_regularizer: str = "mean_omega",
) -> ContrastiveTerms:
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
        queue_temperatures: tau(q_i, queue_j), ``[C, N, K]`` (one matrix product of phi's
            embeddings, :func:`amcl.losses.pair_temperatures`), or a constant.
        omega_dim, negative_regularizer: as in :func:`amcl_softmax_nt_xent_terms`.
    """
    _check_queries(q, k, queue)
    with torch.autocast(q.device.type, enabled=False):
        q, k, queue = _queries_keys_queue(q, k, queue.detach())
        _check_moco_temperatures(positive_temperatures, queue_temperatures, q, queue)
        _check_amcl_arguments(beta, omega_dim, negative_regularizer)
        omega_dim = q.shape[-1] if omega_dim is None else omega_dim
        pos_sim = (q * k.detach()).sum(-1)
        pos_tau = _per_anchor(positive_temperatures, pos_sim)
        neg_sim = q @ queue.transpose(1, 2)
        neg_tau = _pair_matrix(queue_temperatures, neg_sim)
        pos_logit = pos_sim / pos_tau
        log_partition = torch.logaddexp(pos_logit, torch.logsumexp(neg_sim / neg_tau, dim=-1))
        negative_side = negative_regularization(neg_tau, omega_dim, negative_regularizer)
        return ContrastiveTerms(
            positive=(-pos_logit).mean(-1),
            negative=log_partition.mean(-1),
            regularizer=(beta * (omega(pos_tau, omega_dim) - negative_side)).mean(-1),
            positive_temperatures=pos_tau,
            negative_temperatures=neg_tau,
            positive_similarities=pos_sim,
            negative_similarities=neg_sim,
        )


def amcl_softmax_moco_loss(
    q: Tensor,
    k: Tensor,
    queue: Tensor,
    positive_temperatures: Temperatures,
    queue_temperatures: Temperatures,
    beta: float = 1e-4,
    omega_dim: int | None = None,
    negative_regularizer: str = "mean_omega",
) -> Tensor:
    """The AMCL MoCo loss in softmax form as a scalar; see :func:`amcl_softmax_moco_terms`."""
    return amcl_softmax_moco_terms(
        q, k, queue, positive_temperatures, queue_temperatures, beta, omega_dim, negative_regularizer
    ).loss()
