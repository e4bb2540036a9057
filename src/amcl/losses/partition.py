"""The softmax form's per-anchor sums over every candidate in one fused pass (our extension's hot spot).

For ``[C, R, M]`` similarities s and temperature scores x of the same pairs, with
``tau = tau_min + (tau_max - tau_min) * sigmoid(-x)`` (the bounded sigma of Sec. 3), per row i:

    log_partition_i = log sum_{j not excluded} exp(s_ij / tau_ij)
    negative_side_i = scale * sum_{j negative} (weight * log tau_ij + 1 / tau_ij)

``weight = d'/2, scale = 1 / (number of negatives)`` is the mean of Omega (Eq. 2.1's regulariser) over the
negatives, ``weight = scale = 1`` the authors' later sum of log tau + 1/tau. Autograd would keep about a
dozen ``[C, R, M]`` intermediates of these few lines (the temperatures, 1/tau, the logits, their shifted
exponentials, log tau, the masked copies) and make as many in the backward; this function keeps its two
inputs and the row sums, makes the temperatures (for monitoring) and, in the backward, the two gradients,
and works in cache-sized row blocks on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from amcl.losses.kernels import row_blocks

__all__ = ["adaptive_log_partition", "negative_side_weights"]


def negative_side_weights(kind: str, dim: int, negatives: int) -> tuple[float, float]:
    """``(weight, scale)`` of :func:`adaptive_log_partition`'s negative side for a regulariser of
    :data:`amcl.losses.NEGATIVE_REGULARIZERS`: the mean of Omega with d' = ``dim`` over ``negatives`` per row,
    or the sum of log tau + 1/tau."""
    return (0.5 * dim, 1.0 / negatives) if kind == "mean_omega" else (1.0, 1.0)


class _AdaptiveLogPartition(torch.autograd.Function):
    """Both sums in cache-sized row blocks (:func:`amcl.losses.siamese.row_blocks`: each of the dozen elementwise
    steps then reads a block in cache, not the whole matrix from memory); only the two inputs and the row
    log-partitions are saved. The gradients are analytic, with p_ij = exp(s_ij / tau_ij - log_partition_i) the
    softmax over the candidates (0 where excluded):

        d/ds   = g_partition p / tau
        d/dtau = -(d/ds) s / tau + g_negative scale (weight / tau - 1 / tau^2)   (the second term on negatives)
        d/dx   = d/dtau dtau/dx,  dtau/dx = -(tau_max - tau_min) q (1 - q),  q = sigmoid(-x).
    """

    @staticmethod
    def forward(ctx: Any, sim: Tensor, scores: Tensor, excluded: Tensor | None, not_negative: Tensor | None,
                bounds: tuple[float, float], weight: float, scale: float) -> tuple[Tensor, Tensor, Tensor]:
        (tau_min, tau_max), (heads, rows, cols) = bounds, sim.shape
        tau = torch.empty_like(sim, memory_format=torch.contiguous_format)
        log_partition, negative_side = sim.new_empty(heads, rows), sim.new_empty(heads, rows)
        step = next(iter(row_blocks(heads, rows, cols, sim.device)))[1]
        work = [sim.new_empty(step.stop - step.start, cols) for _ in range(2)]
        for head, block in row_blocks(heads, rows, cols, sim.device):
            t, w, inverse = tau[head, block], *(buffer[: block.stop - block.start] for buffer in work)
            torch.sigmoid(torch.neg(scores[head, block], out=t), out=t).mul_(tau_max - tau_min).add_(tau_min)
            torch.div(sim[head, block], t, out=w)
            if excluded is not None:
                w.scatter_(-1, excluded[block], float("-inf"))
            peak = w.amax(-1, keepdim=True)
            log_partition[head, block] = (peak + w.sub_(peak).exp_().sum(-1, keepdim=True).log()).squeeze(-1)
            torch.log(t, out=w).mul_(weight).add_(torch.reciprocal(t, out=inverse))  # weight log tau + 1/tau
            if not_negative is not None:
                w.scatter_(-1, not_negative[block], 0.0)
            negative_side[head, block] = w.sum(-1) * scale
        ctx.save_for_backward(sim, scores, log_partition)
        ctx.masks, ctx.bounds, ctx.weight, ctx.scale = (excluded, not_negative), bounds, weight, scale
        ctx.mark_non_differentiable(tau)
        return log_partition, negative_side, tau

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_partition: Tensor, grad_negative: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
        sim, scores, log_partition = ctx.saved_tensors
        (excluded, not_negative), (tau_min, tau_max), weight = ctx.masks, ctx.bounds, ctx.weight
        heads, rows, cols = sim.shape
        grad_sim = torch.empty_like(sim, memory_format=torch.contiguous_format)
        grad_scores = torch.empty_like(sim, memory_format=torch.contiguous_format)
        negative_weights = (grad_negative * ctx.scale).unsqueeze(-1)
        step = next(iter(row_blocks(heads, rows, cols, sim.device)))[1]
        work = [sim.new_empty(step.stop - step.start, cols) for _ in range(3)]
        for head, block in row_blocks(heads, rows, cols, sim.device):
            s, q, t, u = sim[head, block], *(buffer[: block.stop - block.start] for buffer in work)
            torch.sigmoid(torch.neg(scores[head, block], out=q), out=q)
            torch.mul(q, tau_max - tau_min, out=t).add_(tau_min)
            gs, gx = grad_sim[head, block], grad_scores[head, block]
            torch.div(s, t, out=gs).sub_(log_partition[head, block].unsqueeze(-1)).exp_()  # the softmax p
            if excluded is not None:
                gs.scatter_(-1, excluded[block], 0.0)
            gs.mul_(grad_partition[head, block].unsqueeze(-1)).div_(t)
            torch.mul(gs, s, out=gx).div_(t).neg_()  # d/dtau from the partition
            torch.mul(t, weight, out=u).sub_(1.0).div_(t).div_(t)  # weight / tau - 1 / tau^2
            if not_negative is not None:
                u.scatter_(-1, not_negative[block], 0.0)
            gx.addcmul_(u, negative_weights[head, block])
            gx.mul_(torch.addcmul(q, q, q, value=-1, out=t)).mul_(tau_min - tau_max)  # dtau/dx
        return grad_sim, grad_scores, None, None, None, None, None


def adaptive_log_partition(
    sim: Tensor, scores: Tensor, tau_min: float, tau_max: float, weight: float, scale: float,
    excluded: Tensor | None = None, not_negative: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(log_partition, negative_side, tau)`` per row of ``[C, R, M]`` similarities and temperature scores
    (the module's docstring gives the sums); ``excluded`` and ``not_negative`` are ``[R, e]`` column indices
    of each row's entries left out of the partition and out of the negatives (the same for every head;
    ``None``: none). ``tau``, the ``[C, R, M]`` temperatures, is for monitoring: it takes no gradient (the
    scores do).

    Example:
        >>> sim, scores = torch.rand(3, 8, 8), torch.randn(3, 8, 8)
        >>> itself = torch.arange(8).unsqueeze(-1)  # each row's own column
        >>> log_partition, negative_side, tau = adaptive_log_partition(
        ...     sim, scores, 0.05, 2.0, weight=64.0, scale=1 / 7, excluded=itself, not_negative=itself)
        >>> log_partition.shape, negative_side.shape, tau.shape
        (torch.Size([3, 8]), torch.Size([3, 8]), torch.Size([3, 8, 8]))
    """
    return _AdaptiveLogPartition.apply(sim, scores.expand_as(sim), excluded, not_negative, (float(tau_min),
                                       float(tau_max)), float(weight), float(scale))
