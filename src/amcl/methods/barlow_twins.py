"""Barlow Twins (Zbontar et al., 2021), as the cross-correlation baseline (Eq. 1.3) or with AMCL (Eq. 2.3)."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from amcl.config import PretrainConfig
from amcl.distributed import is_distributed, sum_with_grad, world_size
from amcl.errors import AmclError
from amcl.losses import amcl_barlow_twins_loss
from amcl.losses.barlow_twins import TemperatureScores
from amcl.losses.kernels import row_blocks
from amcl.methods.base import HeadTemperatures, PretrainMethod
from amcl.monitoring import BOUND_TOLERANCE, temperature_statistics
from amcl.nn import AMCLBarlowTwinsLoss, BarlowTwinsLoss


class BarlowTwins(PretrainMethod):
    """Backbone + C BatchNorm projectors (2048, 3 layers). With AMCL the temperature tau_lm of each
    cross-correlation entry comes from one temperature network over the batch-wise channel
    vectors (each channel's B standardised values, whose inner products give C): one ``[C, d, d]``
    matrix per step. Its input size is the global batch (``config.global_batch``: ``batch_size``
    x processes, recorded when the run starts), so every batch must have ``config.batch_size``
    images on every process.

    With several processes the cross-correlation and its temperatures are those of the global batch, from
    each process's own B rows only: the batch statistics and the d x d products are totalled over the
    processes, and so are phi's first layer on each process's entries of the channel vectors and their
    squared norms (:class:`amcl.nn.Shard`); nothing is gathered.

    The ablations read the diagonal (channel l with itself) as the positive pairs and the
    off-diagonal as the negative ones.
    """

    def __init__(self, config: PretrainConfig | dict, num_classes: int, normalization: dict | None = None) -> None:
        super().__init__(config, num_classes, normalization)
        config = self.config
        self.projector = self.make_projector(batch_norm=True)
        self.temperature_net = self.make_temperature_net(config.global_batch)
        self.criterion = AMCLBarlowTwinsLoss(
            config.global_batch, config.barlow_lambda, config.beta, config.tau_min, config.tau_max,
            config.head_reduction, config.temperature_hidden, self.detached_temperature_input, gather_distributed=True,
            temperature_mode=config.temperature_mode, temperature=config.temperature,
            temperature_net=self.temperature_net,
        ) if config.amcl else BarlowTwinsLoss(config.barlow_lambda, gather_distributed=True)

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
        # this process's rows; the statistics, the d x d products and phi's first layer totalled over processes
        total = sum_with_grad if is_distributed() else None
        z1, z2 = z[:, :batch], z[:, batch:]
        if not cfg.amcl:
            return self.criterion(z1, z2), {}
        # the criterion's channel temperatures: the scores (the sigmoid fused into the loss: no [C, d, d]
        # temperatures in the graph), the ablations' matrix, or the constant
        taus = self.criterion.channel_temperatures(self.channel_scores(z1, z2, total))
        loss = amcl_barlow_twins_loss(z1, z2, taus, cfg.barlow_lambda, cfg.beta, total=total)
        if isinstance(taus, float):  # one constant temperature for every pair
            tau = torch.full((), taus, device=loss.device)
            self.diagnose(tau_low=tau, tau_high=tau)
            return loss, {"tau_pos_mean": tau, "tau_neg_mean": tau}
        if isinstance(taus, TemperatureScores):
            summary = channel_summary(taus.scores, cfg.tau_min, cfg.tau_max, scores=True)
        else:
            summary = channel_summary(taus.detach(), cfg.tau_min, cfg.tau_max, scores=False)
        dim = z.shape[-1]
        self.diagnose(tau_low=torch.minimum(summary.diagonal.amin(), summary.off_min.amin()),
                      tau_high=torch.maximum(summary.diagonal.amax(), summary.off_max.amax()))
        if self.training:
            self.record_statistics(summary.statistics(cfg.tau_min, cfg.tau_max))
        off_diagonal_mean = summary.off_sum.sum() / max(1, summary.off_sum.numel() * (dim * dim - dim))
        return loss, {"tau_pos_mean": summary.diagonal.mean(), "tau_neg_mean": off_diagonal_mean}

    def analysis_images(self) -> int:
        return self.config.global_batch if self.temperature_net is not None else 0

    @torch.no_grad()
    def analysis_temperatures(self, z1: Tensor, z2: Tensor, outputs1: Tensor | None,
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
        taus = self.criterion.channel_temperatures(self.channel_scores(z1, z2))
        return taus.matrix() if isinstance(taus, TemperatureScores) else taus

    def channel_scores(self, z1: Tensor, z2: Tensor, total: Callable[[Tensor], Tensor] | None = None
                       ) -> TemperatureScores | None:
        """The criterion's channel scores (:meth:`amcl.nn.AMCLBarlowTwinsLoss.channel_scores`), None without a
        net; a batch whose size is not the one phi reads is an AmclError saying how to keep it."""
        cfg = self.config
        if self.temperature_net is None:
            return None
        batch, running, expected = z1.shape[1], 1 if total is None else world_size(), cfg.global_batch
        if batch * running != expected:
            world = expected // cfg.batch_size
            processes = f" on each of {world} processes" if world > 1 else ""
            here = f" on each of {running} processes" if running > 1 else ""
            raise AmclError(
                f"AMCL Barlow Twins' temperature network reads channel vectors of length {expected} (the global "
                f"batch: --batch-size {cfg.batch_size}{processes}), but got a batch of {batch} images{here}; keep "
                f"every batch at {cfg.batch_size} images{processes} (or pre-train again with --batch-size {batch})"
            )
        return self.criterion.channel_scores(z1, z2, total)


class ChannelSummary(NamedTuple):
    """Per head, what the monitoring reads of a ``[C, d, d]`` channel-temperature matrix: the diagonal
    tau_l ``[C, d]``, and over the off-diagonal tau_lm the sum, min and max ``[C]``; over every entry
    the counts at ``tau_min`` / ``tau_max`` (within :data:`~amcl.monitoring.BOUND_TOLERANCE`) ``[C]``."""

    diagonal: Tensor
    off_sum: Tensor
    off_min: Tensor
    off_max: Tensor
    at_min: Tensor
    at_max: Tensor

    def statistics(self, tau_min: float, tau_max: float) -> dict[str, Tensor]:
        """The per-head dict of :func:`channel_statistics`."""
        d = self.diagonal.shape[-1]
        stats = temperature_statistics(tau_min, tau_max, self.diagonal)
        off_diagonal_mean = self.off_sum / max(1, d * d - d)
        for c in range(self.diagonal.shape[0]):
            head = f"head{c + 1}"
            stats |= {f"{head}/tau_neg_mean": off_diagonal_mean[c], f"{head}/tau_neg_min": self.off_min[c],
                      f"{head}/tau_neg_max": self.off_max[c], f"{head}/share_at_tau_min": self.at_min[c] / (d * d),
                      f"{head}/share_at_tau_max": self.at_max[c] / (d * d)}
        return stats


@torch.no_grad()
def channel_summary(x: Tensor, tau_min: float, tau_max: float, scores: bool) -> ChannelSummary:
    """The :class:`ChannelSummary` of a ``[C, d, d]`` matrix of temperatures, or of their scores (``scores``:
    mapped as :func:`~amcl.losses.temperature_from_scores`) in the
    cache-sized row blocks of the fused loss: one read of ``x``, no ``[C, d, d]`` temporary (the
    masked copies, comparisons and casts of whole-matrix monitoring cost more than the loss itself)."""
    heads, d, _ = x.shape
    margin = BOUND_TOLERANCE * (tau_max - tau_min)
    diagonal = x.new_empty(heads, d)  # x's dtype: float32 in training, float64 in the exactness tests
    parts: dict[str, list[list[Tensor]]] = {k: [[] for _ in range(heads)] for k in ChannelSummary._fields[1:]}
    step = next(iter(row_blocks(heads, d, d, x.device)))[1]
    work = x.new_empty(step.stop - step.start, d)
    for head, block in row_blocks(heads, d, d, x.device):
        tau = work[: block.stop - block.start]
        if not scores:
            tau.copy_(x[head, block])
        else:
            torch.sigmoid(torch.neg(x[head, block], out=tau), out=tau).mul_(tau_max - tau_min).add_(tau_min)
        on = torch.diagonal(tau, offset=block.start)  # entries (l, l) of these rows
        diagonal[head, block].copy_(on)
        parts["off_sum"][head].append(tau.sum() - on.sum())
        parts["at_min"][head].append((tau <= tau_min + margin).sum())
        parts["at_max"][head].append((tau >= tau_max - margin).sum())
        # the diagonal overwritten by off-diagonal neighbours (l, l + 1), (d - 1, d - 2) for the last row: values
        # already among the off-diagonal ones, so one min-max pass over the block leaves the diagonal out
        right = torch.diagonal(tau, offset=block.start + 1)
        on[: right.numel()].copy_(right)
        if right.numel() < on.numel() and d > 1:
            on[-1] = tau[-1, d - 2]
        low, high = torch.aminmax(tau)
        parts["off_min"][head].append(low)
        parts["off_max"][head].append(high)
    sums = {k: torch.stack([torch.stack(p) for p in v]) for k, v in parts.items()}
    return ChannelSummary(diagonal, sums["off_sum"].sum(1), sums["off_min"].amin(1), sums["off_max"].amax(1),
                          sums["at_min"].sum(1).float(), sums["at_max"].sum(1).float())


def channel_statistics(taus: Tensor, tau_min: float, tau_max: float) -> dict[str, Tensor]:
    """Per-head monitoring of ``[C, d, d]`` channel temperatures: the diagonal tau_l as the positive
    pairs, the off-diagonal tau_lm as the negative ones. The shares at the bounds count every entry."""
    return channel_summary(taus, tau_min, tau_max, scores=False).statistics(tau_min, tau_max)
