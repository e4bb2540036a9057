"""The shared base of every method: backbone, optimiser and schedule, the kNN monitor, and which
temperatures AMCL learns.

A method subclass builds its heads in ``__init__`` and implements ``loss(view1, view2)``
returning the scalar loss and a dict of per-step values (their epoch means go to ``metrics.json``
with the other statistics); it may override :meth:`PretrainMethod.analysis_temperatures`, which
says how ``amcl analyze`` reads its temperatures.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor

from amcl.checkpointing import NonFiniteError, NonFiniteRecord  # noqa: F401 (NonFiniteError re-exported)
from amcl.config import PretrainConfig
from amcl.distributed import gather_rows, sum_across
from amcl.knn import default_k, knn_predict
from amcl.losses import ContrastiveTerms
from amcl.monitoring import EpochStatistics, masked_mean_min_max, temperature_statistics
from amcl.nn import (
    GlobalTemperature,
    MultiHeadProjector,
    TemperatureNet,
    build_backbone,
    momentum_copy,
    momentum_update_,
)
from amcl.optim import build_optimizer, warmup_cosine, warmup_steps


@dataclass
class HeadTemperatures:
    """The temperatures of one head's positive and negative pairs: a tensor of learned values, or the
    constant the loss uses for that side."""

    positive: Tensor | float
    negative: Tensor | float


class PretrainMethod(L.LightningModule):
    """Self-supervised pre-training with SGD + cosine schedule and an online weighted-kNN monitor."""

    def __init__(
        self, config: PretrainConfig | dict, num_classes: int, normalization: dict[str, list[float]] | None = None
    ) -> None:
        """``normalization`` (``{"mean": [...], "std": [...]}``, the data module's) is saved with the
        checkpoint so evaluation normalises images exactly as training did."""
        super().__init__()
        config = PretrainConfig(**config) if isinstance(config, dict) else config
        if config.global_batch is None:  # a config built by hand, not resolved: the processes it names
            config = config.with_global_batch()
        self.save_hyperparameters(
            {"config": config.as_dict(), "num_classes": num_classes, "normalization": normalization}
        )
        self.config = config
        self.num_classes = num_classes
        self.backbone = build_backbone(config.backbone, image_size=config.image_size)
        self._bank: tuple[Tensor, Tensor] | None = None
        self._knn_correct = self._knn_total = None
        self.knn_k = config.knn_k  # the monitor's k (default_k of the bank when not given)
        # AMCL's ablations (config.temperature_mode): which pairs get learned temperatures; the
        # others use the constant config.temperature. A baseline learns none.
        mode = config.temperature_mode if config.amcl else "constant"
        self.adaptive_positive = mode in ("adaptive", "positive", "global")
        self.adaptive_negative = mode in ("adaptive", "negative", "global")
        self.nonfinite = NonFiniteRecord(config)  # this step's loss terms, and the first non-finite step
        self.statistics = EpochStatistics()  # per-head temperatures and similarities, reduced per epoch

    def make_projector(self, batch_norm: bool = False, last_batch_norm: bool = False) -> MultiHeadProjector:
        """The C projection heads of the config: ``proj_layers`` linear layers, ``proj_hidden`` wide."""
        cfg = self.config
        hidden = [cfg.proj_hidden] * (cfg.proj_layers - 1)
        return MultiHeadProjector(self.backbone.out_dim, hidden, cfg.proj_dim, cfg.heads, batch_norm, last_batch_norm)

    def make_temperature_net(self, dim: int) -> TemperatureNet | GlobalTemperature | None:
        """The shared temperature network phi over ``dim``-sized vectors, with ``--temperature-mode global`` one
        learned temperature per head instead (the same interface), or None if nothing is learned."""
        if not (self.adaptive_positive or self.adaptive_negative):
            return None
        cfg = self.config
        if cfg.temperature_mode == "global":
            return GlobalTemperature(cfg.heads, cfg.tau_min, cfg.tau_max)
        return TemperatureNet(dim, cfg.temperature_hidden, cfg.tau_min, cfg.tau_max)

    @property
    def detached_temperature_input(self) -> bool:
        """``--temperature-input detached``: the temperature network reads the features without gradients (only
        the similarities then train the encoder)."""
        return self.config.temperature_input == "detached"

    def temperature_input(self, features: Tensor) -> Tensor:
        """What the temperature network reads: ``features`` itself, or without gradients
        (:attr:`detached_temperature_input`)."""
        return features.detach() if self.detached_temperature_input else features

    def loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def analysis_images(self) -> int:
        """The fewest held-out images :meth:`analysis_temperatures` needs (0: any number)."""
        return 0

    @torch.no_grad()
    def analysis_outputs(self, z: Tensor) -> Tensor | None:
        """What the method computes from its projections ``z`` ``[C, N, d]`` besides them, for ``amcl analyze``
        (its :meth:`analysis_temperatures` receives those of view 1): None here; SimSiam's predictions."""
        return None

    def analysis_temperatures(self, z1: Tensor, z2: Tensor, outputs1: Tensor | None,
                              partner: Tensor) -> tuple[list[HeadTemperatures] | None, str]:
        """Per head, the temperatures the loss gives the positive pairs (view 1 of i, view 2 of i) and the
        negative pairs (view 1 of i, view 2 of ``partner[i]``) of the first ``len(partner)`` images, from
        their projections ``z1``, ``z2`` ``[C, N, d]`` (``outputs1``: :meth:`analysis_outputs` of view 1), and the
        kind of pairs they belong to; ``(None, reason)`` when there are none. A side the ablations keep
        constant is ``config.temperature``, as in the loss. (MoCo's loss reads its keys from the momentum
        encoder and its negatives from the queue; here both sides come from the online encoder.)"""
        if getattr(self, "temperature_net", None) is None:
            return None, "constant"
        n = len(partner)
        return self.paired_head_temperatures(z1[:, :n], z2[:, :n], partner, self.adaptive_positive,
                                             self.adaptive_negative), "pair"

    def paired_head_temperatures(self, anchor: Tensor, other: Tensor, partner: Tensor, adaptive_positive: bool,
                                 adaptive_negative: bool) -> list[HeadTemperatures]:
        """tau(anchor_i, other_i) and tau(anchor_i, other_partner[i]) per head, or the constant for a side
        that is not adaptive."""
        net, constant = self.temperature_net, float(self.config.temperature)
        positive = net.paired_temperatures(anchor, other)  # [C, n]
        negative = net.paired_temperatures(anchor, other[:, partner])
        return [HeadTemperatures(positive[c] if adaptive_positive else constant,
                                 negative[c] if adaptive_negative else constant) for c in range(positive.shape[0])]

    @classmethod
    def saved_config(cls, saved: dict, state_dict: dict[str, Tensor]) -> dict:
        """A checkpoint's config values with what its version did not record read from its weights
        (methods whose shapes depend on such a value override this)."""
        return saved

    def record_statistics(self, stats: dict[str, Tensor]) -> None:
        """Add one step's per-head statistics (see :mod:`amcl.monitoring`); they stay on the device."""
        if self.training:
            self.statistics.update(stats)

    def record_contrastive_statistics(self, terms: ContrastiveTerms) -> None:
        """The learned temperatures (a constant side of the ablations is left out) and the similarities of
        the positive and hardest-negative pairs, per head."""
        cfg = self.config
        self.record_statistics(temperature_statistics(
            cfg.tau_min, cfg.tau_max, terms.positive_temperatures if self.adaptive_positive else None,
            terms.negative_temperatures if self.adaptive_negative else None,
            terms.positive_similarities, terms.negative_similarities, terms.negative_mask))

    def on_train_epoch_start(self) -> None:
        self.statistics.reset()

    def epoch_statistics(self) -> dict[str, float]:
        """This epoch's statistics and learning rate, as plain numbers (one host synchronisation)."""
        values = self.statistics.compute()
        if self.trainer is not None and self.trainer.optimizers:
            values["lr"] = float(self.trainer.optimizers[0].param_groups[0]["lr"])
        return values

    def diagnose(self, **values: Tensor | float) -> None:
        """Note this step's loss terms and temperature range (``tau_low``, ``tau_high``) for the
        non-finite report; tensors stay on the device."""
        self.nonfinite.note(self.device, **values)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.nonfinite.start_step()
        loss, extras = self.loss(*batch)
        if self.config.head_reduction == "mean":  # the heads' mean: one head's gradient scale for the backbone
            loss = loss / self.config.heads
        self.diagnose(loss=loss)
        # the epoch mean, averaged over processes once per epoch (no host synchronisation per step); loggers get
        # it from amcl.train.MetricsRecorder with everything else, at the epoch as its step
        self.log("loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch[0].shape[0],
                 sync_dist=True, logger=False)
        self.record_statistics(extras)
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        """The optimiser step, guarded against non-finite losses and gradients (``config.on_nonfinite``,
        see :class:`~amcl.checkpointing.NonFiniteRecord`): a bad step is skipped, or recorded for
        :class:`~amcl.checkpointing.NonFiniteGuard` to stop the run before any checkpoint holds it."""
        loss = optimizer_closure()  # forward and backward
        if self.nonfinite.allows_step(loss, self.parameters(), self.global_step):
            optimizer.step()
        else:
            optimizer.zero_grad(set_to_none=True)

    def on_fit_start(self) -> None:
        if self.config.channels_last and self.device.type == "cuda":  # the data module sends channels-last views
            self.to(memory_format=torch.channels_last)  # every convolution, MoCo's momentum copy included
        if self.config.compile and not getattr(self, "_compiled", False):
            self.backbone.compile()  # in place: the state dict keeps its names
            self._compiled = True

    # kNN monitor: bank = un-augmented training images (each process embeds its share, then all are
    # gathered), queries = the test split (sharded by the data module; correct counts summed).
    def on_validation_epoch_start(self) -> None:
        features, labels = [], []
        for images, batch_labels in self.trainer.datamodule.plain_batches("train", self.device, shard=True):
            features.append(self.backbone(images))
            labels.append(batch_labels)
        if features:
            bank, bank_labels = torch.cat(features), torch.cat(labels)
        else:  # a process whose share is empty
            bank = torch.zeros(0, self.backbone.out_dim, device=self.device)
            bank_labels = torch.zeros(0, dtype=torch.long, device=self.device)
        self._bank = (gather_rows(bank.float()), gather_rows(bank_labels))
        if self.config.knn_k is None:  # one host synchronisation per monitoring pass
            self.knn_k = default_k(int((self._bank[1] >= 0).sum()))
        queries = len(self.trainer.datamodule.query_splits)
        self._knn_correct = torch.zeros(queries, device=self.device)  # per query split: test, then val
        self._knn_total = torch.zeros(queries, device=self.device)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        images, labels = batch
        scores = knn_predict(self.backbone(images), *self._bank, self.num_classes, self.knn_k, self.config.knn_t)
        self._knn_correct[dataloader_idx] += (scores.argmax(1) == labels).sum()
        self._knn_total[dataloader_idx] += labels.numel()

    def on_validation_epoch_end(self) -> None:
        correct, total = sum_across(self._knn_correct), sum_across(self._knn_total)
        accuracy = correct / total.clamp_min(1)
        # the same value on every process (sync_dist only keeps Lightning's distributed logging consistent);
        # knn_acc on the test split, val_knn_acc on the validation split (--val-fraction)
        for index, split in enumerate(self.trainer.datamodule.query_splits):
            name = "knn_acc" if split == "test" else f"{split}_knn_acc"
            self.log(name, accuracy[index], prog_bar=True, sync_dist=True, add_dataloader_idx=False, logger=False)
        self._bank = None

    def configure_optimizers(self):
        """``config.optimizer`` (sgd, lars, adamw; see :mod:`amcl.optim`) at ``config.lr`` (scaled with the
        global batch under ``lr_scaling linear``), stepped per batch: a linear warm-up of ``warmup_epochs``
        then a cosine decay to 0 at the last step (with ``--max-steps``, both fit in those steps)."""
        cfg = self.config
        trained = [(n, p) for n, p in self.named_parameters() if p.requires_grad]  # not MoCo's momentum copies
        optimizer, self.base_lr = build_optimizer(trained, cfg, self.trainer.world_size)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = warmup_steps(cfg.warmup_epochs, cfg.epochs, total)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class MomentumMethod(PretrainMethod):
    """A method whose targets come from a momentum (moving-average) copy of its backbone and projector: MoCo,
    and BYOL-like methods. The subclass builds ``self.projector``, then :meth:`make_momentum_encoder`; each
    step's :meth:`momentum_targets` moves the copy towards the online weights (one fused EMA, before the
    targets are computed, as in MoCo) and encodes the views with it, without gradients. The copies are
    frozen (``requires_grad`` False), so the optimiser never sees them."""

    def make_momentum_encoder(self) -> None:
        self.momentum_backbone = momentum_copy(self.backbone)
        self.momentum_projector = momentum_copy(self.projector)

    @torch.no_grad()
    def momentum_targets(self, views: Tensor, momentum: float) -> Tensor:
        """The momentum copy's projections ``[C, N, d]`` of ``views``, after its update with ``momentum``."""
        momentum_update_(self.momentum_backbone, self.backbone, momentum)
        momentum_update_(self.momentum_projector, self.projector, momentum)
        return self.momentum_projector(self.momentum_backbone(views))


def temperature_range(*temperatures: Tensor | float) -> dict[str, Tensor]:
    """``tau_low`` / ``tau_high``: the smallest and largest temperature in use (for diagnostics)."""
    values = [torch.as_tensor(t).detach().float() for t in temperatures]
    return {"tau_low": torch.stack([v.min() for v in values]).min(),
            "tau_high": torch.stack([v.max() for v in values]).max()}


def term_diagnostics(terms: ContrastiveTerms) -> dict[str, Tensor]:
    """The parts of an AMCL contrastive loss (summed over heads) and the temperature range of the step
    (over the negatives only, for the softmax form's full matrices)."""
    _, negative_low, negative_high = masked_mean_min_max(terms.negative_temperatures, terms.negative_mask)
    return {
        "positive term": terms.positive.detach().sum(),
        "negative term": terms.negative.detach().sum(),
        "regulariser": terms.regularizer.detach().sum(),
        **temperature_range(terms.positive_temperatures, negative_low, negative_high),
    }


def contrastive_extras(terms: ContrastiveTerms) -> dict[str, Tensor]:
    """Per-epoch means of the temperatures and similarities of the positive and negative pairs (the hardest
    negatives of Eq. 2.1 / 2.4, every negative of the softmax form)."""
    return {
        "tau_pos_mean": terms.positive_temperatures.detach().mean(),
        "tau_neg_mean": masked_mean_min_max(terms.negative_temperatures, terms.negative_mask)[0].mean(),
        "sim_pos_mean": terms.positive_similarities.detach().mean(),
        "sim_neg_mean": masked_mean_min_max(terms.negative_similarities, terms.negative_mask)[0].mean(),
    }
