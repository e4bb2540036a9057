"""The temperature network phi shared by all heads (Sec. 3 of the paper)."""

from __future__ import annotations

from typing import Callable, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amcl.losses.temperature import (
    PairTemperatures,
    at_least_float32,
    pair_temperatures,
    paired_temperatures,
    temperature_from_scores,
)

__all__ = ["GlobalTemperature", "Shard", "TemperatureNet"]


class Shard(NamedTuple):
    """Input vectors whose entries are spread over processes: this process holds entries
    ``offset .. offset + n_r`` of each (AMCL Barlow Twins' channel vectors, one entry per image of the global
    batch, each process holding its own images'), and ``total`` sums a tensor over the processes with
    gradients (:func:`amcl.distributed.sum_with_grad`)."""

    offset: int
    total: Callable[[Tensor], Tensor]


class TemperatureNet(nn.Module):
    """phi = Linear(d, h) - ReLU - Linear(h, d) on L2-normalised features, and the pair temperatures

        tau(a, b) = tau_min + (tau_max - tau_min) * sigmoid(-<phi(a), phi(b)>).

    phi acts on single vectors; the temperatures of all pairs come from one matrix product of
    the embeddings (:meth:`pair_temperatures`), never from running phi on pairs. One instance is
    shared by every projection head. Runs in float32 even under autocast.

    When the output size d exceeds the hidden size h + 1 (SimSiam's and Barlow Twins' 2048-d or
    batch-sized inputs), the scores are computed exactly but cheaper by folding phi's last layer
    into an (h+1) x (h+1) Gram matrix: with r = [ReLU(W1 x + b1), 1] and W = [W2 | b2],
    ``<phi(a), phi(b)> = r_a (W^T W) r_b^T``.

    Example:
        >>> phi = TemperatureNet(dim=128, hidden=128, tau_min=1e-5, tau_max=2.0)
        >>> z = torch.randn(3, 16, 128)  # C heads x 2B views x d
        >>> phi.pair_temperatures(z).shape
        torch.Size([3, 16, 16])
    """

    def __init__(self, dim: int, hidden: int = 128, tau_min: float = 1e-5, tau_max: float = 2.0) -> None:
        super().__init__()
        if not 0 < tau_min < tau_max:
            raise ValueError(f"need 0 < tau_min < tau_max, got tau_min={tau_min}, tau_max={tau_max}")
        self.tau_min, self.tau_max = float(tau_min), float(tau_max)
        self.phi = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, z: Tensor) -> Tensor:
        """The embeddings phi(z / |z|), ``[..., d] -> [..., d]``."""
        with torch.autocast(z.device.type, enabled=False):
            return self._embed(z)

    def _embed(self, z: Tensor, shard: Shard | None = None) -> Tensor:
        return self.phi[2](self._first_layer(z, shard))

    def _first_layer(self, z: Tensor, shard: Shard | None = None) -> Tensor:
        """ReLU(W1 z/|z| + b1). With a ``shard`` of each vector's entries: W1's matching columns times them and
        the squared norm's parts, each totalled over the processes (|z| as F.normalize takes it, at least 1e-12)."""
        first = cast(nn.Linear, self.phi[0])
        z = at_least_float32(z)
        if shard is None:
            return self.phi[1](first(F.normalize(z, dim=-1)))
        if shard.offset < 0 or shard.offset + z.shape[-1] > first.in_features:
            raise ValueError(f"a shard of {z.shape[-1]} entries at {shard.offset} does not fit phi's input of "
                             f"{first.in_features}")
        columns = first.weight[:, shard.offset:shard.offset + z.shape[-1]]
        norm = shard.total(z.square().sum(-1, keepdim=True)).sqrt().clamp_min(1e-12)
        return self.phi[1](shard.total(z @ columns.T) / norm + first.bias)

    def _hidden(self, z: Tensor, shard: Shard | None = None) -> Tensor:
        """[ReLU(W1 z/|z| + b1), 1]: phi's hidden layer with a constant 1 for the last layer's bias."""
        r = self._first_layer(z, shard)
        return torch.cat([r, r.new_ones(*r.shape[:-1], 1)], dim=-1)

    def _last_layer(self) -> nn.Linear:
        return cast(nn.Linear, self.phi[2])

    def _folds_last_layer(self) -> bool:
        last = self._last_layer()
        return last.out_features > last.in_features + 1

    def _gram(self) -> Tensor:
        last = self._last_layer()
        w = torch.cat([last.weight, last.bias.unsqueeze(-1)], dim=-1)  # [d, h+1]
        return w.T @ w

    def pair_temperatures(self, a: Tensor, b: Tensor | None = None) -> Tensor:
        """tau(a_i, b_j) for all pairs: ``[..., N, d] x [..., M, d] -> [..., N, M]`` (b defaults to a)."""
        if not self._folds_last_layer():
            phi_a = self(a)
            phi_b = phi_a if b is None else self(b)
            return pair_temperatures(phi_a, phi_b, self.tau_min, self.tau_max)
        with torch.autocast(a.device.type, enabled=False):
            r_a = self._hidden(a)
            r_b = r_a if b is None else self._hidden(b)
            scores = (r_a @ self._gram()) @ r_b.transpose(-1, -2)
            return temperature_from_scores(scores, self.tau_min, self.tau_max)

    def pair_factors(self, a: Tensor, b: Tensor | None = None, shard: Shard | None = None) -> PairTemperatures:
        """The matrix of :meth:`pair_temperatures` as its two factors (phi(a), phi(b), or with the folded last
        layer (r_a W^T W, r_b)): a loss then computes only the entries it uses (the positive and the k
        hardest negatives of Eq. 2.1 / 2.4), and several processes gather the ``[..., M, h]`` right
        factor instead of features. b defaults to a.

        With a :class:`Shard`, ``a`` and ``b`` hold this process's entries of each input vector, and phi's
        first layer is totalled over the processes: every process gets the whole vectors' factors from
        ``[..., N, n_r]`` inputs (AMCL Barlow Twins' channel vectors of the global batch, with no gather).

        Example:
            >>> phi = TemperatureNet(dim=128)
            >>> z = torch.randn(3, 16, 128)
            >>> factors = phi.pair_factors(z)
            >>> factors.pair_shape
            (3, 16, 16)
            >>> torch.allclose(factors.matrix(), phi.pair_temperatures(z))
            True
        """
        if not self._folds_last_layer():
            with torch.autocast(a.device.type, enabled=False):
                phi_a = self._embed(a, shard)
                return PairTemperatures(phi_a, phi_a if b is None else self._embed(b, shard), self.tau_min,
                                        self.tau_max)
        with torch.autocast(a.device.type, enabled=False):
            r_a = self._hidden(a, shard)
            r_b = r_a if b is None else self._hidden(b, shard)
            return PairTemperatures(r_a @ self._gram(), r_b, self.tau_min, self.tau_max)

    def paired_temperatures(self, a: Tensor, b: Tensor) -> Tensor:
        """tau(a_i, b_i) for row-wise pairs: ``[..., N, d] x [..., N, d] -> [..., N]``."""
        if not self._folds_last_layer():
            return paired_temperatures(self(a), self(b), self.tau_min, self.tau_max)
        with torch.autocast(a.device.type, enabled=False):
            scores = ((self._hidden(a) @ self._gram()) * self._hidden(b)).sum(-1)
            return temperature_from_scores(scores, self.tau_min, self.tau_max)


