"""--temperature-mode global: one learned temperature per head, the control that separates a learned temperature
level from pair-adaptive temperatures."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from amcl.losses import amcl_softmax_nt_xent_terms, nt_xent_loss
from amcl.nn import GlobalTemperature, TemperatureNet
from amcl.train import build_model
from builders import SMALL_HEADS, tiny_config


def test_every_pair_of_a_head_gets_its_heads_temperature():
    net = GlobalTemperature(heads=2, tau_min=0.05, tau_max=2.0)
    with torch.no_grad():
        net.score.copy_(torch.tensor([0.0, 2.0]))
    a, b = torch.randn(2, 5, 8), torch.randn(2, 7, 8)
    expected = [0.05 + 1.95 * 0.5, 0.05 + 1.95 / (1 + math.exp(2.0))]  # tau_min + (tau_max - tau_min) sigmoid(-s)
    assert net.temperatures().tolist() == pytest.approx(expected)
    full = net.pair_temperatures(a, b)
    assert full.shape == (2, 5, 7) and torch.allclose(full, torch.tensor(expected).view(2, 1, 1).expand(2, 5, 7))
    assert torch.allclose(net.pair_factors(a, b).matrix(), full)
    assert torch.allclose(net.paired_temperatures(a, a), torch.tensor(expected).view(2, 1).expand(2, 5))
    assert net.pair_factors(a).pair_shape == (2, 5, 5)


def test_one_head_softmax_form_without_regulariser_is_nt_xent_at_the_learned_temperature():
    torch.manual_seed(0)
    z1, z2 = F.normalize(torch.randn(1, 6, 4), dim=-1), F.normalize(torch.randn(1, 6, 4), dim=-1)
    net = GlobalTemperature(heads=1, tau_min=0.05, tau_max=2.0)
    with torch.no_grad():
        net.score.fill_(1.3)
    tau = float(net.temperatures())
    factors = net.pair_factors(torch.cat([z1, z2], dim=1))
    terms = amcl_softmax_nt_xent_terms(z1, z2, factors, beta=0.0, negative_temperatures=factors)
    assert float(terms.loss()) == pytest.approx(float(nt_xent_loss(z1, z2, tau)), rel=1e-5)


def test_the_learned_temperature_gets_the_losses_gradient():
    z1 = F.normalize(torch.randn(2, 6, 4, dtype=torch.float64), dim=-1)
    z2 = F.normalize(torch.randn(2, 6, 4, dtype=torch.float64), dim=-1)
    net = GlobalTemperature(heads=2, tau_min=0.05, tau_max=2.0).double()

    def loss(score):
        with torch.no_grad():
            net.score.copy_(score)
        factors = net.pair_factors(torch.cat([z1, z2], dim=1))
        factors = factors._replace(left=score.view(2, 1, 1).expand(2, 12, 1))  # the parameter, differentiably
        return amcl_softmax_nt_xent_terms(z1, z2, factors, beta=0.01, negative_temperatures=factors).loss()

    assert torch.autograd.gradcheck(loss, (torch.tensor([0.3, -0.4], dtype=torch.float64, requires_grad=True),))


@pytest.mark.parametrize("method,options", [("simclr", {}), ("simclr", dict(amcl_form="hardest")),
                                            ("moco", dict(queue_size=64)), ("simsiam", SMALL_HEADS),
                                            ("barlow_twins", SMALL_HEADS)])
def test_every_method_uses_one_temperature_per_head_and_learns_it(method, options):
    config = tiny_config(method=method, amcl=True, temperature_mode="global", batch_size=16, **options).resolved()
    model = build_model(config, 10, None)
    assert isinstance(model.temperature_net, GlobalTemperature) and model.adaptive_positive and model.adaptive_negative
    assert model.temperature_net.score.shape == (config.heads,)
    views = torch.rand(2, 16, 3, 16, 16)  # the data module's two augmented views
    loss, _ = model.loss(views[0], views[1])
    loss.backward()
    assert torch.isfinite(loss) and model.temperature_net.score.grad is not None
    assert bool((model.temperature_net.score.grad != 0).all())
    adaptive = build_model(tiny_config(method=method, amcl=True, batch_size=16, **options).resolved(), 10, None)
    assert isinstance(adaptive.temperature_net, TemperatureNet)


@pytest.mark.slow
def test_a_global_temperature_run_reports_one_temperature_per_head(tmp_path):
    from amcl.train import pretrain

    summary = pretrain(tiny_config(amcl=True, temperature_mode="global", epochs=2, max_steps=15,
                                   out=str(tmp_path / "run")))
    last = summary["epochs"][-1]
    assert last["head1/tau_pos_mean"] == pytest.approx(last["head1/tau_neg_mean"], rel=1e-5)
    assert last["head1/tau_pos_mean"] != pytest.approx(0.05 + 1.95 / 2)  # it moved from its start
