"""SimSiam's loss: the symmetric negative cosine of predictions and stopped projections (Eq. 1.2), and its AMCL
form with a temperature per image pair (Eq. 2.2). Per-head inputs ``[C, B, d]`` (``[B, d]`` is one head);
summed over heads; float32 even under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from amcl.losses.checks import check_number, check_temperatures, checked_heads
from amcl.losses.kernels import at_least_float32
from amcl.losses.temperature import PairTemperatures, Temperatures, omega

__all__ = ["amcl_simsiam_loss", "simsiam_loss"]


def _tau(t: Temperatures, like: Tensor) -> Tensor:
    if isinstance(t, PairTemperatures):
        raise TypeError("per-image temperatures must be a tensor or a number, got PairTemperatures")
    if torch.is_tensor(t):
        return at_least_float32(t).expand_as(like) if t.dim() < like.dim() else at_least_float32(t)
    return torch.full_like(like, float(t))


def simsiam_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """SimSiam's symmetric negative cosine (Eq. 1.2): ``-(1/2) sim(p1, sg(z2)) - (1/2) sim(p2, sg(z1))``,
    averaged over the batch, summed over heads. ``p`` are predictor outputs, ``z`` projections.
    """
    p1, p2, z1, z2 = checked_heads("p1 p2 z1 z2", p1, p2, z1, z2)
    with torch.autocast(p1.device.type, enabled=False):
        sim = F.cosine_similarity(p1, z2.detach(), dim=-1) + F.cosine_similarity(p2, z1.detach(), dim=-1)
        return (-0.5 * sim).mean(-1).sum()


def amcl_simsiam_loss(
    p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor, tau1: Temperatures, tau2: Temperatures,
    beta: float = 1e-4, omega_dim: int | None = None,
) -> Tensor:
    """AMCL SimSiam (Eq. 2.2), per head and image:

        -(1/(2 tau1)) sim(p1, sg(z2)) - (1/(2 tau2)) sim(p2, sg(z1)) + beta*Omega(tau1) + beta*Omega(tau2)

    with ``tau1 = tau(p1, sg(z2))`` and ``tau2 = tau(p2, sg(z1))`` given as ``[C, B]`` tensors (e.g.
    :meth:`amcl.nn.TemperatureNet.paired_temperatures`) or constants. Mean over the batch, sum over heads.
    """
    p1, p2, z1, z2 = checked_heads("p1 p2 z1 z2", p1, p2, z1, z2)
    with torch.autocast(p1.device.type, enabled=False):
        omega_dim = p1.shape[-1] if omega_dim is None else omega_dim
        s1 = F.cosine_similarity(p1, z2.detach(), dim=-1)
        s2 = F.cosine_similarity(p2, z1.detach(), dim=-1)
        for name, tau in (("tau1", tau1), ("tau2", tau2)):
            check_temperatures(name, tau, tuple(s1.shape))
        check_number("beta", beta, positive=False)
        t1, t2 = _tau(tau1, s1), _tau(tau2, s2)
        per_image = -s1 / (2 * t1) - s2 / (2 * t2) + beta * (omega(t1, omega_dim) + omega(t2, omega_dim))
        return per_image.mean(-1).sum()
