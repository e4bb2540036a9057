"""Contrastive losses: SimCLR's NT-Xent (Eq. 1.1), MoCo's InfoNCE with a queue, and their AMCL
forms: the paper's hardest-negative forms (Eq. 2.1 / 2.4) and our softmax form, the log-sum-exp
over all candidates that the max of Eq. 2.4 approximates, with a temperature per pair.

Features come per head as ``[C, B, d]`` (a plain ``[B, d]`` is one head). The 2B views of a
batch are stacked as ``[z1; z2]``, so view i's positive is view (i + B) mod 2B. Everything is
computed in matrix form over the ``[C, R, 2B]`` similarity matrix of R anchor views against all
2B views (R = 2B by default; one process's rows of a gathered global batch with ``anchors``, see
:func:`process_anchors`), in float32 even under autocast, and no ``[B, B, d]`` tensor is ever built.
The matrix is made once: masks are applied in place where autograd keeps no copy of the masked
tensor, and the log-sum-exp keeps only its exponentials for the backward.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from amcl.losses.checks import check_count, check_features, check_number, check_temperatures
from amcl.losses.partition import adaptive_log_partition, negative_side_weights
from amcl.losses.temperature import (
    NEGATIVE_REGULARIZERS,
    PairTemperatures,
    Temperatures,
    at_least_float32,
    negative_regularization,
    omega,
    selected_products,
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


class _MaskedLogSumExp(torch.autograd.Function):
    """Row-wise ``log sum_j exp(x_ij)`` over the entries ``mask`` leaves in (``None``: all), keeping one matrix.

    It saves ``exp(x - max)`` (which the forward computes anyway) instead of ``x``, and its backward is
    that matrix times ``grad / sum``: one new matrix, where autograd's logsumexp and masked_fill keep
    the masked copy and make three more (the shifted logits, their exp, the product) and one for the mask.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, mask: Tensor | None) -> Tensor:
        shifted = logits.clone() if mask is None else logits.masked_fill(mask, float("-inf"))
        peak = shifted.amax(-1, keepdim=True)
        exp = shifted.sub_(peak).exp_()  # in place: masked entries become exp(-inf) = 0
        total = exp.sum(-1, keepdim=True)
        ctx.save_for_backward(exp, total)
        return (peak + total.log()).squeeze(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        exp, total = ctx.saved_tensors
        return exp * (grad.unsqueeze(-1) / total), None  # the softmax times the incoming gradient


def _log_sum_exp(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """:class:`_MaskedLogSumExp` where a gradient is wanted, else torch's logsumexp (no copy kept)."""
    if torch.is_grad_enabled() and logits.requires_grad:
        return _MaskedLogSumExp.apply(logits, mask)
    return torch.logsumexp(logits if mask is None else logits.masked_fill(mask, float("-inf")), dim=-1)


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
    _check_constant("temperature", temperature)
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
        per_view = _log_sum_exp(logits, itself | positives if decoupled else itself) - positive_logits
        return per_view.mean(dim=-1).sum()


def _check_topk(k: int, candidates: int) -> None:
    """k hardest of ``candidates``: SimCLR's 2B - 2 other views (2B - 1 with the positive), MoCo's K (+ 1)."""
    if not 1 <= k <= candidates:
        raise ValueError(f"top-k must be between 1 and the number of negatives ({candidates}), got {k}")


#: The signed integer type of each float type's size, for :func:`_order_keys_`.
_KEY_TYPES = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
              torch.bfloat16: torch.int16}


#: Elements of :func:`_order_keys_`'s block: its temporary stays at 4 MiB whatever the matrix's size.
_KEY_BLOCK = 1 << 20


def _order_keys_(bits: Tensor) -> Tensor:
    """The bits of floats (a contiguous integer view) turned in place into integers of the same order as the
    floats (IEEE 754: flip all but the sign bit of the negative ones), block by block. It is its own inverse:
    applied to such keys it gives the floats' bits back. NaN keys land beyond +-inf, by their sign bit."""
    width, largest = bits.element_size() * 8, torch.iinfo(bits.dtype).max
    for block in bits.view(-1).split(_KEY_BLOCK):
        sign = block.bitwise_right_shift(width - 1)  # -1 for the negative ones, else 0
        block.bitwise_xor_(sign.bitwise_and_(largest))
    return bits


def _largest_entries(matrix: Tensor, k: int, excluded: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The k largest entries of each row outside ``excluded`` (a mask broadcast over ``matrix``), unsorted:
    ``(values, indices)``. ``matrix`` is used up: its storage holds their order keys afterwards.

    The selection runs on integer keys of the same order: the CPU's top-k compares floats with NaN checks
    and takes 1.6x as long (B = 256, k = 100; unsorted, since the order of the k plays no part)."""
    keys = _order_keys_(matrix.detach().view(_KEY_TYPES[matrix.dtype]))
    if excluded is not None:
        keys.masked_fill_(excluded, torch.iinfo(keys.dtype).min)
    values, index = keys.topk(k, dim=-1, sorted=False)
    return _order_keys_(values).view(matrix.dtype), index


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
    _check_topk(k, _simclr_candidates(n, include_positive))
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
    """Entries of a pair-temperature matrix (or its factors, or a constant) at ``index`` along the last axis."""
    if isinstance(temperatures, PairTemperatures):
        return temperatures.at(index)
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
    _check_topk(topk, _simclr_candidates(n, include_positive))
    _check_amcl_arguments(beta, omega_dim, negative_regularizer)
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
        pos_tau = _select(temperatures, pos_index, pos_sim.unsqueeze(-1)).squeeze(-1)
        neg_sim, neg_index = _largest_entries(sim, topk, itself if include_positive else itself | positives)
        neg_sim = selected_products(anchor_views, z, neg_index, neg_sim)
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
    anchors: Tensor | None = None,
) -> Tensor:
    """The AMCL SimCLR loss (Eq. 2.1; Eq. 2.4 with ``include_positive``): a scalar.

    See :func:`amcl_nt_xent_terms` for the arguments.

    Example:
        >>> from amcl.nn import TemperatureNet
        >>> z1, z2 = torch.randn(3, 8, 128), torch.randn(3, 8, 128)  # C=3 heads, B=8
        >>> phi = TemperatureNet(128)
        >>> taus = phi.pair_factors(torch.cat([z1, z2], dim=1))  # the [3, 16, 16] matrix, as factors
        >>> loss = amcl_nt_xent_loss(z1, z2, taus, beta=1e-4)
    """
    return amcl_nt_xent_terms(
        z1, z2, temperatures, beta, topk, negative_temperatures, include_positive, omega_dim, negative_regularizer,
        anchors,
    ).loss()


def _pair_matrix(temperatures: Temperatures, like: Tensor) -> Tensor:
    """A pair-temperature source (a tensor broadcastable to ``like``, its factors, or a constant) as a
    ``like``-shaped tensor; a constant is only expanded, never copied."""
    if isinstance(temperatures, PairTemperatures):
        return temperatures.matrix().expand_as(like)
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
    _check_amcl_arguments(beta, omega_dim, negative_regularizer)
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
            tau = _pair_matrix(temperatures, sim)
            if negative_temperatures is not None:
                tau = torch.where(positives, tau, _pair_matrix(negative_temperatures, sim))
            pos_tau = tau.gather(-1, pos_index).squeeze(-1)
            log_partition = _log_sum_exp(sim / tau, itself)
            not_negative = torch.cat([rows.expand(heads, anchor_count).unsqueeze(-1), pos_index], -1)
            negative_side = negative_regularization(tau, omega_dim, negative_regularizer, exclude=not_negative)
        return _softmax_terms(pos_sim, pos_tau, log_partition, negative_side, sim, tau, beta, omega_dim,
                              ~(itself | positives))


def _softmax_terms(pos_sim: Tensor, pos_tau: Tensor, log_partition: Tensor, negative_side: Tensor, sim: Tensor,
                   tau: Tensor, beta: float, omega_dim: int, negative_mask: Tensor | None = None) -> ContrastiveTerms:
    """The softmax form's terms from the positives ``[C, N]``, each anchor's log-partition and negative side of
    the regulariser ``[C, N]``, and the candidates' similarity and temperature matrices."""
    return ContrastiveTerms(
        positive=(-pos_sim / pos_tau).mean(-1),
        negative=log_partition.mean(-1),
        regularizer=(beta * (omega(pos_tau, omega_dim) - negative_side)).mean(-1),
        positive_temperatures=pos_tau,
        negative_temperatures=tau,
        positive_similarities=pos_sim,
        negative_similarities=sim,
        negative_mask=negative_mask,
    )


def amcl_softmax_nt_xent_loss(
    z1: Tensor,
    z2: Tensor,
    temperatures: Temperatures,
    beta: float = 1e-4,
    negative_temperatures: Temperatures | None = None,
    omega_dim: int | None = None,
    negative_regularizer: str = "mean_omega",
    anchors: Tensor | None = None,
) -> Tensor:
    """The AMCL SimCLR loss in softmax form as a scalar; see :func:`amcl_softmax_nt_xent_terms`."""
    return amcl_softmax_nt_xent_terms(
        z1, z2, temperatures, beta, negative_temperatures, omega_dim, negative_regularizer, anchors
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
        negatives = _log_sum_exp(q @ queue.transpose(1, 2) / temperature)
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
        _check_amcl_arguments(beta, omega_dim, negative_regularizer)
        omega_dim = q.shape[-1] if omega_dim is None else omega_dim
        check_count("topk", topk)
        _check_topk(topk, queue.shape[1] + int(include_positive))
        pos_sim = (q * k.detach()).sum(-1)
        pos_tau = _per_anchor(positive_temperatures, pos_sim)
        with torch.no_grad():
            queue_sim = q @ queue.transpose(1, 2)
        neg_sim, neg_index = _largest_entries(queue_sim, min(topk, queue.shape[1]))
        neg_sim = selected_products(q, queue, neg_index, neg_sim)
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
        queue_temperatures: tau(q_i, queue_j), ``[C, N, K]``: phi's factors of queries and queue (a
            :class:`PairTemperatures`, mapped inside one fused pass, as in :func:`amcl_softmax_nt_xent_terms`),
            the matrix (:func:`amcl.losses.pair_temperatures`), or a constant.
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
        if isinstance(queue_temperatures, PairTemperatures):  # one fused pass over [C, N, K]
            queue_partition, negative_side, neg_tau = adaptive_log_partition(
                neg_sim, queue_temperatures.scores(), queue_temperatures.tau_min, queue_temperatures.tau_max,
                *negative_side_weights(negative_regularizer, omega_dim, queue.shape[1]))
        else:
            neg_tau = _pair_matrix(queue_temperatures, neg_sim)
            queue_partition = _log_sum_exp(neg_sim / neg_tau)
            negative_side = negative_regularization(neg_tau, omega_dim, negative_regularizer)
        log_partition = torch.logaddexp(pos_sim / pos_tau, queue_partition)
        return _softmax_terms(pos_sim, pos_tau, log_partition, negative_side, neg_sim, neg_tau, beta, omega_dim)


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
