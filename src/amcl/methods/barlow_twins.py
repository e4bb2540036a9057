"""Barlow Twins (Zbontar et al., 2021), as the cross-correlation baseline (Eq. 1.3) or with AMCL (Eq. 2.3)."""

from __future__ import annotations

import torch
from torch import Tensor

from amcl.config import PretrainConfig
from amcl.distributed import gather_with_grad
from amcl.errors import AmclError
from amcl.losses import amcl_barlow_twins_loss, barlow_twins_loss, batch_standardise
from amcl.losses.temperature import at_least_float32
from amcl.methods.base import HeadTemperatures, PretrainMethod, temperature_range
from amcl.monitoring import bound_shares, temperature_statistics


class BarlowTwins(PretrainMethod):
    """Backbone + C BatchNorm projectors (2048, 3 layers). With AMCL the temperature tau_lm of each
    cross-correlation entry comes from one temperature network over the batch-wise channel
    vectors (each channel's B standardised values, whose inner products give C): one ``[C, d, d]``
    matrix per step. Its input size is the global batch (``config.global_batch``: ``batch_size``
    x processes, recorded when the run starts), so every batch must have ``config.batch_size``
    images on every process.

    With several processes the projections are gathered (with gradients): the cross-correlation
    and its temperatures are those of the global batch.

    The ablations read the diagonal (channel l with itself) as the positive pairs and the
    off-diagonal as the negative ones.
    """

    def __init__(self, config: PretrainConfig | dict, num_classes: int, normalization: dict | None = None) -> None:
        super().__init__(config, num_classes, normalization)
        config = self.config
        self.projector = self.make_projector(batch_norm=True)
        self.temperature_net = self.make_temperature_net(config.global_batch)

    @classmethod
    def saved_config(cls, saved: dict, state_dict: dict[str, Tensor]) -> dict:
        """Checkpoints from before ``global_batch`` was recorded: phi's input width is the global batch."""
        weight = state_dict.get("temperature_net.phi.0.weight")
        if saved.get("global_batch") is None and weight is not None:
            return {**saved, "global_batch": int(weight.shape[1])}
        return saved

    def loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        batch, cfg = view1.shape[0], self.config
        z = self.projector(self.backbone(torch.cat([view1, view2])))  # [C, 2B, d]
        z1, z2 = gather_with_grad(z[:, :batch], 1), gather_with_grad(z[:, batch:], 1)  # the global batch
        if not cfg.amcl:
            return barlow_twins_loss(z1, z2, cfg.barlow_lambda), {}
        taus = self.channel_temperatures(z1, z2)
        loss = amcl_barlow_twins_loss(z1, z2, taus, cfg.barlow_lambda, cfg.beta)
        self.diagnose(**temperature_range(taus))
        with torch.no_grad():
            dim = z.shape[-1]
            taus = torch.as_tensor(taus, device=loss.device).detach().float().expand(z.shape[0], dim, dim)
            diagonal = torch.diagonal(taus, dim1=1, dim2=2)
            off_diagonal_mean = (taus.sum() - diagonal.sum()) / max(1, taus.numel() - diagonal.numel())
            if self.temperature_net is not None:
                self.record_statistics(channel_statistics(taus, cfg.tau_min, cfg.tau_max))
        return loss, {"tau_pos_mean": diagonal.mean(), "tau_neg_mean": off_diagonal_mean}

    def analysis_images(self) -> int:
        return self.config.global_batch if self.temperature_net is not None else 0

    @torch.no_grad()
    def analysis_temperatures(self, z1: Tensor, z2: Tensor, p1: Tensor | None,
                              partner: Tensor) -> tuple[list[HeadTemperatures] | None, str]:
        """Temperatures per channel pair (tau_lm over the batch-wise channel vectors) of the first
        ``global_batch`` positive pairs: the diagonal tau_ll as "positive", the off-diagonal as "negative"
        (``partner`` is not used); ``(None, reason)`` with fewer images."""
        cfg = self.config
        if self.temperature_net is None:
            return None, "constant"
        batch = cfg.global_batch
        if z1.shape[1] < batch:
            return None, (f"Barlow Twins' temperatures need {batch} images (its global batch), but only "
                          f"{z1.shape[1]} were analysed")
        taus = self.channel_temperatures(z1[:, :batch], z2[:, :batch])
        taus = torch.as_tensor(taus).float().expand(z1.shape[0], z1.shape[-1], z1.shape[-1])
        off = ~torch.eye(taus.shape[-1], dtype=torch.bool, device=taus.device)
        diagonal, negative, constant = torch.diagonal(taus, dim1=1, dim2=2), taus[:, off], float(cfg.temperature)
        return [HeadTemperatures(diagonal[c] if self.adaptive_positive else constant,
                                 negative[c] if self.adaptive_negative else constant)
                for c in range(taus.shape[0])], "channel"

    def channel_temperatures(self, z1: Tensor, z2: Tensor) -> Tensor | float:
        """tau_lm for every pair of channels (l of view 1, m of view 2): ``[C, d, d]``, or the constant."""
        cfg, net = self.config, self.temperature_net
        if net is None:
            return cfg.temperature
        batch, expected = z1.shape[1], cfg.global_batch
        if batch != expected:
            world = expected // cfg.batch_size
            processes = f" on each of {world} processes" if world > 1 else ""
            raise AmclError(
                f"AMCL Barlow Twins' temperature network reads channel vectors of length {expected} (the global "
                f"batch: --batch-size {cfg.batch_size}{processes}), but got a batch of {batch} images; keep every "
                f"batch at {cfg.batch_size} images{processes} (or pre-train again with --batch-size {batch})"
            )
        with torch.autocast(z1.device.type, enabled=False):
            channels1 = batch_standardise(at_least_float32(self.temperature_input(z1))).transpose(1, 2)  # [C, d, B]
            channels2 = batch_standardise(at_least_float32(self.temperature_input(z2))).transpose(1, 2)
            learned = net.pair_temperatures(channels1, channels2)
        if self.adaptive_positive and self.adaptive_negative:
            return learned
        diagonal = torch.eye(learned.shape[-1], dtype=torch.bool, device=learned.device)
        constant = torch.full_like(learned, cfg.temperature)
        if self.adaptive_positive:
            return torch.where(diagonal, learned, constant)
        return torch.where(diagonal, constant, learned)


