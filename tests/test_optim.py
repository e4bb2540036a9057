"""Optimisers and schedules (amcl.optim): LARS against updates computed by hand, the warm-up/cosine
multipliers at chosen steps, linear lr scaling, AdamW, which parameters are not decayed, the default
SGD schedule unchanged, and a short real run whose learning rates follow the schedule."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from amcl.config import PretrainConfig, _choices, load_yaml
from amcl.errors import AmclError
from amcl.methods import METHOD_CLASSES
from amcl.nn.heads import HeadwiseLinear
from amcl.optim import LARS, LR_SCALINGS, OPTIMIZERS, build_optimizer, split_decay_groups, warmup_cosine, warmup_steps
from builders import tiny_config

CONFIGS = Path(__file__).parent.parent / "configs"


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def test_lars_matches_hand_computed_updates_with_momentum_decay_and_an_excluded_bias():
    layer = nn.Linear(2, 1).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0]]))
        layer.bias.copy_(torch.tensor([1.0]))
    decayed, excluded = split_decay_groups(layer.named_parameters())
    assert [n for n, _ in decayed] == ["weight"] and [n for n, _ in excluded] == ["bias"]
    lr, m, wd, eta, eps = 0.1, 0.9, 0.1, 0.5, 1e-8
    optimizer = LARS([{"params": [p for _, p in decayed]},
                      # weight_decay on an excluded group is ignored: neither decay nor trust ratio
                      {"params": [p for _, p in excluded], "lars_exclude": True, "weight_decay": 0.3}],
                     lr=lr, momentum=m, weight_decay=wd, trust_coefficient=eta, eps=eps)

    # by hand, in Python floats: g = grad + wd w; trust = eta |w| / (|g| + eps); v = m v + lr trust g; w -= v
    w, b, vw, vb = [3.0, 4.0], 1.0, [0.0, 0.0], 0.0
    steps = [(0.1, [0.5, -1.0], 0.2), (0.05, [0.1, 0.2], -0.5)]  # (lr, weight grad, bias grad); lr changes
    for step_lr, gw, gb in steps:
        g = [gw[i] + wd * w[i] for i in range(2)]
        trust = eta * norm(w) / (norm(g) + eps)
        vw = [m * vw[i] + step_lr * trust * g[i] for i in range(2)]
        w = [w[i] - vw[i] for i in range(2)]
        vb = m * vb + step_lr * gb  # excluded: plain SGD with momentum
        b = b - vb

        for group in optimizer.param_groups:
            group["lr"] = step_lr
        layer.weight.grad = torch.tensor([gw], dtype=torch.float64)
        layer.bias.grad = torch.tensor([gb], dtype=torch.float64)
        optimizer.step()
        assert torch.allclose(layer.weight, torch.tensor([w], dtype=torch.float64), rtol=0, atol=1e-12)
        assert torch.allclose(layer.bias, torch.tensor([b], dtype=torch.float64), rtol=0, atol=1e-12)
    # the first step, written out: |w| = 5, g = (0.8, -0.6), |g| = 1, trust 2.5, update 0.25 g
    assert abs(3.0 - 0.1 * 2.5 * 0.8 * (1 / (1 + eps)) - (w[0] + vw[0])) < 1e-12  # w after step 1 = w2 + v2
    assert b == pytest.approx(1.0 - 0.02 - (0.9 * 0.02 - 0.025))


def test_lars_trust_ratio_is_one_when_a_norm_is_zero():
    zero = nn.Parameter(torch.zeros(3, dtype=torch.float64))  # |w| = 0: the step is lr * g
    still = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))  # |g| = 0 (no decay): no step, no NaN
    optimizer = LARS([zero, still], lr=0.5, momentum=0.0, weight_decay=0.0, trust_coefficient=0.001)
    zero.grad = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)
    still.grad = torch.zeros(2, dtype=torch.float64)
    optimizer.step()
    assert torch.equal(zero.detach(), torch.tensor([-0.5, 1.0, -2.0], dtype=torch.float64))
    assert torch.equal(still.detach(), torch.tensor([1.0, 2.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="lr"):
        LARS([zero], lr=-1.0)


def test_warmup_then_cosine_at_chosen_steps():
    total, warm = 110, 10
    assert warmup_cosine(0, total, warm) == pytest.approx(0.1)  # the first step already moves
    assert warmup_cosine(4, total, warm) == pytest.approx(0.5)
    assert warmup_cosine(9, total, warm) == 1.0  # the last warm-up step: the full rate
    assert warmup_cosine(10, total, warm) == 1.0  # the cosine starts at the top
    assert warmup_cosine(60, total, warm) == pytest.approx(0.5)  # half-way through the decay
    assert warmup_cosine(109, total, warm) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert warmup_cosine(110, total, warm) == 0.0 and warmup_cosine(500, total, warm) == 0.0
    values = [warmup_cosine(s, total, warm) for s in range(total + 5)]
    assert min(values) >= 0 and max(values) == 1.0
    assert all(a >= b for a, b in zip(values[warm:], values[warm + 1:]))  # decays monotonically
    # warm-up steps from epochs: round(warmup_epochs x total / epochs); compressed with --max-steps
    assert warmup_steps(10, 200, 200 * 490) == 4900
    assert warmup_steps(0.5, 4, 44) == 6 and warmup_steps(0, 4, 44) == 0
    assert warmup_steps(1, 2, 4) == 2


def test_without_warmup_the_multipliers_are_the_old_cosine_exactly():
    for total in (7, 1000, 78_000):
        for step in (0, 1, total // 2, total - 1, total):
            old = 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
            assert warmup_cosine(step, total, 0) == old


def _config(**options):
    return SimpleNamespace(**{**dict(optimizer="sgd", lr=0.3, lr_scaling="none", momentum=0.9, weight_decay=1e-4,
                                     batch_size=512), **options})


def test_linear_lr_scaling_uses_the_global_batch():
    params = list(nn.Linear(3, 2).named_parameters())
    optimizer, lr = build_optimizer(params, _config(lr_scaling="linear"), world_size=2)
    assert lr == pytest.approx(0.3 * 1024 / 256) and all(g["lr"] == lr for g in optimizer.param_groups)
    optimizer, lr = build_optimizer(params, _config(lr_scaling="none"), world_size=8)
    assert lr == 0.3 and optimizer.param_groups[0]["lr"] == 0.3


def test_adamw_and_lars_are_chosen_with_biases_and_norms_not_decayed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2), nn.LayerNorm(2))
    adamw, lr = build_optimizer(model.named_parameters(), _config(optimizer="adamw", lr=5e-4, weight_decay=0.05), 1)
    assert isinstance(adamw, torch.optim.AdamW) and lr == 5e-4
    decayed, excluded = adamw.param_groups
    assert decayed["betas"] == (0.9, 0.999) and decayed["weight_decay"] == 0.05 and excluded["weight_decay"] == 0
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert len(excluded["params"]) == 6  # conv and linear biases, BatchNorm and LayerNorm weights and biases
    lars, _ = build_optimizer(model.named_parameters(), _config(optimizer="lars"), 1)
    assert isinstance(lars, LARS)
    assert [g["lars_exclude"] for g in lars.param_groups] == [False, True]
    assert [g["weight_decay"] for g in lars.param_groups] == [1e-4, 0.0]
    sgd, _ = build_optimizer(model.named_parameters(), _config(optimizer="sgd"), 1)
    assert type(sgd) is torch.optim.SGD and len(sgd.param_groups) == 1  # SGD decays everything, as before
    assert set(OPTIMIZERS) == set(_choices("optimizer")) and set(LR_SCALINGS) == set(_choices("lr_scaling"))


def test_split_excludes_biases_norms_heads_biases_and_vit_tokens():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.heads = HeadwiseLinear(3, 4, 2)  # bias of shape [C, 1, out]
            self.norm = nn.LayerNorm(4)
            self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.frozen = nn.Linear(2, 2).requires_grad_(False)  # like MoCo's momentum copies

    decayed, excluded = split_decay_groups(Tiny().named_parameters())
    assert [n for n, _ in decayed] == ["conv.weight", "heads.weight"]
    assert [n for n, _ in excluded] == ["pos_embed", "cls_token", "conv.bias", "bn.weight", "bn.bias", "heads.bias",
                                        "norm.weight", "norm.bias"]  # a module's own parameters come first


def _configured(method="simclr", total=1000, world_size=1, **options):
    config = tiny_config(**{"method": method, "batch_size": 16, "proj_hidden": 16, "proj_dim": 8, "queue_size": 32,
                            **options}).resolved()
    model = METHOD_CLASSES[method](config, num_classes=10)
    model._trainer = SimpleNamespace(estimated_stepping_batches=total, world_size=world_size)
    setup = model.configure_optimizers()
    return model, setup["optimizer"], setup["lr_scheduler"]["scheduler"]


def test_default_sgd_optimizer_and_schedule_are_unchanged():
    total = 1000
    model, optimizer, schedule = _configured(total=total)
    assert type(optimizer) is torch.optim.SGD and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.06, 0.9, 5e-4)
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters() if p.requires_grad]
    for step in (0, 1, total // 2, total - 1):
        assert schedule.lr_lambdas[0](step) == 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def test_configured_lars_with_warmup_and_moco_momentum_copies_left_out():
    model, optimizer, schedule = _configured("moco", total=100, world_size=4, optimizer="lars", lr_scaling="linear",
                                             warmup_epochs=1, epochs=10)
    assert isinstance(optimizer, LARS) and model.base_lr == pytest.approx(0.08 * 16 * 4 / 256)
    handed = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert handed == {id(p) for p in model.parameters() if p.requires_grad}
    assert handed.isdisjoint(id(p) for n, p in model.named_parameters() if n.startswith("momentum_"))
    assert [schedule.lr_lambdas[0](s) for s in (0, 9, 10)] == [0.1, 1.0, 1.0]  # 10 warm-up steps of 100


def test_config_checks_new_options():
    for options, message in ((dict(optimizer="adam"), "unknown optimizer"), (dict(lr_scaling="sqrt"), "lr_scaling"),
                             (dict(warmup_epochs=-1.0), "--warmup-epochs"),
                             (dict(warmup_epochs=5.0, epochs=5), "less than --epochs"),
                             (dict(warmup_epochs=float("nan")), "--warmup-epochs")):
        with pytest.raises(AmclError, match=message):
            tiny_config(**options).resolved()
    default = tiny_config().resolved()
    assert (default.optimizer, default.lr_scaling, default.warmup_epochs) == ("sgd", "none", 0.0)


def test_new_presets_pair_baseline_and_amcl():
    names = ["cifar100", "stl10", "imagenet100-resnet50", "imagenet100-vit-small"]
    amcl_keys = {"amcl", "amcl-form", "heads", "temperature-mode", "beta", "tau-min", "tau-max", "topk",
                 "temperature-hidden", "out"}
    for name in names:
        base_yaml = yaml.safe_load((CONFIGS / f"simclr-{name}.yaml").read_text())
        amcl_yaml = yaml.safe_load((CONFIGS / f"simclr-amcl-{name}.yaml").read_text())
        # the pair differs only in the AMCL switch and its options: the comparison is fair
        assert {k: v for k, v in base_yaml.items() if k not in amcl_keys} == \
            {k: v for k, v in amcl_yaml.items() if k not in amcl_keys}, name
        base = PretrainConfig(**{**load_yaml(CONFIGS / f"simclr-{name}.yaml"), "data_root": "DIR"}).resolved()
        amcl = PretrainConfig(**{**load_yaml(CONFIGS / f"simclr-amcl-{name}.yaml"), "data_root": "DIR"}).resolved()
        assert (base.heads, amcl.heads, base.amcl, amcl.amcl, amcl.beta) == (1, 3, False, True, 1e-4)
    stl = PretrainConfig(**{**load_yaml(CONFIGS / "simclr-stl10.yaml"), "data_root": "DIR"}).resolved()
    assert (stl.image_size, stl.unlabeled, stl.epochs, stl.batch_size) == (96, True, 800, 512)
    r50 = PretrainConfig(**{**load_yaml(CONFIGS / "simclr-imagenet100-resnet50.yaml"), "data_root": "DIR"}).resolved()
    assert (r50.backbone, r50.optimizer, r50.lr_scaling, r50.warmup_epochs, r50.batch_size) == \
        ("resnet50_imagenet", "lars", "linear", 10.0, 256)
    vit = PretrainConfig(**{**load_yaml(CONFIGS / "simclr-imagenet100-vit-small.yaml"), "data_root": "DIR"}).resolved()
    assert (vit.backbone, vit.optimizer, vit.lr, vit.weight_decay, vit.warmup_epochs) == \
        ("vit_small", "adamw", 5e-4, 0.05, 10.0)


@pytest.mark.slow
def test_short_lars_run_follows_the_warmup_schedule(tmp_path, monkeypatch):
    used = []
    step = LARS.step

    def recording_step(self, closure=None):
        used.append(self.param_groups[0]["lr"])
        return step(self, closure)

    monkeypatch.setattr(LARS, "step", recording_step)
    from amcl.train import pretrain

    # 11 batches of 128 per epoch; --max-steps 4 fits the schedule into 4 steps: warm-up 2, cosine 2
    summary = pretrain(tiny_config(optimizer="lars", lr=0.2, lr_scaling="linear", warmup_epochs=1, epochs=2,
                                   max_steps=4, knn_every=2, out=str(tmp_path)))
    base = 0.2 * 128 / 256
    assert used == pytest.approx([base / 2, base, base, base / 2])
    assert math.isfinite(summary["final_loss"])
