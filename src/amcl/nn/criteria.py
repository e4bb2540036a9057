"""Drop-in loss modules for other training loops (lightly, solo-learn or plain PyTorch).

Each module takes its hyper-parameters in ``__init__`` and returns a scalar from ``forward``; an AMCL
module owns the temperature network phi shared by the heads (so ``criterion.parameters()`` must go to
the optimiser). They are thin wrappers of the pure functions in :mod:`amcl.losses`, with the defaults
``amcl pretrain --amcl`` uses (:func:`amcl.specs.amcl_loss_defaults`). Projections may be ``[B, d]``
(one head) or ``[C, B, d]`` (C heads, e.g. from :class:`amcl.nn.MultiHeadProjector`).

After a call, an AMCL module's ``last_terms`` holds the loss's parts (:class:`amcl.losses.ContrastiveTerms`
for SimCLR and MoCo) or its temperatures, for logging.

Several processes (DDP): with ``gather_distributed=True`` the SimCLR and Barlow Twins modules take the global
batch into account, as ``amcl pretrain`` does: each process passes its own views; SimCLR's candidates (and
their temperatures' factors) are gathered with gradients and each process computes its own anchors' rows of
the global loss; Barlow Twins' batch statistics and cross-correlation (and phi's channel vectors) are
totalled over the processes. With DDP averaging the gradients, they equal one process's on the global batch.
Without it every process uses its local batch only (its own negatives). MoCo's negatives are its queue and
SimSiam has none, so their modules need no gathering (MoCo's keys are gathered before they enter the queue,
which is the training loop's job: :func:`amcl.distributed.gather_no_grad`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from amcl.distributed import gather_views, is_distributed, rank, sum_with_grad, world_size
from amcl.losses import (
    ContrastiveTerms,
    amcl_barlow_twins_loss,
    amcl_moco_terms,
    amcl_nt_xent_terms,
    amcl_simsiam_loss,
    amcl_softmax_moco_terms,
    amcl_softmax_nt_xent_terms,
    barlow_twins_loss,
    batch_standardise,
    moco_infonce_loss,
    nt_xent_loss,
    process_anchors,
    simsiam_loss,
)
from amcl.losses.barlow_twins import TemperatureScores
from amcl.losses.temperature import at_least_float32, temperature_from_scores
from amcl.nn.temperature import Shard, TemperatureNet
from amcl.specs import METHOD_SPECS, amcl_loss_defaults, canonical_form

__all__ = [
    "AMCLBarlowTwinsLoss",
    "AMCLMoCoLoss",
    "AMCLNTXentLoss",
    "AMCLSimSiamLoss",
    "BarlowTwinsLoss",
    "MoCoLoss",
    "NTXentLoss",
    "SimSiamLoss",
]


def _heads(z: Tensor) -> Tensor:
    return z.unsqueeze(0) if z.dim() == 2 else z


def _global_views(z0: Tensor, z1: Tensor, gather: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """With ``gather`` under DDP: the two views of the global batch (gathered with gradients, in
    :func:`amcl.losses.process_anchors`' order) and this process's anchor rows; else the views and None."""
    if not (gather and is_distributed()):
        return z0, z1, None
    batch = z0.shape[1]
    g0, g1 = gather_views(torch.cat([z0, z1], dim=1), batch).chunk(2, dim=1)
    return g0, g1, process_anchors(batch, rank(), world_size(), z0.device)


def _total(gather: bool):
    """Barlow Twins' sum over processes (with gradients) under DDP with ``gather``; None otherwise."""
    return sum_with_grad if gather and is_distributed() else None


class _AMCLLoss(nn.Module):
    """The settings every AMCL module shares: the temperature module, its bounds, beta, the heads' reduction, and
    the paper's temperature ablations.

    ``temperature_mode``: ``adaptive`` (every pair's temperature from phi), ``positive`` / ``negative`` (only
    that side's; the other uses the constant ``temperature``), ``constant`` (both constant: no phi) or
    ``global`` (one learned temperature per head: pass ``temperature_net=GlobalTemperature(heads, ...)``).
    ``temperature_net``: a temperature module owned elsewhere (a training method's phi, saved with it), used
    instead of building one; it is then not part of this module's parameters."""

    def __init__(self, method: str, dim: int, form: str | None, beta: float | None, tau_min: float | None,
                 tau_max: float | None, head_reduction: str | None, hidden: int, detach_input: bool,
                 temperature_mode: str = "adaptive", temperature: float | None = None,
                 negative_regularizer: str = "mean_omega", temperature_net: nn.Module | None = None) -> None:
        super().__init__()
        form = canonical_form(form)  # infonce, the earlier name of hardest_with_positive, is accepted
        defaults = amcl_loss_defaults(method, form)
        given = {"beta": beta, "tau_min": tau_min, "tau_max": tau_max, "head_reduction": head_reduction,
                 "temperature": temperature}
        settings: dict[str, Any] = {**defaults, **{k: v for k, v in given.items() if v is not None}}
        if settings["head_reduction"] not in ("sum", "mean"):
            raise ValueError(f"head_reduction must be sum or mean, got {settings['head_reduction']!r}")
        spec = METHOD_SPECS[method]
        if form is not None and form not in spec.amcl_forms:
            raise ValueError(f"form must be one of {', '.join(spec.amcl_forms)}, got {form!r}")
        if temperature_mode not in spec.temperature_modes:
            raise ValueError(f"temperature_mode must be one of {', '.join(spec.temperature_modes)}, got "
                             f"{temperature_mode!r}")
        self.form, self.beta = settings["amcl_form"], float(settings["beta"])
        self.head_reduction, self.detach_input = settings["head_reduction"], detach_input
        self.temperature_mode, self.temperature = temperature_mode, float(settings["temperature"])
        self.negative_regularizer = negative_regularizer
        self.adaptive_positive = temperature_mode in ("adaptive", "positive", "global")
        self.adaptive_negative = temperature_mode in ("adaptive", "negative", "global")
        self.temperature_net: Any
        if temperature_net is not None:  # shared, not registered: its owner moves and saves it
            object.__setattr__(self, "temperature_net", temperature_net)
        elif temperature_mode == "global":
            raise ValueError("temperature_mode global learns one temperature per head: pass "
                             "temperature_net=GlobalTemperature(heads, tau_min, tau_max)")
        elif self.adaptive_positive or self.adaptive_negative:
            self.temperature_net = TemperatureNet(dim, hidden, settings["tau_min"], settings["tau_max"])
        else:
            self.temperature_net = None
        self.tau_bounds = (float(settings["tau_min"]), float(settings["tau_max"]))
        self.last_terms: Any = None

    def _phi_input(self, z: Tensor) -> Tensor:
        return z.detach() if self.detach_input else z

    def _sides(self, learned: Any, positive: Any = None) -> tuple[Any, Any]:
        """The positive and negative pairs' temperatures: the learned ones where the mode adapts that side (the
        positive side's own values when given), else the constant."""
        return (((learned if positive is None else positive) if self.adaptive_positive else self.temperature),
                learned if self.adaptive_negative else self.temperature)

    def _reduce(self, loss: Tensor, heads: int) -> Tensor:
        return loss / heads if self.head_reduction == "mean" else loss

    def extra_repr(self) -> str:
        low, high = self.tau_bounds
        return (f"form={self.form}, beta={self.beta:g}, tau_min={low:g}, tau_max={high:g}, "
                f"head_reduction={self.head_reduction}, temperature_mode={self.temperature_mode}")


class NTXentLoss(nn.Module):
    """SimCLR's NT-Xent (Eq. 1.1) over the 2B views, summed over heads (:func:`amcl.losses.nt_xent_loss`).

    Example:
        >>> criterion = NTXentLoss(temperature=0.5)
        >>> loss = criterion(torch.randn(8, 128), torch.randn(8, 128))
    """

    def __init__(self, temperature: float = 0.5, decoupled: bool = False, gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature, self.decoupled, self.gather_distributed = temperature, decoupled, gather_distributed

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        z0, z1, anchors = _global_views(_heads(z0), _heads(z1), self.gather_distributed)
        return nt_xent_loss(z0, z1, self.temperature, self.decoupled, anchors=anchors)


class AMCLNTXentLoss(_AMCLLoss):
    """AMCL SimCLR: ``form`` softmax (recommended, the default), hardest (Eq. 2.1) or hardest_with_positive
    (Eq. 2.4), with pair temperatures from the shared temperature net (:func:`amcl.losses.amcl_softmax_nt_xent_terms`,
    :func:`amcl.losses.amcl_nt_xent_terms`). ``amcl pretrain``'s SimCLR computes its loss with this module.

    Args:
        dim: the projection size d' (phi's input).
        form, beta, tau_min, tau_max, head_reduction: as ``amcl pretrain``'s options; None takes the
            form's and SimCLR's defaults (softmax: beta 0.01, tau in [0.05, 2], the heads' mean).
        topk: the hardest negatives averaged (hardest and hardest_with_positive forms).
        hidden: phi's hidden width. detach_input: phi reads the projections without gradients.
        gather_distributed: under DDP, the negatives of every process (see the module's notes).
        temperature_mode, temperature, negative_regularizer, temperature_net: the ablations (see
            ``_AMCLLoss``), the constant of a side they keep fixed, the regulariser's negative side
            (``mean_omega`` or ``sum_log_inverse``) and a temperature module owned elsewhere.

    Example:
        >>> from amcl.nn import MultiHeadProjector
        >>> heads, criterion = MultiHeadProjector(512, 512, 128, heads=3), AMCLNTXentLoss(dim=128)
        >>> h0, h1 = torch.randn(8, 512), torch.randn(8, 512)  # backbone features of two views
        >>> loss = criterion(heads(h0), heads(h1))  # [3, 8, 128] each
    """

    def __init__(self, dim: int, form: str | None = None, beta: float | None = None, tau_min: float | None = None,
                 tau_max: float | None = None, head_reduction: str | None = None, topk: int = 1, hidden: int = 128,
                 detach_input: bool = False, gather_distributed: bool = False, temperature_mode: str = "adaptive",
                 temperature: float | None = None, negative_regularizer: str = "mean_omega",
                 temperature_net: nn.Module | None = None) -> None:
        super().__init__("simclr", dim, form, beta, tau_min, tau_max, head_reduction, hidden, detach_input,
                         temperature_mode, temperature, negative_regularizer, temperature_net)
        self.topk, self.gather_distributed = topk, gather_distributed

    def terms(self, z0: Tensor, z1: Tensor) -> ContrastiveTerms:
        """The loss's parts, summed over heads by ``.loss()`` (before the heads' reduction)."""
        z0, z1 = _heads(z0), _heads(z1)
        batch, net, learned = z0.shape[1], self.temperature_net, None
        if net is not None:  # one factored [C, 2B, 2BW] matrix serves positives and negatives
            learned = net.pair_factors(self._phi_input(torch.cat([z0, z1], dim=1)))  # phi on this process's views
        z0, z1, anchors = _global_views(z0, z1, self.gather_distributed)
        if learned is not None and anchors is not None:  # every process's right factors, gathered with the views
            learned = learned._replace(right=gather_views(learned.right, batch))
        positive, negative = self._sides(learned)
        if self.form == "softmax":
            return amcl_softmax_nt_xent_terms(z0, z1, positive, self.beta, negative,
                                              negative_regularizer=self.negative_regularizer, anchors=anchors)
        with_positive = self.form == "hardest_with_positive"
        return amcl_nt_xent_terms(z0, z1, positive, self.beta, self.topk, negative, with_positive,
                                  negative_regularizer=self.negative_regularizer, anchors=anchors)

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        terms = self.last_terms = self.terms(z0, z1)
        return self._reduce(terms.loss(), _heads(z0).shape[0])


class MoCoLoss(nn.Module):
    """MoCo's InfoNCE of queries against their keys and a queue (:func:`amcl.losses.moco_infonce_loss`).

    Example:
        >>> criterion = MoCoLoss(temperature=0.1)
        >>> loss = criterion(torch.randn(8, 128), torch.randn(8, 128), torch.randn(4096, 128))
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, q: Tensor, k: Tensor, queue: Tensor) -> Tensor:
        return moco_infonce_loss(q, k, queue, self.temperature)


class AMCLMoCoLoss(_AMCLLoss):
    """AMCL MoCo: each head's queue as the negatives, temperatures from phi's embeddings of the queries and of
    [keys; queue] (one matrix product for the queue; :func:`amcl.losses.amcl_softmax_moco_terms`,
    :func:`amcl.losses.amcl_moco_terms`). Arguments as :class:`AMCLNTXentLoss`, with MoCo's defaults; its
    negatives are the queue, so it needs no gathering under DDP. ``amcl pretrain``'s MoCo uses this module.

    Example:
        >>> criterion = AMCLMoCoLoss(dim=128)
        >>> q, k, queue = torch.randn(3, 8, 128), torch.randn(3, 8, 128), torch.randn(3, 256, 128)
        >>> loss = criterion(q, k, queue)
    """

    def __init__(self, dim: int, form: str | None = None, beta: float | None = None, tau_min: float | None = None,
                 tau_max: float | None = None, head_reduction: str | None = None, topk: int = 1, hidden: int = 128,
                 detach_input: bool = False, temperature_mode: str = "adaptive", temperature: float | None = None,
                 negative_regularizer: str = "mean_omega", temperature_net: nn.Module | None = None) -> None:
        super().__init__("moco", dim, form, beta, tau_min, tau_max, head_reduction, hidden, detach_input,
                         temperature_mode, temperature, negative_regularizer, temperature_net)
        self.topk = topk

    def terms(self, q: Tensor, k: Tensor, queue: Tensor) -> ContrastiveTerms:
        """The loss's parts, summed over heads by ``.loss()`` (before the heads' reduction)."""
        q, k = _heads(q), _heads(k)
        queue = _heads(queue).detach()
        net, learned, positive = self.temperature_net, None, None
        if net is not None:  # phi runs once on the queries and once on [keys; queue]; no pair is embedded
            factors = net.pair_factors(self._phi_input(q), torch.cat([k.detach(), queue], dim=1))
            keys = factors.right[:, :k.shape[1]]
            # tau(q_i, k_i): the row-wise products of the factors, [C, 2B]; tau(q_i, queue_j) as factors
            positive = temperature_from_scores((factors.left * keys).sum(-1), net.tau_min, net.tau_max)
            learned = factors._replace(right=factors.right[:, k.shape[1]:])
        positive, negative = self._sides(learned, positive)
        if self.form == "softmax":
            return amcl_softmax_moco_terms(q, k, queue, positive, negative, self.beta,
                                           negative_regularizer=self.negative_regularizer)
        with_positive = self.form == "hardest_with_positive"
        return amcl_moco_terms(q, k, queue, positive, negative, self.beta, self.topk, with_positive,
                               negative_regularizer=self.negative_regularizer)

    def forward(self, q: Tensor, k: Tensor, queue: Tensor) -> Tensor:
        terms = self.last_terms = self.terms(q, k, queue)
        return self._reduce(terms.loss(), _heads(q).shape[0])


class SimSiamLoss(nn.Module):
    """SimSiam's symmetric negative cosine (Eq. 1.2; :func:`amcl.losses.simsiam_loss`).

    Example:
        >>> p0, p1, z0, z1 = (torch.randn(8, 256) for _ in range(4))
        >>> loss = SimSiamLoss()(p0, p1, z0, z1)
    """

    def forward(self, p0: Tensor, p1: Tensor, z0: Tensor, z1: Tensor) -> Tensor:
        return simsiam_loss(p0, p1, z0, z1)


class AMCLSimSiamLoss(_AMCLLoss):
    """AMCL SimSiam (Eq. 2.2): ``tau(p0, sg(z1))`` and ``tau(p1, sg(z0))`` from the temperature net
    (:func:`amcl.losses.amcl_simsiam_loss`). Defaults: SimSiam's (tau in [1, 2], where Eq. 2.2's pull to
    the floor keeps the loss's scale; the heads' mean). ``dim`` is the projection size. SimSiam has only
    positive pairs: ``temperature_mode`` adaptive (= positive) or constant. ``amcl pretrain``'s SimSiam reads
    its temperatures from this module.

    Example:
        >>> p0, p1, z0, z1 = (torch.randn(3, 8, 256) for _ in range(4))
        >>> loss = AMCLSimSiamLoss(dim=256)(p0, p1, z0, z1)
    """

    def __init__(self, dim: int, beta: float | None = None, tau_min: float | None = None,
                 tau_max: float | None = None, head_reduction: str | None = None, hidden: int = 128,
                 detach_input: bool = False, temperature_mode: str = "adaptive", temperature: float | None = None,
                 temperature_net: nn.Module | None = None) -> None:
        super().__init__("simsiam", dim, None, beta, tau_min, tau_max, head_reduction, hidden, detach_input,
                         temperature_mode, temperature, "mean_omega", temperature_net)

    def temperatures(self, p0: Tensor, p1: Tensor, z0: Tensor, z1: Tensor) -> tuple[Tensor | float, Tensor | float]:
        """tau(p0, sg(z1)) and tau(p1, sg(z0)) ``[C, B]``, or the constant twice."""
        net = self.temperature_net
        if net is None:
            return self.temperature, self.temperature
        return (net.paired_temperatures(self._phi_input(p0), z1.detach()),
                net.paired_temperatures(self._phi_input(p1), z0.detach()))

    def forward(self, p0: Tensor, p1: Tensor, z0: Tensor, z1: Tensor) -> Tensor:
        p0, p1, z0, z1 = (_heads(t) for t in (p0, p1, z0, z1))
        tau0, tau1 = self.last_terms = self.temperatures(p0, p1, z0, z1)
        return self._reduce(amcl_simsiam_loss(p0, p1, z0, z1, tau0, tau1, self.beta), p0.shape[0])


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins (Eq. 1.3; :func:`amcl.losses.barlow_twins_loss`).

    Example:
        >>> loss = BarlowTwinsLoss()(torch.randn(16, 64), torch.randn(16, 64))
    """

    def __init__(self, lambd: float = 5e-3, gather_distributed: bool = False) -> None:
        super().__init__()
        self.lambd, self.gather_distributed = lambd, gather_distributed

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        return barlow_twins_loss(z0, z1, self.lambd, total=_total(self.gather_distributed))


