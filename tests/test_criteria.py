"""The drop-in loss modules (amcl.nn.criteria): identities with the baselines, equality with the method's own
loss, gradients into the temperature net they own, and the defaults of `amcl pretrain --amcl`."""

from __future__ import annotations

import pytest
import torch

from amcl.config import PretrainConfig
from amcl.losses import barlow_twins_loss, moco_infonce_loss, nt_xent_loss, simsiam_loss
from amcl.methods import METHOD_CLASSES
from amcl.nn import (
    AMCLBarlowTwinsLoss,
    AMCLMoCoLoss,
    AMCLNTXentLoss,
    AMCLSimSiamLoss,
    BarlowTwinsLoss,
    MoCoLoss,
    NTXentLoss,
    SimSiamLoss,
)

torch.manual_seed(0)
Z = [torch.randn(3, 8, 16, dtype=torch.float64) for _ in range(4)]
QUEUE = torch.randn(3, 32, 16, dtype=torch.float64)
T = 0.3
NEARLY_CONSTANT = {"tau_min": T, "tau_max": T * (1 + 1e-9), "beta": 0.0, "head_reduction": "sum"}


def _double(module):
    return module.double()


def test_a_nearly_constant_temperature_and_beta_0_give_the_baselines():
    """Temperatures pinned to T and no regulariser: each AMCL module's softmax (or only) form is its baseline."""
    z0, z1, p0, p1 = Z
    cases = [
        (_double(AMCLNTXentLoss(16, **NEARLY_CONSTANT))(z0, z1), nt_xent_loss(z0, z1, T)),
        (_double(AMCLMoCoLoss(16, **NEARLY_CONSTANT))(z0, z1, QUEUE), moco_infonce_loss(z0, z1, QUEUE, T)),
        # SimSiam and Barlow Twins at tau = 1 are exactly their baselines
        (_double(AMCLSimSiamLoss(16, **{**NEARLY_CONSTANT, "tau_min": 1.0, "tau_max": 1 + 1e-9}))(p0, p1, z0, z1),
         simsiam_loss(p0, p1, z0, z1)),
        (_double(AMCLBarlowTwinsLoss(8, **{**NEARLY_CONSTANT, "tau_min": 1.0, "tau_max": 1 + 1e-9}))(z0, z1),
         barlow_twins_loss(z0, z1)),
    ]
    for amcl, baseline in cases:
        assert torch.allclose(amcl, baseline, rtol=1e-7), (amcl, baseline)


def test_the_baseline_modules_are_the_pure_functions():
    z0, z1, p0, p1 = Z
    assert NTXentLoss(0.2)(z0, z1) == nt_xent_loss(z0, z1, 0.2)
    assert MoCoLoss(0.2)(z0, z1, QUEUE) == moco_infonce_loss(z0, z1, QUEUE, 0.2)
    assert SimSiamLoss()(p0, p1, z0, z1) == simsiam_loss(p0, p1, z0, z1)
    assert BarlowTwinsLoss(0.01)(z0, z1) == barlow_twins_loss(z0, z1, 0.01)


@pytest.mark.parametrize("form", ["softmax", "hardest", "hardest_with_positive"])
def test_amcl_ntxent_module_equals_the_simclr_method_loss(form):
    """The module with the method's temperature net gives the method's own loss (the heads' mean or sum)."""
    config = PretrainConfig(method="simclr", amcl=True, amcl_form=form, backbone="small_cnn", image_size=16,
                            proj_hidden=32, proj_dim=16, temperature_hidden=8).resolved()
    method = METHOD_CLASSES["simclr"](config, 10)
    views = torch.rand(2, 6, 3, 16, 16)
    expected = method.loss(views[0], views[1])[0] / (config.heads if config.head_reduction == "mean" else 1)
    criterion = AMCLNTXentLoss(16, form=form, hidden=8)
    criterion.temperature_net.load_state_dict(method.temperature_net.state_dict())
    z = method.projector(method.backbone(torch.cat([views[0], views[1]])))
    assert torch.allclose(criterion(z[:, :6], z[:, 6:]), expected, rtol=1e-6)
    assert criterion.beta == config.beta and criterion.head_reduction == config.head_reduction
    assert (criterion.temperature_net.tau_min, criterion.temperature_net.tau_max) == (config.tau_min, config.tau_max)


@pytest.mark.parametrize("make,inputs", [
    (lambda: AMCLNTXentLoss(16), lambda: Z[:2]),
    (lambda: AMCLMoCoLoss(16), lambda: (*Z[:2], QUEUE)),
    (lambda: AMCLSimSiamLoss(16), lambda: Z),
    (lambda: AMCLBarlowTwinsLoss(8), lambda: Z[:2]),
], ids=["simclr", "moco", "simsiam", "barlow_twins"])
def test_the_owned_temperature_net_is_trained(make, inputs):
    criterion = _double(make())
    tensors = [t.clone().requires_grad_() for t in inputs()]
    criterion(*tensors).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in criterion.parameters())
    assert tensors[0].grad is not None and torch.isfinite(tensors[0].grad).all()


def test_two_dimensional_projections_are_one_head():
    z0, z1 = Z[0][0], Z[1][0]
    criterion = _double(AMCLNTXentLoss(16))
    assert torch.allclose(criterion(z0, z1), criterion(z0.unsqueeze(0), z1.unsqueeze(0)))


def test_module_mistakes_are_named():
    with pytest.raises(ValueError, match="form must be one of softmax, hardest, hardest_with_positive, got 'median'"):
        AMCLNTXentLoss(16, form="median")
    with pytest.raises(ValueError, match="head_reduction must be sum or mean"):
        AMCLNTXentLoss(16, head_reduction="max")
    with pytest.raises(ValueError, match=r"AMCLBarlowTwinsLoss\(batch_size=8\) reads channel vectors"):
        AMCLBarlowTwinsLoss(8)(torch.randn(3, 5, 16), torch.randn(3, 5, 16))
