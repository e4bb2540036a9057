"""The temperature network phi shared by all heads (Sec. 3 of the paper)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amcl.losses.temperature import at_least_float32, pair_temperatures, paired_temperatures

__all__ = ["TemperatureNet"]


class TemperatureNet(nn.Module):
    """phi = Linear(d, h) - ReLU - Linear(h, d) on L2-normalised features, and the pair temperatures

        tau(a, b) = tau_min + (tau_max - tau_min) * sigmoid(-<phi(a), phi(b)>).

    phi acts on single vectors; the temperatures of all pairs come from one matrix product of
    the embeddings (:meth:`pair_temperatures`), never from running phi on pairs. One instance is
    shared by every projection head. Runs in float32 even under autocast.

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
            return self.phi(F.normalize(at_least_float32(z), dim=-1))

    def pair_temperatures(self, a: Tensor, b: Tensor | None = None) -> Tensor:
        """tau(a_i, b_j) for all pairs: ``[..., N, d] x [..., M, d] -> [..., N, M]`` (b defaults to a)."""
        phi_a = self(a)
        phi_b = phi_a if b is None else self(b)
        return pair_temperatures(phi_a, phi_b, self.tau_min, self.tau_max)

    def paired_temperatures(self, a: Tensor, b: Tensor) -> Tensor:
        """tau(a_i, b_i) for row-wise pairs: ``[..., N, d] x [..., N, d] -> [..., N]``."""
        return paired_temperatures(self(a), self(b), self.tau_min, self.tau_max)