class AMCLBarlowTwinsLoss(_AMCLLoss):
    """AMCL Barlow Twins (Eq. 2.3): a temperature per pair of channels, from the temperature net over the
    batch-standardised channel vectors, so phi's input size is the batch size ``batch_size`` (every batch
    must have that many images; :func:`amcl.losses.amcl_barlow_twins_loss`). With ``gather_distributed`` under
    DDP, ``batch_size`` is the global batch (every process's images) and each process passes its own rows.
    The ablations (``temperature_mode`` positive / negative) learn the diagonal tau_ll or the off-diagonal
    tau_lm only. ``amcl pretrain``'s Barlow Twins reads its channel temperatures from this module.

    Example:
        >>> criterion = AMCLBarlowTwinsLoss(batch_size=16)
        >>> loss = criterion(torch.randn(3, 16, 64), torch.randn(3, 16, 64))
    """

    def __init__(self, batch_size: int, lambd: float = 5e-3, beta: float | None = None,
                 tau_min: float | None = None, tau_max: float | None = None, head_reduction: str | None = None,
                 hidden: int = 128, detach_input: bool = False, gather_distributed: bool = False,
                 temperature_mode: str = "adaptive", temperature: float | None = None,
                 temperature_net: nn.Module | None = None) -> None:
        super().__init__("barlow_twins", batch_size, None, beta, tau_min, tau_max, head_reduction, hidden,
                         detach_input, temperature_mode, temperature, "mean_omega", temperature_net)
        self.batch_size, self.lambd, self.gather_distributed = batch_size, lambd, gather_distributed

    def channel_scores(self, z0: Tensor, z1: Tensor, total: Callable[[Tensor], Tensor] | None = None
                       ) -> TemperatureScores | None:
        """The temperature net's scores s_lm of every pair of channels, ``[C, d, d]`` (tau_lm =
        tau_min + (tau_max - tau_min) sigmoid(-s_lm)), from one matrix product of its factors over the
        batch-standardised channel vectors; None without a net. With ``total`` (several processes) ``z0``,
        ``z1`` are this process's rows: its shard of the global batch's channel vectors, at its rank's offset."""
        net = self.temperature_net
        if net is None:
            return None
        shard = None if total is None else Shard(rank() * z0.shape[1], total)
        with torch.autocast(z0.device.type, enabled=False):
            channels0, channels1 = (  # [C, d, B]
                batch_standardise(at_least_float32(self._phi_input(z)), total=total).transpose(1, 2)
                for z in (z0, z1))
            factors = net.pair_factors(channels0, channels1, shard=shard)
            return TemperatureScores(factors.left @ factors.right.transpose(-1, -2), net.tau_min, net.tau_max)

    def channel_temperatures(self, scores: TemperatureScores | None) -> TemperatureScores | Tensor | float:
        """What the loss reads: the scores themselves (the sigmoid fused into the loss), the ablations' matrix
        (learned on the diagonal only, or off it only, the constant elsewhere), or the constant."""
        if scores is None:
            return self.temperature
        if self.adaptive_positive and self.adaptive_negative:
            return scores
        learned = scores.matrix()
        diagonal = torch.eye(learned.shape[-1], dtype=torch.bool, device=learned.device)
        constant = torch.full_like(learned, self.temperature)
        return torch.where(diagonal, learned, constant) if self.adaptive_positive else \
            torch.where(diagonal, constant, learned)

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        z0, z1 = _heads(z0), _heads(z1)
        total = _total(self.gather_distributed)
        processes = world_size() if total is not None else 1
        if z0.shape[1] * processes != self.batch_size:
            raise ValueError(f"AMCLBarlowTwinsLoss(batch_size={self.batch_size}) reads channel vectors of that many "
                             f"images, got a batch of {z0.shape[1]}" + (f" on each of {processes} processes"
                                                                         if processes > 1 else ""))
        taus = self.last_terms = self.channel_temperatures(self.channel_scores(z0, z1, total))
        return self._reduce(amcl_barlow_twins_loss(z0, z1, taus, self.lambd, self.beta, total=total), z0.shape[0])
