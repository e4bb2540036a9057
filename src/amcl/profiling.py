"""Memory accounting for losses: the largest tensor an operation makes, by element count.

A loss written in matrix form can still make a ``[C, N, N, d]`` tensor somewhere in its forward or backward;
peak memory on a CPU hides it among the allocator's pools. :class:`LargestTensor` sees every tensor every op
returns (``TorchDispatchMode``), so a test or benchmark can pin what a loss may allocate::

    with LargestTensor() as largest:
        loss = nt_xent_loss(z0, z1, 0.5)
        loss.backward()
    assert largest.numel <= 4 * batch * batch  # never a tensor beyond the [C, 2B, 2B] similarities
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["LargestTensor"]


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any op produces (a sparse tensor counts the elements
    it stores, its indices and values, not its dense shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                stored = t._indices().numel() + t._values().numel() if t.is_sparse else t.numel()
                self.numel = max(self.numel, stored)
        return out
