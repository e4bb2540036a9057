"""Non-contrastive losses: SimSiam's negative cosine (Eq. 1.2 / 2.2) and Barlow Twins' cross-correlation
(Eq. 1.3 / 2.3), baseline and AMCL forms. Per-head inputs ``[C, B, d]`` (``[B, d]`` is one head);
losses are summed over heads. Float32 even under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from amcl.losses.checks import check_features, check_number, check_temperatures
from amcl.losses.temperature import Temperatures, at_least_float32, omega

__all__ = [
    "amcl_barlow_twins_loss",
    "amcl_simsiam_loss",
    "barlow_twins_loss",
    "batch_standardise",
    "cross_correlation",
    "simsiam_loss",
]


def _heads(names: str, *tensors: Tensor) -> list[Tensor]:
    for name, tensor in zip(names.split(), tensors):
        check_features(name, tensor)
    shape = tensors[0].shape
    if any(t.shape != shape for t in tensors):
        raise ValueError(f"all inputs must have one shape, got {[tuple(t.shape) for t in tensors]}")
    if len(shape) not in (2, 3):
        raise ValueError(f"features must be [B, d] or [C, B, d], got {tuple(shape)}")
    return [at_least_float32(t if t.dim() == 3 else t.unsqueeze(0)) for t in tensors]


def _tau(t: Temperatures, like: Tensor) -> Tensor:
    if torch.is_tensor(t):
        return at_least_float32(t).expand_as(like) if t.dim() < like.dim() else at_least_float32(t)
    return torch.full_like(like, float(t))


def simsiam_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """SimSiam's symmetric negative cosine (Eq. 1.2): ``-(1/2) sim(p1, sg(z2)) - (1/2) sim(p2, sg(z1))``,
    averaged over the batch, summed over heads. ``p`` are predictor outputs, ``z`` projections.
    """
    p1, p2, z1, z2 = _heads("p1 p2 z1 z2", p1, p2, z1, z2)
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
    p1, p2, z1, z2 = _heads("p1 p2 z1 z2", p1, p2, z1, z2)
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


def batch_standardise(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Each channel of ``[C, B, d]`` standardised over the batch, as BatchNorm without affine
    (biased variance plus ``eps``). Its channel vectors ``z[c, :, l]`` are what Barlow Twins
    correlates, and what the AMCL temperature net reads (Eq. 2.3)."""
    return (z - z.mean(-2, keepdim=True)) / torch.sqrt(z.var(-2, unbiased=False, keepdim=True) + eps)


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """Barlow Twins' cross-correlation ``[C, d, d]`` of the batch-standardised views
    (:func:`batch_standardise`)."""
    z1, z2 = _heads("z1 z2", z1, z2)
    batch = z1.shape[1]
    if batch < 2:
        raise ValueError("Barlow Twins needs at least 2 images per batch")
    return batch_standardise(z1, eps).transpose(1, 2) @ batch_standardise(z2, eps) / batch


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float = 5e-3) -> Tensor:
    """Barlow Twins (Eq. 1.3): ``sum_l (1 - C_ll)^2 + lambda * sum_{l != m} C_lm^2``, summed over heads."""
    check_number("lambd", lambd, positive=False)
    z1, z2 = _heads("z1 z2", z1, z2)
    with torch.autocast(z1.device.type, enabled=False):
        c = cross_correlation(z1, z2)
        diagonal = torch.diagonal(c, dim1=1, dim2=2)
        off_diagonal = c.pow(2).sum((1, 2)) - diagonal.pow(2).sum(-1)
        return ((1 - diagonal).pow(2).sum(-1) + lambd * off_diagonal).sum()


def amcl_barlow_twins_loss(
    z1: Tensor, z2: Tensor, temperatures: Temperatures, lambd: float = 5e-3, beta: float = 1e-6,
    omega_dim: int | None = None,
) -> Tensor:
    """AMCL Barlow Twins (Eq. 2.3), per head:

        sum_l (1 - C_ll/tau_l)^2 + lambda * sum_{l != m} C_lm^2/tau_lm
            + beta * sum_l Omega(tau_l) - beta * sum_{l != m} Omega(tau_lm)

    ``temperatures`` is ``[C, d, d]`` (tau_l on the diagonal; from a temperature net over the
    batch-wise channel vectors, so its input size is the batch size) or a constant.
    """
    z1, z2 = _heads("z1 z2", z1, z2)
    with torch.autocast(z1.device.type, enabled=False):
        c = cross_correlation(z1, z2)
        check_temperatures("temperatures", temperatures, tuple(c.shape))
        check_number("lambd", lambd, positive=False)
        check_number("beta", beta, positive=False)
        omega_dim = c.shape[-1] if omega_dim is None else omega_dim
        tau = _tau(temperatures, c)
        diagonal, tau_diagonal = torch.diagonal(c, dim1=1, dim2=2), torch.diagonal(tau, dim1=1, dim2=2)
        omega_diagonal = omega(tau_diagonal, omega_dim)
        # The off-diagonal terms lambda * C_lm^2 / tau_lm - beta * Omega(tau_lm), summed as full [C, d, d]
        # sums minus the diagonal (no mask), in as few passes over the d x d entries as possible:
        # lambda C^2 / tau - beta (d'/2 log tau + 1/tau) = (lambda C^2 - beta) / tau - beta d'/2 log tau.
        full = ((lambd * c.pow(2) - beta) / tau).sum((1, 2)) - (0.5 * beta * omega_dim) * torch.log(tau).sum((1, 2))
        off_diagonal = full - (lambd * diagonal.pow(2) / tau_diagonal - beta * omega_diagonal).sum(-1)
        loss = (1 - diagonal / tau_diagonal).pow(2).sum(-1) + beta * omega_diagonal.sum(-1) + off_diagonal
        return loss.sum()