@torch.no_grad()
def channel_statistics(taus: Tensor, tau_min: float, tau_max: float) -> dict[str, Tensor]:
    """Per-head monitoring of ``[C, d, d]`` channel temperatures: the diagonal tau_l as the positive
    pairs, the off-diagonal tau_lm as the negative ones (the mean from full sums minus the diagonal,
    without copying the off-diagonal entries). The shares at the bounds count every entry."""
    d = taus.shape[-1]
    diagonal = torch.diagonal(taus, dim1=1, dim2=2)
    stats = temperature_statistics(tau_min, tau_max, diagonal)
    off_diagonal_mean = (taus.sum((1, 2)) - diagonal.sum(-1)) / max(1, d * d - d)
    eye = torch.eye(d, dtype=torch.bool, device=taus.device)
    lowest = torch.where(eye, float("inf"), taus).amin((1, 2))
    highest = torch.where(eye, float("-inf"), taus).amax((1, 2))
    at_min, at_max = bound_shares(taus, tau_min, tau_max)
    for c in range(taus.shape[0]):
        head = f"head{c + 1}"
        stats |= {f"{head}/tau_neg_mean": off_diagonal_mean[c], f"{head}/tau_neg_min": lowest[c],
                  f"{head}/tau_neg_max": highest[c], f"{head}/share_at_tau_min": at_min[c],
                  f"{head}/share_at_tau_max": at_max[c]}
    return stats
