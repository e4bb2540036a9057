"""MoCo's two stateful pieces: the momentum (EMA) copy of the encoder and the per-head key queue."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FeatureQueue", "momentum_copy", "momentum_update_"]


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` to serve as its momentum (EMA) target: no parameter needs a gradient."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def momentum_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """EMA of the parameters, in place and fused over all tensors:
    ``target = momentum * target + (1 - momentum) * online``.

    Buffers (BatchNorm running statistics) are left alone: the target computes its own
    while encoding keys, as in MoCo.
    """
    targets: list[Tensor] = list(target.parameters())
    onlines: list[Tensor] = list(online.parameters())
    if len(targets) != len(onlines):
        raise ValueError("target and online modules must have the same parameters")
    torch._foreach_lerp_(targets, onlines, 1.0 - momentum)


class FeatureQueue(nn.Module):
    """C first-in first-out queues of ``size`` L2-normalised vectors, one per head: ``features`` is
    ``[C, size, dim]``, ``pointer`` the slot the next vector goes to.

    Both are buffers, so they are saved in checkpoints, move with the module, and never receive
    gradients. Starts with random unit vectors (as MoCo). :meth:`push` runs on the device with no
    host synchronisation.

    Example:
        >>> queue = FeatureQueue(heads=3, size=4096, dim=128)
        >>> queue.push(torch.randn(3, 512, 128))
        >>> int(queue.pointer)
        512
    """

    features: Tensor
    pointer: Tensor

    def __init__(self, heads: int, size: int, dim: int) -> None:
        super().__init__()
        if heads < 1 or size < 1 or dim < 1:
            raise ValueError(f"heads, size and dim must be positive, got {heads}, {size}, {dim}")
        self.register_buffer("features", F.normalize(torch.randn(heads, size, dim), dim=-1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.features.shape[1]

    @torch.no_grad()
    def push(self, keys: Tensor) -> None:
        """Enqueue ``[C, N, dim]`` keys (normalised here) over the oldest entries, wrapping around."""
        heads, _, dim = self.features.shape
        if keys.dim() != 3 or keys.shape[0] != heads or keys.shape[2] != dim:
            raise ValueError(f"keys must be [{heads}, N, {dim}], got {tuple(keys.shape)}")
        n = keys.shape[1]
        keys = F.normalize(keys.detach().to(self.features.dtype), dim=-1)
        start = self.pointer
        if n > self.size:  # only the newest `size` keys survive
            start, keys = start + (n - self.size), keys[:, n - self.size :]
        slots = (start + torch.arange(keys.shape[1], device=keys.device)) % self.size
        self.features.index_copy_(1, slots, keys)
        self.pointer.copy_((self.pointer + n) % self.size)
