"""SimCLR (Chen et al., 2020), as the NT-Xent baseline or with AMCL (Eq. 2.1 / 2.4)."""

from __future__ import annotations

import torch
from torch import Tensor

from amcl.config import PretrainConfig
from amcl.distributed import gather_views, is_distributed, rank, world_size
from amcl.losses import amcl_nt_xent_terms, amcl_softmax_nt_xent_terms, nt_xent_loss, process_anchors
from amcl.methods.base import PretrainMethod, contrastive_extras, term_diagnostics


class SimCLR(PretrainMethod):
    """Backbone + C projection heads; NT-Xent over the other 2B - 2 views of the batch, or with
    ``config.amcl`` the AMCL loss (``config.amcl_form``: Eq. 2.1, Eq. 2.4 or the softmax form) whose
    pair temperatures come from one temperature network shared by the heads.

    With several processes the projections of all of them are gathered (with gradients), so the
    negatives, the hardest negatives and their temperatures are taken over the global batch; each
    process computes only its own 2B anchors' rows ``[C, 2B, 2BW]`` of the global loss, and phi runs
    on its own 2B views (their embeddings are gathered, not recomputed).
    """

    def __init__(self, config: PretrainConfig | dict, num_classes: int, normalization: dict | None = None) -> None:
        super().__init__(config, num_classes, normalization)
        config = self.config
        self.projector = self.make_projector()
        self.temperature_net = self.make_temperature_net(config.proj_dim)

    def loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        batch, cfg = view1.shape[0], self.config
        z = self.projector(self.backbone(torch.cat([view1, view2])))  # [C, 2B, d]
        # the global batch as candidates (gathered with gradients), this process's 2B views as anchors
        anchors = process_anchors(batch, rank(), world_size(), z.device) if is_distributed() else None
        candidates = gather_views(z, batch)
        z1, z2 = candidates.chunk(2, dim=1)
        if not cfg.amcl:
            return nt_xent_loss(z1, z2, cfg.temperature, anchors=anchors), {}
        # one factored [C, 2B, 2BW] matrix serves positives and negatives; the ablations swap in the constant
        net, learned = self.temperature_net, None
        if net is not None:
            factors = net.pair_factors(self.temperature_input(z))
            learned = factors._replace(right=gather_views(factors.right, batch))
        positive = learned if self.adaptive_positive else cfg.temperature
        negative = learned if self.adaptive_negative else cfg.temperature
        if cfg.amcl_form == "softmax":
            terms = amcl_softmax_nt_xent_terms(z1, z2, positive, cfg.beta, negative,
                                               negative_regularizer=cfg.negative_regularizer, anchors=anchors)
        else:
            terms = amcl_nt_xent_terms(z1, z2, positive, cfg.beta, cfg.topk, negative, cfg.amcl_form == "infonce",
                                       negative_regularizer=cfg.negative_regularizer, anchors=anchors)
        self.diagnose(**term_diagnostics(terms))
        self.record_contrastive_statistics(terms)
        return terms.loss(), contrastive_extras(terms)
