"""SimCLR (Chen et al., 2020), as the NT-Xent baseline or with AMCL (Eq. 2.1 / 2.4 or the softmax form)."""

from __future__ import annotations

import torch
from torch import Tensor

from amcl.config import PretrainConfig
from amcl.methods.base import PretrainMethod, contrastive_extras, term_diagnostics
from amcl.nn import AMCLNTXentLoss, NTXentLoss


class SimCLR(PretrainMethod):
    """Backbone + C projection heads; NT-Xent over the other 2B - 2 views of the batch, or with
    ``config.amcl`` the AMCL loss (``config.amcl_form``: Eq. 2.1, Eq. 2.4 or the softmax form) whose
    pair temperatures come from one temperature network shared by the heads. The loss is its
    :mod:`amcl.nn` criterion's, the module users call in their own loops.

    With several processes the projections of all of them are gathered (with gradients), so the
    negatives, the hardest negatives and their temperatures are taken over the global batch; each
    process computes only its own 2B anchors' rows ``[C, 2B, 2BW]`` of the global loss, and phi runs
    on its own 2B views (their embeddings are gathered, not recomputed).
    """

    def __init__(self, config: PretrainConfig | dict, num_classes: int, normalization: dict | None = None) -> None:
        super().__init__(config, num_classes, normalization)
        cfg = self.config
        self.projector = self.make_projector()
        self.temperature_net = self.make_temperature_net(cfg.proj_dim)
        self.criterion = AMCLNTXentLoss(
            cfg.proj_dim, cfg.amcl_form, cfg.beta, cfg.tau_min, cfg.tau_max, cfg.head_reduction, cfg.topk,
            cfg.temperature_hidden, self.detached_temperature_input, gather_distributed=True,
            temperature_mode=cfg.temperature_mode, temperature=cfg.temperature,
            negative_regularizer=cfg.negative_regularizer, temperature_net=self.temperature_net,
        ) if cfg.amcl else NTXentLoss(cfg.temperature, gather_distributed=True)

    def loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        batch = view1.shape[0]
        z = self.projector(self.backbone(torch.cat([view1, view2])))  # [C, 2B, d]
        z1, z2 = z[:, :batch], z[:, batch:]
        if not self.config.amcl:
            return self.criterion(z1, z2), {}
        terms = self.criterion.terms(z1, z2)  # the heads' sum: the base divides by C for their mean
        self.diagnose(**term_diagnostics(terms))
        self.record_contrastive_statistics(terms)
        return terms.loss(), contrastive_extras(terms)
