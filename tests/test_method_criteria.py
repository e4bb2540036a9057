"""Each method's training loss is its amcl.nn criterion's: a user's loop with the loss module (its own temperature
net, holding the method's weights) computes exactly what `amcl pretrain` optimises, for every method, AMCL form
and temperature ablation."""

from __future__ import annotations

import copy

import pytest
import torch

from amcl.config import PretrainConfig
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

SMALL = dict(backbone="small_cnn", image_size=8, proj_hidden=16, proj_dim=8, temperature_hidden=8, queue_size=32,
             predictor_hidden=8, batch_size=8)
CASES = {
    "simclr": {},
    "simclr-softmax": dict(amcl=True),
    "simclr-hardest": dict(amcl=True, amcl_form="hardest", topk=2),
    "simclr-hardest-with-positive": dict(amcl=True, amcl_form="hardest_with_positive"),
    "simclr-positive": dict(amcl=True, temperature_mode="positive", negative_regularizer="sum_log_inverse"),
    "simclr-negative": dict(amcl=True, temperature_mode="negative", temperature_input="detached"),
    "simclr-constant": dict(amcl=True, temperature_mode="constant"),
    "simclr-global": dict(amcl=True, temperature_mode="global"),
    "moco": dict(method="moco"),
    "moco-softmax": dict(method="moco", amcl=True),
    "moco-hardest": dict(method="moco", amcl=True, amcl_form="hardest", topk=3),
    "moco-hardest-with-positive": dict(method="moco", amcl=True, amcl_form="hardest_with_positive"),
    "moco-positive": dict(method="moco", amcl=True, temperature_mode="positive"),
    "moco-global": dict(method="moco", amcl=True, temperature_mode="global"),
    "simsiam": dict(method="simsiam", proj_layers=3),
    "simsiam-amcl": dict(method="simsiam", amcl=True, proj_layers=3),
    "simsiam-constant": dict(method="simsiam", amcl=True, proj_layers=3, temperature_mode="constant"),
    "barlow_twins": dict(method="barlow_twins", proj_layers=3),
    "barlow_twins-amcl": dict(method="barlow_twins", amcl=True, proj_layers=3),
    "barlow_twins-positive": dict(method="barlow_twins", amcl=True, proj_layers=3, temperature_mode="positive"),
    "barlow_twins-negative": dict(method="barlow_twins", amcl=True, proj_layers=3, temperature_mode="negative"),
    "barlow_twins-constant": dict(method="barlow_twins", amcl=True, proj_layers=3, temperature_mode="constant"),
}


def _standalone(cfg: PretrainConfig, net: torch.nn.Module | None) -> torch.nn.Module:
    """The loss module a user would build from the run's settings, owning a copy of the method's phi."""
    detached = cfg.temperature_input == "detached"
    if not cfg.amcl:
        return {"simclr": lambda: NTXentLoss(cfg.temperature), "moco": lambda: MoCoLoss(cfg.temperature),
                "simsiam": SimSiamLoss, "barlow_twins": lambda: BarlowTwinsLoss(cfg.barlow_lambda)}[cfg.method]()
    common = dict(beta=cfg.beta, tau_min=cfg.tau_min, tau_max=cfg.tau_max, head_reduction=cfg.head_reduction,
                  hidden=cfg.temperature_hidden, detach_input=detached, temperature_mode=cfg.temperature_mode,
                  temperature=cfg.temperature)
    # the global mode takes its per-head module; the others build their own phi, given the method's weights
    shared = dict(temperature_net=copy.deepcopy(net)) if cfg.temperature_mode == "global" else {}
    if cfg.method == "simclr":
        module = AMCLNTXentLoss(cfg.proj_dim, cfg.amcl_form, topk=cfg.topk,
                                negative_regularizer=cfg.negative_regularizer, **common, **shared)
    elif cfg.method == "moco":
        module = AMCLMoCoLoss(cfg.proj_dim, cfg.amcl_form, topk=cfg.topk, negative_regularizer=cfg.negative_regularizer,
                              **common, **shared)
    elif cfg.method == "simsiam":
        module = AMCLSimSiamLoss(cfg.proj_dim, **common)
    else:
        module = AMCLBarlowTwinsLoss(cfg.global_batch, cfg.barlow_lambda, **common)
    if net is not None and not shared:
        module.temperature_net.load_state_dict(net.state_dict())
    return module.double()


@pytest.mark.parametrize("case", list(CASES))
def test_the_methods_loss_is_its_criterions(case):
    cfg = PretrainConfig(**{**SMALL, **CASES[case]}).resolved()
    torch.manual_seed(0)
    model = METHOD_CLASSES[cfg.method](cfg, num_classes=10).double().eval()  # eval: BatchNorm uses no batch
    g = torch.Generator().manual_seed(1)
    v1, v2 = (torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    seen = {}
    if cfg.method == "moco":  # its inputs (queries, the momentum encoder's keys, the queue) as the method passes them
        model.queue.features.copy_(torch.nn.functional.normalize(torch.randn_like(model.queue.features), dim=-1))
        called = model.criterion.terms if cfg.amcl else model.criterion.forward
        setattr(model.criterion, "terms" if cfg.amcl else "forward",
                lambda *args: (seen.setdefault("args", args), called(*args))[1])
    loss, _ = model.loss(v1, v2)
    if cfg.amcl and cfg.head_reduction == "mean":  # as training_step reduces the heads' sum
        loss = loss / cfg.heads
    if cfg.method == "moco":
        args = seen["args"]
    else:
        with torch.no_grad():
            z = model.projector(model.backbone(torch.cat([v1, v2])))
        z1, z2 = z[:, :8], z[:, 8:]
        args = (*model.predictor(z).split(8, dim=1), z1, z2) if cfg.method == "simsiam" else (z1, z2)
    expected = _standalone(cfg, model.temperature_net)(*args)
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-12, atol=1e-12)
    assert torch.isfinite(loss)


def test_a_method_shares_its_temperature_net_with_its_criterion_and_saves_it_once():
    cfg = PretrainConfig(**SMALL, amcl=True).resolved()
    model = METHOD_CLASSES["simclr"](cfg, num_classes=10)
    assert model.criterion.temperature_net is model.temperature_net
    assert not [k for k in model.state_dict() if k.startswith("criterion.")]  # checkpoints keep their keys
    assert len(list(model.parameters())) == len({id(p) for p in model.parameters()})
