"""SimSiam (Chen & He, 2021), as the negative-cosine baseline (Eq. 1.2) or with AMCL (Eq. 2.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from amcl.config import PretrainConfig
from amcl.losses import amcl_simsiam_loss
from amcl.methods.base import HeadTemperatures, PretrainMethod, temperature_range
from amcl.monitoring import temperature_statistics
from amcl.nn import AMCLSimSiamLoss, MultiHeadPredictor, SimSiamLoss


class SimSiam(PretrainMethod):
    """Backbone + C BatchNorm projectors (2048, 3 layers, BatchNorm on the output) + one predictor
    per head; the target branch z is stop-gradient. With AMCL, tau_1 = tau(p_1, sg(z_2)) and
    tau_2 = tau(p_2, sg(z_1)) come from one temperature network shared by the heads.

    SimSiam has only positive pairs, so ``temperature_mode`` positive equals adaptive.
    """

    def __init__(self, config: PretrainConfig | dict, num_classes: int, normalization: dict | None = None) -> None:
        super().__init__(config, num_classes, normalization)
        config = self.config
        self.projector = self.make_projector(batch_norm=True, last_batch_norm=True)
        self.predictor = MultiHeadPredictor(config.proj_dim, config.predictor_hidden, config.proj_dim, config.heads)
        self.temperature_net = self.make_temperature_net(config.proj_dim)
        self.criterion = AMCLSimSiamLoss(
            config.proj_dim, config.beta, config.tau_min, config.tau_max, config.head_reduction,
            config.temperature_hidden, self.detached_temperature_input, temperature_mode=config.temperature_mode,
            temperature=config.temperature, temperature_net=self.temperature_net,
        ) if config.amcl else SimSiamLoss()

    def analysis_outputs(self, z: Tensor) -> Tensor:
        """The predictions p of the projections: Eq. 2.2's temperatures are tau(p_a, z_b)."""
        return self.predictor(z)

    @torch.no_grad()
    def analysis_temperatures(self, z1: Tensor, z2: Tensor, outputs1: Tensor | None,
                              partner: Tensor) -> tuple[list[HeadTemperatures] | None, str]:
        """tau(p_a, z_b) of view a's prediction and view b's projection, as in Eq. 2.2 (learned in every
        non-constant mode); the loss has no negative pairs: theirs show what the network would give them."""
        if self.temperature_net is None:
            return None, "constant"
        n = len(partner)
        assert outputs1 is not None  # analysis_outputs: the predictions of view 1
        return self.paired_head_temperatures(outputs1[:, :n], z2[:, :n], partner, True, True), "pair"

    def loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        batch, cfg = view1.shape[0], self.config
        z = self.projector(self.backbone(torch.cat([view1, view2])))  # [C, 2B, d]
        p = self.predictor(z)
        z1, z2, p1, p2 = z[:, :batch], z[:, batch:], p[:, :batch], p[:, batch:]
        if not cfg.amcl:
            return self.criterion(p1, p2, z1, z2), {}
        tau1, tau2 = self.criterion.temperatures(p1, p2, z1, z2)  # the heads' sum: the base divides for the mean
        loss = amcl_simsiam_loss(p1, p2, z1, z2, tau1, tau2, cfg.beta)
        self.diagnose(**temperature_range(tau1, tau2))
        with torch.no_grad():
            similarities = F.cosine_similarity(p.float(), z.roll(batch, dims=1).float(), dim=-1)  # [C, 2B]
            tau_mean = torch.as_tensor(tau1).float().mean() / 2 + torch.as_tensor(tau2).float().mean() / 2
            if self.temperature_net is not None:
                self.record_statistics(temperature_statistics(cfg.tau_min, cfg.tau_max, torch.cat([tau1, tau2], 1),
                                                              positive_similarities=similarities))
        return loss, {"tau_pos_mean": tau_mean.to(loss.device), "sim_pos_mean": similarities.mean()}
