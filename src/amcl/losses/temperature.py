"""Temperature maths shared by every AMCL loss: the pair temperatures and the regulariser Omega.

All of it runs in float32, also under autocast: tau_min is 1e-5, so 1/tau reaches 1e5.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from amcl.losses.checks import check_count, check_temperature_bounds

#: A temperature source: a constant, or a tensor of per-pair temperatures.
Temperatures = Union[float, Tensor]

__all__ = [
    "NEGATIVE_REGULARIZERS",
    "Temperatures",
    "at_least_float32",
    "negative_regularization",
    "omega",
    "pair_temperatures",
    "paired_temperatures",
    "temperature_from_scores",
]

#: The negative side of the regulariser over an anchor's negatives tau_n, n = 1..k:
#: ``mean_omega`` is mean_n Omega(tau_n) (Eq. 2.1 for k = 1, averaged for k > 1), ``sum_log_inverse``
#: is sum_n (log tau_n + 1/tau_n), what the authors' later code computes (no d'/2, summed over k).
NEGATIVE_REGULARIZERS = ("mean_omega", "sum_log_inverse")


def at_least_float32(x: Tensor) -> Tensor:
    """Half and bfloat16 tensors as float32; float32 and float64 unchanged (gradcheck runs in float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def temperature_from_scores(scores: Tensor, tau_min: float, tau_max: float) -> Tensor:
    """Map scores s = <phi(a), phi(b)> to tau = tau_min + (tau_max - tau_min) * sigmoid(-s).

    The bounded form of the paper's sigma(r) (Sec. 3): a large score (phi says "alike")
    gives a low temperature.
    """
    check_temperature_bounds(tau_min, tau_max)
    return tau_min + (tau_max - tau_min) * torch.sigmoid(-at_least_float32(scores))


def pair_temperatures(phi_a: Tensor, phi_b: Tensor, tau_min: float, tau_max: float) -> Tensor:
    """Temperatures of all pairs (a_i, b_j) from one matrix product.

    Args:
        phi_a: ``[..., N, h]`` temperature embeddings phi(a) (see :class:`amcl.nn.TemperatureNet`).
        phi_b: ``[..., M, h]`` temperature embeddings phi(b).

    Returns:
        ``[..., N, M]`` with entry (i, j) = tau(a_i, b_j).

    Example:
        >>> p = torch.zeros(4, 8)
        >>> pair_temperatures(p, p, 0.0, 2.0)[0, 0].item()  # sigmoid(0) = 0.5
        1.0
    """
    _check_embeddings(phi_a, phi_b, same_rows=False)
    with torch.autocast(phi_a.device.type, enabled=False):
        scores = at_least_float32(phi_a) @ at_least_float32(phi_b).transpose(-1, -2)
        return temperature_from_scores(scores, tau_min, tau_max)


def _check_embeddings(phi_a: Tensor, phi_b: Tensor, same_rows: bool) -> None:
    for name, phi in (("phi_a", phi_a), ("phi_b", phi_b)):
        if not torch.is_tensor(phi) or not phi.is_floating_point() or phi.dim() < 2:
            got = f"shape {tuple(phi.shape)}" if torch.is_tensor(phi) else type(phi).__name__
            raise (ValueError if torch.is_tensor(phi) else TypeError)(
                f"{name} must be a floating-point tensor [..., N, h] of temperature embeddings, got {got}")
    if phi_a.shape[-1] != phi_b.shape[-1] or (same_rows and phi_a.shape != phi_b.shape):
        need = "the same shape" if same_rows else "the same embedding size h (last dimension)"
        raise ValueError(f"phi_a and phi_b need {need}, got {tuple(phi_a.shape)} and {tuple(phi_b.shape)}")


def paired_temperatures(phi_a: Tensor, phi_b: Tensor, tau_min: float, tau_max: float) -> Tensor:
    """Temperatures of the row-wise pairs (a_i, b_i): ``[..., N, h] x [..., N, h] -> [..., N]``."""
    _check_embeddings(phi_a, phi_b, same_rows=True)
    with torch.autocast(phi_a.device.type, enabled=False):
        return temperature_from_scores((at_least_float32(phi_a) * at_least_float32(phi_b)).sum(-1), tau_min, tau_max)


def omega(tau: Tensor, dim: int) -> Tensor:
    """The temperature regulariser Omega(tau) = (d'/2) * log(tau) + 1/tau (Eq. 2.1-2.4).

    ``dim`` is d', the dimension of the projected features. Omega is minimal at tau = 2/d'.
    """
    check_count("dim", dim)
    tau = at_least_float32(tau)
    return 0.5 * dim * torch.log(tau) + torch.reciprocal(tau)


def negative_regularization(
    tau: Tensor, dim: int, kind: str = "mean_omega", exclude: Tensor | None = None
) -> Tensor:
    """The negative side of the regulariser per anchor, over the last axis of ``tau`` (see
    :data:`NEGATIVE_REGULARIZERS`): mean_n Omega(tau_n) or sum_n (log tau_n + 1/tau_n).

    ``exclude`` holds indices along the last axis that are not negatives (SimCLR's full ``[C, 2B, 2B]``
    matrix holds each view itself and its positive): they are left out of the sum and of the count,
    without a masked copy of ``tau``.

    Example:
        >>> tau = torch.tensor([[0.5, 1.0]])
        >>> negative_regularization(tau, 2, "sum_log_inverse")  # (log 0.5 + 2) + (log 1 + 1)
        tensor([2.3069])
    """
    if kind not in NEGATIVE_REGULARIZERS:
        raise ValueError(f"unknown negative regulariser {kind!r}; choose one of: {', '.join(NEGATIVE_REGULARIZERS)}")
    tau = at_least_float32(tau)
    values = omega(tau, dim) if kind == "mean_omega" else torch.log(tau) + torch.reciprocal(tau)
    total, count = values.sum(-1), values.shape[-1]
    if exclude is not None:
        total = total - values.gather(-1, exclude).sum(-1)
        count -= exclude.shape[-1]
    return total / count if kind == "mean_omega" else total
