"""Collectives for multi-process training (DDP through Lightning, torchrun or SLURM).

The contrastive losses must see the global batch: SimCLR's negatives and the AMCL hardest
negatives (with their temperatures) come from every process, Barlow Twins' cross-correlation is
computed over the whole batch. Each process therefore gathers the projections of all processes
with :func:`gather_with_grad` and computes the *global* loss.

Why the gradients come out exactly right: every process computes the same global loss L. The
backward of the gather sums, over processes, the gradient each computed for a shard, so process
r receives ``W * dL/dz_r`` for its own features; after DDP averages the parameter gradients over
the W processes, every parameter holds exactly ``dL/dtheta``, the single-process gradient of the
same global batch. Parameters used on the gathered features directly (the temperature network)
receive the full ``dL/dphi`` on every process, which the average leaves unchanged.

Without an initialised process group (one process) every function here is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather_no_grad", "gather_rows", "gather_views", "gather_with_grad", "is_distributed", "rank", "sum_across",
           "sum_with_grad", "world_size"]


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along ``dim``; the backward sums every process's gradient and keeps this shard.

    Uses all_reduce rather than reduce_scatter so it runs on gloo (CPU) as well as NCCL.
    """

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:
        ctx.dim, ctx.rank, ctx.size = dim, dist.get_rank(), x.shape[dim]
        shards = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(shards, x.contiguous())
        return torch.cat(shards, dim=dim)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad.narrow(ctx.dim, ctx.rank * ctx.size, ctx.size), None


def gather_with_grad(x: Tensor, dim: int = 0) -> Tensor:
    """The tensors of all processes concatenated along ``dim`` (in rank order), differentiable.

    Every process must pass the same shape. Identity in a single process.
    """
    return _GatherWithGrad.apply(x, dim) if is_distributed() else x


class _SumWithGrad(torch.autograd.Function):
    """All-reduce (sum); the backward sums every process's gradient of the total as well: each process
    computes the same loss from the total, so process r's share receives W times the loss's gradient,
    which DDP's average brings back to the single-process gradient (as with :class:`_GatherWithGrad`)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        total = x.contiguous().clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def sum_with_grad(x: Tensor) -> Tensor:
    """The sum of ``x`` over all processes, differentiable (Barlow Twins' batch statistics and
    cross-correlation from each process's own rows). Identity in a single process."""
    return _SumWithGrad.apply(x) if is_distributed() else x


def gather_views(x: Tensor, batch_size: int) -> Tensor:
    """This process's two views ``[C, 2B, ...]`` (``[view 1; view 2]``) as the global batch's ``[C, 2BW, ...]``:
    view 1 of every process, then view 2 of every process, in rank order (the rows
    :func:`amcl.losses.process_anchors` names). Differentiable; identity in a single process."""
    if not is_distributed():
        return x
    return torch.cat([gather_with_grad(x[:, :batch_size], 1), gather_with_grad(x[:, batch_size:], 1)], dim=1)


@torch.no_grad()
def gather_no_grad(x: Tensor, dim: int = 0) -> Tensor:
    """:func:`gather_with_grad` without gradient (e.g. MoCo's keys before they enter the queue)."""
    if not is_distributed():
        return x
    shards = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(shards, x.contiguous())
    return torch.cat(shards, dim=dim)


@torch.no_grad()
def sum_across(x: Tensor) -> Tensor:
    """The sum of ``x`` over all processes (a copy; identity in a single process)."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x


@torch.no_grad()
def gather_rows(x: Tensor) -> Tensor:
    """Concatenate the rows (dim 0) of every process's ``x``, which may differ in length."""
    if not is_distributed():
        return x
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.empty_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    shards = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(shards, padded)
    return torch.cat([shard[: int(c.item())] for shard, c in zip(shards, counts)])
