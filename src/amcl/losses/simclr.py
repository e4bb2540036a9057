"""SimCLR's loss: NT-Xent (Eq. 1.1) and its AMCL forms: the paper's hardest-negative forms (Eq. 2.1 / 2.4)
and our softmax form, the log-sum-exp over all candidates that the max of Eq. 2.4 approximates, with a
temperature per pair.

Features come per head as ``[C, B, d]`` (a plain ``[B, d]`` is one head). The 2B views of a
batch are stacked as ``[z1; z2]``, so view i's positive is view (i + B) mod 2B. Everything is
computed in matrix form over the ``[C, R, 2B]`` similarity matrix of R anchor views against all
2B views (R = 2B by default; one process's rows of a gathered global batch with ``anchors``, see
:func:`process_anchors`), in float32 even under autocast, and no ``[B, B, d]`` tensor is ever built.
The matrix is made once: masks are applied in place where autograd keeps no copy of the masked
tensor, and the log-sum-exp keeps only its exponentials for the backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from amcl.losses.checks import check_count, check_features, check_temperatures
from amcl.losses.contrastive import (
    ContrastiveTerms,
    check_amcl_arguments,
    check_constant,
    check_topk,
    hardest_terms,
    pair_matrix,
    scalar_loss,
    select_temperatures,
    softmax_terms,
)
from amcl.losses.kernels import at_least_float32, largest_entries, log_sum_exp
from amcl.losses.partition import adaptive_log_partition, negative_side_weights
from amcl.losses.temperature import PairTemperatures, Temperatures, negative_regularization, selected_products

__all__ = [
    "amcl_nt_xent_loss",
    "amcl_nt_xent_terms",
    "amcl_softmax_nt_xent_loss",
    "amcl_softmax_nt_xent_terms",
    "hardest_negatives",
    "nt_xent_loss",
    "process_anchors",
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


def _stacked_views(z1: Tensor, z2: Tensor) -> Tensor:
    """``[z1; z2]`` L2-normalised in float32: ``[C, 2B, d]``."""
    return F.normalize(at_least_float32(torch.cat([z1, z2], dim=1)), dim=-1)


def _anchor_rows(anchors: Any, views: int, device: torch.device) -> Tensor:
    """The anchors as an index ``[R]`` into the 2B stacked views: all of them by default. Their values are
    not read (no host sync); an index out of range fails in the indexing itself."""
    if anchors is None:
        return torch.arange(views, device=device)
    if not torch.is_tensor(anchors) or anchors.dtype != torch.long or anchors.dim() != 1 or anchors.numel() == 0:
        got = f"{anchors.dtype} of shape {tuple(anchors.shape)}" if torch.is_tensor(anchors) else type(anchors).__name__
        raise (ValueError if torch.is_tensor(anchors) else TypeError)(
            f"anchors must be a non-empty 1-D int64 tensor of view indices (see process_anchors), got {got}")
    return anchors.to(device)


def _anchor_views(z: Tensor, anchors: Tensor | None, rows: Tensor) -> Tensor:
    """``[C, R, d]``: the anchors' rows of the stacked views ``z`` (``z`` itself when every view is one)."""
    return z if anchors is None else z[:, rows]


def _positive_similarities(anchor_views: Tensor, z: Tensor, positive: Tensor) -> Tensor:
    """``[C, R]``: each anchor's similarity with its positive, as row-wise dot products. Taken from the
    matrix with gather it would make autograd keep the whole matrix, which is then masked in place."""
    return (anchor_views * z[:, positive]).sum(-1)