class GlobalTemperature(nn.Module):
    """One learned temperature per head, the control that separates a learned temperature level from
    pair-adaptive temperatures (``--temperature-mode global``):

        tau_c = tau_min + (tau_max - tau_min) * sigmoid(-s_c),

    with a learned score s_c per head, inside the bounds of :class:`TemperatureNet` and the losses' same
    regulariser. It has TemperatureNet's interface (:meth:`pair_temperatures`, :meth:`pair_factors`,
    :meth:`paired_temperatures`), so every method and form uses it unchanged: its factors are ``[C, N, 1]``
    columns of s_c against ones, whose product is s_c for every pair. With one head and the softmax form
    this is NT-Xent with a learned temperature. s_c starts at 0 (the middle of the bounds).

    Example:
        >>> taus = GlobalTemperature(heads=3, tau_min=0.05, tau_max=2.0)
        >>> z = torch.randn(3, 16, 128)
        >>> taus.pair_temperatures(z).shape, round(taus.temperatures().tolist()[0], 4)
        (torch.Size([3, 16, 16]), 1.025)
    """

    def __init__(self, heads: int, tau_min: float = 1e-5, tau_max: float = 2.0) -> None:
        super().__init__()
        if not 0 < tau_min < tau_max:
            raise ValueError(f"need 0 < tau_min < tau_max, got tau_min={tau_min}, tau_max={tau_max}")
        self.tau_min, self.tau_max = float(tau_min), float(tau_max)
        self.score = nn.Parameter(torch.zeros(heads))

    def temperatures(self) -> Tensor:
        """tau_c of every head: ``[C]``."""
        return temperature_from_scores(at_least_float32(self.score), self.tau_min, self.tau_max)

    def _column(self, z: Tensor, values: Tensor) -> Tensor:
        """``values[c]`` for every row of ``z`` ``[C, N, d]``: ``[C, N, 1]``."""
        return at_least_float32(values).view(-1, 1, 1).expand(*z.shape[:-1], 1)

    def pair_factors(self, a: Tensor, b: Tensor | None = None, shard: Shard | None = None) -> PairTemperatures:
        """Factors whose product is s_c for every pair of rows of ``a`` ``[C, N, d]`` and ``b`` ``[C, M, d]``
        (``shard`` is accepted for TemperatureNet's interface: the inputs' entries do not matter)."""
        b = a if b is None else b
        return PairTemperatures(self._column(a, self.score), self._column(b, torch.ones_like(self.score)),
                                self.tau_min, self.tau_max)

    def pair_temperatures(self, a: Tensor, b: Tensor | None = None) -> Tensor:
        """tau_c for all pairs: ``[C, N, d] x [C, M, d] -> [C, N, M]``."""
        b = a if b is None else b
        return self.temperatures().view(-1, 1, 1).expand(*a.shape[:-1], b.shape[-2])

    def paired_temperatures(self, a: Tensor, b: Tensor) -> Tensor:
        """tau_c for row-wise pairs: ``[C, N, d] x [C, N, d] -> [C, N]``."""
        return self.temperatures().view(-1, 1).expand(*a.shape[:-1])
