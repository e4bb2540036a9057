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

from typing import Any

import torch
from torch import Tensor, nn

from amcl.distributed import gather_views, is_distributed, rank, sum_with_grad, world_size
from amcl.losses import (
    PairTemperatures,
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
    paired_temperatures,
    process_anchors,
    simsiam_loss,
)
from amcl.losses.temperature import at_least_float32
from amcl.nn.temperature import Shard, TemperatureNet
from amcl.specs import METHOD_SPECS, amcl_loss_defaults

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
    """The settings every AMCL module shares: the temperature net, its bounds, beta and the heads' reduction."""

    def __init__(self, method: str, dim: int, form: str | None, beta: float | None, tau_min: float | None,
                 tau_max: float | None, head_reduction: str | None, hidden: int, detach_input: bool) -> None:
        super().__init__()
        defaults = amcl_loss_defaults(method, form)
        given = {"beta": beta, "tau_min": tau_min, "tau_max": tau_max, "head_reduction": head_reduction}
        settings: dict[str, Any] = {**defaults, **{k: v for k, v in given.items() if v is not None}}
        if settings["head_reduction"] not in ("sum", "mean"):
            raise ValueError(f"head_reduction must be sum or mean, got {settings['head_reduction']!r}")
        forms = METHOD_SPECS[method].amcl_forms
        if form is not None and form not in forms:
            raise ValueError(f"form must be one of {', '.join(forms)}, got {form!r}")
        self.form, self.beta = settings["amcl_form"], float(settings["beta"])
        self.head_reduction, self.detach_input = settings["head_reduction"], detach_input
        self.temperature_net = TemperatureNet(dim, hidden, settings["tau_min"], settings["tau_max"])
        self.last_terms: Any = None

    def _phi_input(self, z: Tensor) -> Tensor:
        return z.detach() if self.detach_input else z

    def _reduce(self, loss: Tensor, heads: int) -> Tensor:
        return loss / heads if self.head_reduction == "mean" else loss

    def extra_repr(self) -> str:
        net = self.temperature_net
        return (f"form={self.form}, beta={self.beta:g}, tau_min={net.tau_min:g}, tau_max={net.tau_max:g}, "
                f"head_reduction={self.head_reduction}")


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
    """AMCL SimCLR: ``form`` softmax (recommended, the default), hardest (Eq. 2.1) or infonce (Eq. 2.4), with
    pair temperatures from the shared temperature net (:func:`amcl.losses.amcl_softmax_nt_xent_terms`,
    :func:`amcl.losses.amcl_nt_xent_terms`).

    Args:
        dim: the projection size d' (phi's input).
        form, beta, tau_min, tau_max, head_reduction: as ``amcl pretrain``'s options; None takes the
            form's and SimCLR's defaults (softmax: beta 0.01, tau in [0.05, 2], the heads' mean).
        topk: the hardest negatives averaged (hardest and infonce forms).
        hidden: phi's hidden width. detach_input: phi reads the projections without gradients.
        gather_distributed: under DDP, the negatives of every process (see the module's notes).

    Example:
        >>> from amcl.nn import MultiHeadProjector
        >>> heads, criterion = MultiHeadProjector(512, 512, 128, heads=3), AMCLNTXentLoss(dim=128)
        >>> h0, h1 = torch.randn(8, 512), torch.randn(8, 512)  # backbone features of two views
        >>> loss = criterion(heads(h0), heads(h1))  # [3, 8, 128] each
    """

    def __init__(self, dim: int, form: str | None = None, beta: float | None = None, tau_min: float | None = None,
                 tau_max: float | None = None, head_reduction: str | None = None, topk: int = 1, hidden: int = 128,
                 detach_input: bool = False, gather_distributed: bool = False) -> None:
        super().__init__("simclr", dim, form, beta, tau_min, tau_max, head_reduction, hidden, detach_input)
        self.topk, self.gather_distributed = topk, gather_distributed

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        z0, z1 = _heads(z0), _heads(z1)
        # phi runs on this process's views; the right factors of every process are gathered with the views
        taus = self.temperature_net.pair_factors(self._phi_input(torch.cat([z0, z1], dim=1)))
        batch = z0.shape[1]
        z0, z1, anchors = _global_views(z0, z1, self.gather_distributed)
        if anchors is not None:
            taus = taus._replace(right=gather_views(taus.right, batch))
        if self.form == "softmax":
            terms = amcl_softmax_nt_xent_terms(z0, z1, taus, self.beta, anchors=anchors)
        else:
            terms = amcl_nt_xent_terms(z0, z1, taus, self.beta, self.topk, include_positive=self.form == "infonce",
                                       anchors=anchors)
        self.last_terms = terms
        return self._reduce(terms.loss(), z0.shape[0])


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
    """AMCL MoCo: each head's queue as the negatives, temperatures from phi's embeddings of queries, keys
    and queue (one matrix product for the queue; :func:`amcl.losses.amcl_softmax_moco_terms`,
    :func:`amcl.losses.amcl_moco_terms`). Arguments as :class:`AMCLNTXentLoss`, with MoCo's defaults.

    Example:
        >>> criterion = AMCLMoCoLoss(dim=128)
        >>> q, k, queue = torch.randn(3, 8, 128), torch.randn(3, 8, 128), torch.randn(3, 256, 128)
        >>> loss = criterion(q, k, queue)
    """

    def __init__(self, dim: int, form: str | None = None, beta: float | None = None, tau_min: float | None = None,
                 tau_max: float | None = None, head_reduction: str | None = None, topk: int = 1, hidden: int = 128,
                 detach_input: bool = False) -> None:
        super().__init__("moco", dim, form, beta, tau_min, tau_max, head_reduction, hidden, detach_input)
        self.topk = topk

    def forward(self, q: Tensor, k: Tensor, queue: Tensor) -> Tensor:
        q, k = _heads(q), _heads(k)
        queue = _heads(queue).detach()
        net = self.temperature_net
        phi_q = net(self._phi_input(q))
        positive = paired_temperatures(phi_q, net(k.detach()), net.tau_min, net.tau_max)  # [C, N]
        negative = PairTemperatures(phi_q, net(queue), net.tau_min, net.tau_max)  # [C, N, K], as its factors
        if self.form == "softmax":
            terms = amcl_softmax_moco_terms(q, k, queue, positive, negative, self.beta)
        else:
            terms = amcl_moco_terms(q, k, queue, positive, negative, self.beta, self.topk, self.form == "infonce")
        self.last_terms = terms
        return self._reduce(terms.loss(), q.shape[0])


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
    the floor keeps the loss's scale; the heads' mean). ``dim`` is the projection size.

    Example:
        >>> p0, p1, z0, z1 = (torch.randn(3, 8, 256) for _ in range(4))
        >>> loss = AMCLSimSiamLoss(dim=256)(p0, p1, z0, z1)
    """

    def __init__(self, dim: int, beta: float | None = None, tau_min: float | None = None,
                 tau_max: float | None = None, head_reduction: str | None = None, hidden: int = 128,
                 detach_input: bool = False) -> None:
        super().__init__("simsiam", dim, None, beta, tau_min, tau_max, head_reduction, hidden, detach_input)

    def forward(self, p0: Tensor, p1: Tensor, z0: Tensor, z1: Tensor) -> Tensor:
        p0, p1, z0, z1 = (_heads(t) for t in (p0, p1, z0, z1))
        net = self.temperature_net
        tau0 = net.paired_temperatures(self._phi_input(p0), z1.detach())
        tau1 = net.paired_temperatures(self._phi_input(p1), z0.detach())
        self.last_terms = (tau0, tau1)
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

    Example:
        >>> criterion = AMCLBarlowTwinsLoss(batch_size=16)
        >>> loss = criterion(torch.randn(3, 16, 64), torch.randn(3, 16, 64))
    """

    def __init__(self, batch_size: int, lambd: float = 5e-3, beta: float | None = None,
                 tau_min: float | None = None, tau_max: float | None = None, head_reduction: str | None = None,
                 hidden: int = 128, detach_input: bool = False, gather_distributed: bool = False) -> None:
        super().__init__("barlow_twins", batch_size, None, beta, tau_min, tau_max, head_reduction, hidden,
                         detach_input)
        self.batch_size, self.lambd, self.gather_distributed = batch_size, lambd, gather_distributed

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        z0, z1 = _heads(z0), _heads(z1)
        total = _total(self.gather_distributed)
        processes = world_size() if total is not None else 1
        if z0.shape[1] * processes != self.batch_size:
            raise ValueError(f"AMCLBarlowTwinsLoss(batch_size={self.batch_size}) reads channel vectors of that many "
                             f"images, got a batch of {z0.shape[1]}" + (f" on each of {processes} processes"
                                                                         if processes > 1 else ""))
        with torch.autocast(z0.device.type, enabled=False):
            channels0 = batch_standardise(at_least_float32(self._phi_input(z0)), total=total).transpose(1, 2)
            channels1 = batch_standardise(at_least_float32(self._phi_input(z1)), total=total).transpose(1, 2)
            if total is None:
                taus: Any = self.temperature_net.pair_temperatures(channels0, channels1)  # [C, d, d]
            else:  # this process's entries of the global channel vectors: phi's factors totalled, no gather
                shard = Shard(rank() * z0.shape[1], total)
                taus = self.temperature_net.pair_factors(channels0, channels1, shard=shard)
        self.last_terms = taus
        return self._reduce(amcl_barlow_twins_loss(z0, z1, taus, self.lambd, self.beta, total=total), z0.shape[0])