def _itself_and_positive(rows: Tensor, views: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each anchor's positive ``[R]`` (view i's is i + B mod 2B), and ``[R, 2B]`` masks of the anchor's own
    entry and of its positive's (no one_hot, no host sync)."""
    positive = (rows + views // 2) % views
    columns = torch.arange(views, device=rows.device)
    return positive, columns == rows[:, None], columns == positive[:, None]


def process_anchors(batch_size: int, rank: int, world_size: int, device: torch.device | str | None = None) -> Tensor:
    """The rows of one process's 2B views in the stacked global batch ``[z1 of every process; z2 of every
    process]`` of 2BW views (gathered in rank order): ``[rank*B + i for i < B] + [BW + rank*B + i for i < B]``,
    the order of the process's own ``[z1; z2]``.

    Pass them as ``anchors`` with the gathered views: each process then computes only its own anchors'
    rows ``[C, 2B, 2BW]`` of the global loss. The mean over its anchors is its loss; the W means average to
    the global loss, and with the gradients summed by the gather's backward and averaged by DDP every
    parameter receives exactly the single-process gradient of the global batch.

    Example:
        >>> process_anchors(2, rank=1, world_size=2).tolist()
        [2, 3, 6, 7]
    """
    check_count("batch_size", batch_size)
    check_count("world_size", world_size)
    check_count("rank", rank, low=0)
    if rank >= world_size:
        raise ValueError(f"rank must be below world_size ({world_size}), got {rank}")
    local = torch.arange(batch_size, device=device) + rank * batch_size
    return torch.cat([local, local + batch_size * world_size])


def view_similarities(z1: Tensor, z2: Tensor, anchors: Tensor | None = None) -> Tensor:
    """Cosine similarities of the anchor views with all 2B views of each head: ``[C, R, 2B]`` for
    ``[C, B, d]`` inputs; the anchors (an index ``[R]`` into ``[z1; z2]``) default to all 2B views."""
    z1, z2 = _as_heads(z1, z2)
    z = _stacked_views(z1, z2)
    return _anchor_views(z, anchors, _anchor_rows(anchors, z.shape[1], z.device)) @ z.transpose(1, 2)


def nt_xent_loss(
    z1: Tensor, z2: Tensor, temperature: float = 0.5, decoupled: bool = False, anchors: Tensor | None = None
) -> Tensor:
    """NT-Xent, SimCLR's normalised temperature-scaled cross entropy (Eq. 1.1).

    For each of the 2B views i with positive i+:
    ``-log exp(s(i, i+)/tau) / sum_{j != i} exp(s(i, j)/tau)``, averaged over the 2B views
    (both view directions) and summed over heads. SimCLR's denominator includes the
    positive; ``decoupled=True`` drops it, which is Eq. 1.1 exactly as printed (sum over
    the negatives only). With ``anchors`` (see :func:`process_anchors`) the mean runs over those views
    only, against all 2B candidates.

    Two ``[C, R, 2B]`` matrices at most: the logits come straight from the product of the scaled
    anchors with the views, and the log-sum-exp keeps one matrix for its backward.

    Example:
        >>> z1, z2 = torch.randn(8, 128), torch.randn(8, 128)
        >>> loss = nt_xent_loss(z1, z2, temperature=0.5)
    """
    check_constant("temperature", temperature)
    z1, z2 = _as_heads(z1, z2)
    with torch.autocast(z1.device.type, enabled=False):
        z = _stacked_views(z1, z2)
        n = z.shape[1]
        rows = _anchor_rows(anchors, n, z.device)
        anchor_views = _anchor_views(z, anchors, rows)
        if torch.is_tensor(temperature) and temperature.dim() > 0:
            logits = (anchor_views @ z.transpose(1, 2)) / temperature
        else:
            logits = (anchor_views / temperature) @ z.transpose(1, 2)
        positive, itself, positives = _itself_and_positive(rows, n)
        positive_logits = _positive_similarities(anchor_views, z, positive) / temperature
        per_view = log_sum_exp(logits, itself | positives if decoupled else itself) - positive_logits
        return per_view.mean(dim=-1).sum()


def _simclr_candidates(views: int, include_positive: bool) -> int:
    return views - 1 if include_positive else views - 2


def hardest_negatives(
    sim: Tensor, k: int, include_positive: bool = False, anchors: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The k most similar negatives of every anchor view: ``(similarities, indices)``, each ``[C, R, k]``.

    ``sim`` is ``[C, R, 2B]`` (:func:`view_similarities`; R = 2B unless ``anchors`` names the rows).
    Candidates for view i are the other 2B - 2 views (Eq. 2.1), or the other 2B - 1 views
    including the positive with ``include_positive=True`` (the N + 1 candidates of Eq. 2.4).
    ``sim`` itself is not changed.
    """
    check_count("k", k)
    n = sim.shape[-1]
    check_topk(k, _simclr_candidates(n, include_positive))
    rows = _anchor_rows(anchors, n, sim.device)
    if sim.shape[-2] != rows.shape[0]:
        raise ValueError(f"sim has {sim.shape[-2]} rows but there are {rows.shape[0]} anchors; pass the anchors "
                         f"of a [C, R, 2B] block of rows")
    _, itself, positives = _itself_and_positive(rows, n)
    return sim.masked_fill(itself if include_positive else itself | positives, float("-inf")).topk(k, dim=-1)


def _checked_simclr_inputs(
    z1: Tensor, z2: Tensor, temperatures: Any, negative_temperatures: Any, anchors: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """The views as heads, the anchor rows, and both temperature sources checked against ``[C, R, 2B]``."""
    z1, z2 = _as_heads(z1, z2)
    rows = _anchor_rows(anchors, 2 * z1.shape[1], z1.device)
    pairs = (z1.shape[0], rows.shape[0], 2 * z1.shape[1])
    check_temperatures("temperatures", temperatures, pairs)
    if negative_temperatures is not None:
        check_temperatures("negative_temperatures", negative_temperatures, pairs)
    return z1, z2, rows


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
    anchors: Tensor | None = None,
) -> ContrastiveTerms:
    """The terms of the AMCL SimCLR loss (Eq. 2.1), or its InfoNCE form (Eq. 2.4).

    Per head c and anchor view i, with positive i+ and the hardest negatives n*:

        -sim(i, i+)/tau(i, i+) + sim(i, n*)/tau(i, n*) + beta*Omega(tau(i, i+)) - beta*Omega(tau(i, n*))

    averaged over the 2B anchors (both view directions) and summed over heads. n* is the
    most similar negative; with ``topk = k`` the negative terms are averaged over the k most
    similar negatives, so ``topk=1`` is exactly Eq. 2.1.

    Args:
        z1, z2: projections of the two views, ``[C, B, d]`` or ``[B, d]``.
        temperatures: tau for every pair of the 2B stacked views ``[z1; z2]``: the factors of that
            matrix (:meth:`amcl.nn.TemperatureNet.pair_factors`, the cheapest: only the positive and the
            k selected pairs of each anchor are computed), a tensor broadcastable to ``[C, 2B, 2B]``
            (:meth:`amcl.nn.TemperatureNet.pair_temperatures`) or a constant float. With ``anchors``
            the rows are the R anchors: ``[C, R, 2B]``.
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
        anchors: the anchor views, an index ``[R]`` into ``[z1; z2]`` (default: all 2B). With the
            gathered views of every process and :func:`process_anchors`, each process computes its own
            rows ``[C, 2B, 2BW]`` of the global loss (the mean over its anchors).
    """
    z1, z2, rows = _checked_simclr_inputs(z1, z2, temperatures, negative_temperatures, anchors)
    n = 2 * z1.shape[1]
    check_count("topk", topk)
    check_topk(topk, _simclr_candidates(n, include_positive))
    check_amcl_arguments(beta, omega_dim, negative_regularizer)
    with torch.autocast(z1.device.type, enabled=False):
        omega_dim = z1.shape[-1] if omega_dim is None else omega_dim
        neg_temps = temperatures if negative_temperatures is None else negative_temperatures
        z = _stacked_views(z1, z2)
        anchor_views = _anchor_views(z, anchors, rows)
        # The matrix only chooses the negatives, without a gradient. Their similarities get theirs as k
        # gathered dot products per anchor for small k, else from the matrix's entries with a backward
        # through the k selected gradients (one product when the anchors are all views: a Gram matrix).
        with torch.no_grad():
            sim = anchor_views @ z.transpose(1, 2)
        positive, itself, positives = _itself_and_positive(rows, n)
        pos_index = positive.expand(sim.shape[0], -1).unsqueeze(-1)
        pos_sim = _positive_similarities(anchor_views, z, positive)
        pos_tau = select_temperatures(temperatures, pos_index, pos_sim.unsqueeze(-1)).squeeze(-1)
        neg_sim, neg_index = largest_entries(sim, topk, itself if include_positive else itself | positives)
        neg_sim = selected_products(anchor_views, z, neg_index, neg_sim)
        neg_tau = select_temperatures(neg_temps, neg_index, neg_sim)
        return hardest_terms(pos_sim, pos_tau, neg_sim, neg_tau, beta, omega_dim, negative_regularizer)


amcl_nt_xent_loss = scalar_loss(amcl_nt_xent_terms, "amcl_nt_xent_loss", """The AMCL SimCLR loss (Eq. 2.1; Eq. 2.4 with
``include_positive``): a scalar, ``amcl_nt_xent_terms(...).loss()``; the same arguments.

Example:
    >>> from amcl.nn import TemperatureNet
    >>> z1, z2 = torch.randn(3, 8, 128), torch.randn(3, 8, 128)  # C=3 heads, B=8
    >>> phi = TemperatureNet(128)
    >>> taus = phi.pair_factors(torch.cat([z1, z2], dim=1))  # the [3, 16, 16] matrix, as factors
    >>> loss = amcl_nt_xent_loss(z1, z2, taus, beta=1e-4)
""")


def amcl_softmax_nt_xent_terms(
    z1: Tensor,
    z2: Tensor,
    temperatures: Temperatures,
    beta: float = 1e-4,
    negative_temperatures: Temperatures | None = None,
    omega_dim: int | None = None,
    negative_regularizer: str = "mean_omega",
    anchors: Tensor | None = None,
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

    Everything is one ``[C, R, 2B]`` similarity matrix divided by one ``[C, R, 2B]`` temperature
    matrix (R = 2B, or the ``anchors``' rows); the returned negative tensors are those full matrices
    with ``negative_mask``. Given as phi's factors (:class:`PairTemperatures`, one source for both sides),
    the temperatures are mapped from one score matrix inside one fused pass with its own backward
    (:func:`amcl.losses.partition.adaptive_log_partition`: 3 matrices made forward and 3 backward, against
    12 and 22 through autograd); the returned temperature matrix then takes no gradient (the factors do).

    Args:
        z1, z2: projections of the two views, ``[C, B, d]`` or ``[B, d]``.
        temperatures: tau of every pair of the 2B stacked views ``[z1; z2]``: the factors of that matrix
            (:meth:`amcl.nn.TemperatureNet.pair_factors`, the cheapest), a tensor broadcastable to
            ``[C, 2B, 2B]`` (:meth:`amcl.nn.TemperatureNet.pair_temperatures`), or a constant.
        beta: weight of the regulariser Omega.
        negative_temperatures: if given, the negatives' temperatures while ``temperatures`` serves
            the positives (the positive-only / negative-only ablations).
        omega_dim: d' in Omega; defaults to the feature dimension d.
        negative_regularizer: ``mean_omega`` (mean over the 2B - 2 negatives, as printed above) or
            ``sum_log_inverse`` (their sum of log tau + 1/tau); see :func:`amcl_nt_xent_terms`.
        anchors: the anchor views (default: all 2B), as in :func:`amcl_nt_xent_terms`.

    Example:
        >>> from amcl.nn import TemperatureNet
        >>> z1, z2 = torch.randn(3, 8, 128), torch.randn(3, 8, 128)
        >>> phi = TemperatureNet(128, tau_min=0.1, tau_max=1.0)
        >>> terms = amcl_softmax_nt_xent_terms(z1, z2, phi.pair_temperatures(torch.cat([z1, z2], dim=1)))
        >>> loss = terms.loss()
    """
    z1, z2, rows = _checked_simclr_inputs(z1, z2, temperatures, negative_temperatures, anchors)
    n = 2 * z1.shape[1]
    check_amcl_arguments(beta, omega_dim, negative_regularizer)
    with torch.autocast(z1.device.type, enabled=False):
        omega_dim = z1.shape[-1] if omega_dim is None else omega_dim
        z = _stacked_views(z1, z2)
        anchor_views = _anchor_views(z, anchors, rows)
        sim = anchor_views @ z.transpose(1, 2)
        heads, anchor_count = sim.shape[0], sim.shape[1]
        positive, itself, positives = _itself_and_positive(rows, n)
        pos_index = positive.expand(heads, -1).unsqueeze(-1)
        pos_sim = _positive_similarities(anchor_views, z, positive)
        if isinstance(temperatures, PairTemperatures) and negative_temperatures is None:
            # one fused pass over the similarity and score matrices; the positive's temperature from its factors
            pos_tau = temperatures.at(pos_index).squeeze(-1)
            log_partition, negative_side, tau = adaptive_log_partition(
                sim, temperatures.scores(), temperatures.tau_min, temperatures.tau_max,
                *negative_side_weights(negative_regularizer, omega_dim, n - 2), excluded=rows.unsqueeze(-1),
                not_negative=torch.stack([rows, positive], -1))
        else:
            tau = pair_matrix(temperatures, sim)
            if negative_temperatures is not None:
                tau = torch.where(positives, tau, pair_matrix(negative_temperatures, sim))
            pos_tau = tau.gather(-1, pos_index).squeeze(-1)
            log_partition = log_sum_exp(sim / tau, itself)
            not_negative = torch.cat([rows.expand(heads, anchor_count).unsqueeze(-1), pos_index], -1)
            negative_side = negative_regularization(tau, omega_dim, negative_regularizer, exclude=not_negative)
        return softmax_terms(pos_sim, pos_tau, log_partition, negative_side, sim, tau, beta, omega_dim,
                              ~(itself | positives))


amcl_softmax_nt_xent_loss = scalar_loss(
    amcl_softmax_nt_xent_terms, "amcl_softmax_nt_xent_loss",
    "The AMCL SimCLR loss in softmax form as a scalar, ``amcl_softmax_nt_xent_terms(...).loss()``; the same "
    "arguments.")
