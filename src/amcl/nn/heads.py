"""C independent projection heads, computed as one batched MLP."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["HeadwiseLinear", "MultiHeadPredictor", "MultiHeadProjector"]


class HeadwiseLinear(nn.Module):
    """C independent linear layers applied at once: ``[C, B, in] -> [C, B, out]`` with one bmm.

    Initialised like C separate ``nn.Linear`` layers (uniform in +-1/sqrt(in)).
    """

    def __init__(self, heads: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(heads, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(heads, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class _HeadwiseBatchNorm(nn.BatchNorm1d):
    """BatchNorm over ``[C, B, dim]`` with separate statistics and affine weights for each head."""

    def __init__(self, heads: int, dim: int, affine: bool = True) -> None:
        super().__init__(heads * dim, affine=affine)
        self.heads = heads

    def forward(self, x: Tensor) -> Tensor:
        c, b, d = x.shape
        y = super().forward(x.transpose(0, 1).reshape(b, c * d))
        return y.reshape(b, c, d).transpose(0, 1)


def _later_layers(heads: int, widths: list[int], batch_norm: bool, last_batch_norm: bool) -> nn.Sequential:
    """The layers after a first linear layer of width ``widths[0]``: [BatchNorm] ReLU Linear per width."""
    layers: list[nn.Module] = []
    for i in range(1, len(widths)):
        if batch_norm:
            layers.append(_HeadwiseBatchNorm(heads, widths[i - 1]))
        layers += [nn.ReLU(), HeadwiseLinear(heads, widths[i - 1], widths[i])]
    if last_batch_norm:
        layers.append(_HeadwiseBatchNorm(heads, widths[-1], affine=False))
    return nn.Sequential(*layers)


class MultiHeadProjector(nn.Module):
    """C projection heads with one architecture and independent weights (Fig. "architecture").

    Each head is an MLP ``in -> hidden[0] -> ... -> out``, with (optionally BatchNorm and) ReLU
    between layers, e.g. SimCLR's 512-512-128 or SimSiam's 2048-2048-2048 with BatchNorm. The
    first layer of all heads is one ``nn.Linear(in, C * hidden)`` (all heads read the same
    backbone features); later layers run as one batched matrix product over heads.

    Args:
        in_dim: backbone feature size.
        hidden_dims: widths of the hidden layers (an int for one hidden layer).
        out_dim: projection size d'.
        heads: number of heads C.
        batch_norm: BatchNorm after every hidden layer.
        last_batch_norm: BatchNorm (no affine) on the output, as in SimSiam's projector.

    Example:
        >>> proj = MultiHeadProjector(512, 512, 128, heads=3)
        >>> proj(torch.randn(8, 512)).shape
        torch.Size([3, 8, 128])
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: int | Sequence[int],
        out_dim: int,
        heads: int = 1,
        batch_norm: bool = False,
        last_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"need at least one head, got {heads}")
        hidden = [hidden_dims] if isinstance(hidden_dims, int) else list(hidden_dims)
        self.heads, self.out_dim = heads, out_dim
        self.first = nn.Linear(in_dim, heads * (hidden[0] if hidden else out_dim))
        self.rest = _later_layers(heads, hidden + [out_dim], batch_norm, last_batch_norm)

    def forward(self, h: Tensor) -> Tensor:
        """Backbone features ``[B, in]`` -> projections ``[C, B, out]``."""
        x = self.first(h)
        x = x.view(h.shape[0], self.heads, -1).transpose(0, 1)
        return self.rest(x)


class MultiHeadPredictor(nn.Module):
    """One predictor per head (SimSiam's ``in -> hidden -> out`` with BatchNorm and ReLU on the
    hidden layer), each reading its own head's projection: ``[C, B, in] -> [C, B, out]``.

    Example:
        >>> pred = MultiHeadPredictor(2048, 512, 2048, heads=3)
        >>> pred(torch.randn(3, 8, 2048)).shape
        torch.Size([3, 8, 2048])
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, heads: int = 1) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"need at least one head, got {heads}")
        self.heads, self.out_dim = heads, out_dim
        self.first = HeadwiseLinear(heads, in_dim, hidden_dim)
        self.rest = _later_layers(heads, [hidden_dim, out_dim], batch_norm=True, last_batch_norm=False)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 3 or z.shape[0] != self.heads:
            raise ValueError(f"expected per-head projections [{self.heads}, B, d], got {tuple(z.shape)}")
        return self.rest(self.first(z))
