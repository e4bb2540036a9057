"""MoCo v2 (Chen et al., 2020), as the InfoNCE-with-queue baseline or with AMCL (Eq. 2.1 / 2.4 or the
softmax form over each head's queue)."""

from __future__ import annotations

import torch
from torch import Tensor

from amcl.config import PretrainConfig
from amcl.distributed import gather_no_grad
from amcl.methods.base import MomentumMethod, contrastive_extras, term_diagnostics
from amcl.nn import AMCLMoCoLoss, FeatureQueue, MoCoLoss


class MoCo(MomentumMethod):
    """Query encoder (backbone + C heads), its momentum copy for the keys, and one queue of keys per head.

    Symmetric: each view's queries are matched with the other view's keys, and the loss is the
    mean over both directions. After every optimisation step the keys of both views enter the
    queues (:meth:`on_train_batch_end`). The momentum copy is updated with one fused EMA before
    the keys are computed, as in MoCo.
    """

    def __init__(self, config: PretrainConfig | dict, num_classes: int, normalization: dict | None = None) -> None:
        super().__init__(config, num_classes, normalization)
        config = self.config
        self.projector = self.make_projector()
        self.make_momentum_encoder()
        self.queue = FeatureQueue(config.heads, config.queue_size, config.proj_dim)
        self.temperature_net = self.make_temperature_net(config.proj_dim)
        self.criterion = AMCLMoCoLoss(
            config.proj_dim, config.amcl_form, config.beta, config.tau_min, config.tau_max, config.head_reduction,
            config.topk, config.temperature_hidden, self.detached_temperature_input,
            temperature_mode=config.temperature_mode, temperature=config.temperature,
            negative_regularizer=config.negative_regularizer, temperature_net=self.temperature_net,
        ) if config.amcl else MoCoLoss(config.temperature)
        self._new_keys: Tensor | None = None

    def loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        batch, cfg = view1.shape[0], self.config
        views = torch.cat([view1, view2])
        q = self.projector(self.backbone(views))  # [C, 2B, d]: queries [q1; q2]
        keys = self.momentum_targets(views, cfg.ema_momentum)  # [k1; k2]
        # every process enqueues the keys of the global batch, so all hold the same queue
        self._new_keys = torch.cat([gather_no_grad(keys[:, :batch], 1), gather_no_grad(keys[:, batch:], 1)], dim=1)
        k = keys.roll(batch, dims=1)  # [k2; k1]: each query's positive is the other view's key
        if not cfg.amcl:
            return self.criterion(q, k, self.queue.features), {}
        terms = self.criterion.terms(q, k, self.queue.features)  # the heads' sum: the base divides for the mean
        self.diagnose(**term_diagnostics(terms))
        self.record_contrastive_statistics(terms)
        return terms.loss(), contrastive_extras(terms)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # after the optimiser step, so the step's loss was computed against the old queue
        if self._new_keys is not None:
            self.queue.push(self._new_keys)
            self._new_keys = None
