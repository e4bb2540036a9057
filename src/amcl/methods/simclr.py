"""SimCLR (Chen et al., 2020), as the NT-Xent baseline or with AMCL (Eq. 2.1 / 2.4)."""

from __future__ import annotations

import torch
from torch import Tensor

from amcl.config import PretrainConfig
from amcl.losses import amcl_nt_xent_terms, nt_xent_loss
from amcl.methods.base import PretrainMethod
from amcl.nn import MultiHeadProjector, TemperatureNet


class SimCLR(PretrainMethod):
    """Backbone + C projection heads; NT-Xent, or with ``config.amcl`` the AMCL loss whose pair
    temperatures come from one :class:`TemperatureNet` shared by the heads.

    ``config.temperature_mode`` selects the paper's ablations: ``adaptive`` (learned for every
    pair), ``constant`` (``config.temperature`` everywhere), ``positive`` / ``negative``
    (learned only for positive / negative pairs, constant for the others).
    """

    def __init__(self, config: PretrainConfig, num_classes: int) -> None:
        super().__init__(config, num_classes)
        self.projector = MultiHeadProjector(
            self.backbone.out_dim, [config.proj_hidden] * (config.proj_layers - 1), config.proj_dim, config.heads
        )
        adaptive = config.amcl and config.temperature_mode != "constant"
        self.temperature_net = (
            TemperatureNet(config.proj_dim, config.temperature_hidden, config.tau_min, config.tau_max)
            if adaptive else None
        )

    def loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        batch = view1.shape[0]
        z = self.projector(self.backbone(torch.cat([view1, view2])))  # [C, 2B, d]
        z1, z2 = z[:, :batch], z[:, batch:]
        cfg = self.config
        if not cfg.amcl:
            return nt_xent_loss(z1, z2, cfg.temperature), {}
        positive_taus, negative_taus = cfg.temperature, None
        if self.temperature_net is not None:
            adaptive = self.temperature_net.pair_temperatures(z)
            positive_taus, negative_taus = {
                "adaptive": (adaptive, None),
                "positive": (adaptive, cfg.temperature),
                "negative": (cfg.temperature, adaptive),
            }[cfg.temperature_mode]
        terms = amcl_nt_xent_terms(z1, z2, positive_taus, cfg.beta, cfg.topk, negative_taus)
        extras = {
            "tau_pos_mean": terms.positive_temperatures.detach().mean(),
            "tau_neg_mean": terms.negative_temperatures.detach().mean(),
            "sim_pos_mean": terms.positive_similarities.detach().mean(),
            "sim_neg_mean": terms.negative_similarities.detach().mean(),
        }
        return terms.loss(), extras
