"""Adding a method takes its module and one registration: a toy fifth method, written and registered here and
touching no file of the package, pre-trains and evaluates through `amcl pretrain`'s and `amcl eval`'s own paths."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import Tensor

from amcl.cli import main
from amcl.losses import nt_xent_loss
from amcl.methods import METHOD_CLASSES, MomentumMethod, PretrainMethod, SimCLR, register_method
from amcl.nn import NTXentLoss
from amcl.options import NON_NEGATIVE, Option
from amcl.specs import METHOD_SPECS
from builders import cli_args, tiny_options


class DecoupledCLR(PretrainMethod):
    """SimCLR's architecture with the decoupled contrastive loss (the positive left out of the denominator)."""

    def __init__(self, config, num_classes: int, normalization: dict | None = None) -> None:
        super().__init__(config, num_classes, normalization)
        self.projector = self.make_projector()
        self.criterion = NTXentLoss(self.config.temperature, decoupled=self.config.decoupled, gather_distributed=True)

    def loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        batch = view1.shape[0]
        z = self.projector(self.backbone(torch.cat([view1, view2])))  # [C, 2B, d]
        return self.criterion(z[:, :batch], z[:, batch:]), {}


@pytest.fixture
def dcl():
    own = (Option("decoupled", bool, True, "leave the positive out of the denominator"),
           Option("dcl_weight", float, 1.0, "an option with a range", valid=NON_NEGATIVE))
    spec = dataclasses.replace(METHOD_SPECS["simclr"], name="dcl", title="DCL", options=own)
    register_method(spec, DecoupledCLR)
    try:
        yield spec
    finally:  # the registry as it was, for the other tests
        del METHOD_SPECS["dcl"], METHOD_CLASSES["dcl"]


@pytest.mark.slow
def test_a_registered_method_pretrains_and_evaluates_through_the_commands(dcl, tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", "--method", "dcl", *cli_args(tiny_options(epochs=1, max_steps=3, out=str(out)))]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and torch.isfinite(torch.tensor(metrics["final_loss"]))
    assert "method: dcl\n" in (out / "config.yaml").read_text()
    assert main(["eval", "--checkpoint", str(out), "--device", "cpu"]) == 0  # the checkpoint loads by its name
    assert json.loads((out / "eval-knn.json").read_text())["top1"] > 0.1  # above chance on ten digits


def test_a_registered_method_declares_and_checks_its_own_options(dcl, tmp_path, capsys):
    from amcl.config import PretrainConfig, load_yaml

    given = tmp_path / "dcl.yaml"
    given.write_text("method: dcl\ndecoupled: false\n")
    assert main(["pretrain", "--config", str(given), "--print-config"]) == 0  # YAML key of the method's option
    printed = capsys.readouterr().out
    assert "decoupled: false\n" in printed and "dcl_weight: 1.0\n" in printed and "queue_size" not in printed
    assert main(["pretrain", "--method", "dcl", "--decoupled", "--dcl-weight", "2", "--print-config"]) == 0
    assert "decoupled: true\ndcl_weight: 2.0\n" in capsys.readouterr().out  # its flags, bool with --no- too
    assert main(["pretrain", "--method", "dcl", "--dcl-weight", "-1", "--print-config"]) == 2
    assert "--dcl-weight must be a number >= 0, got -1.0" in capsys.readouterr().err  # its declared range
    assert main(["pretrain", "--method", "dcl", "--queue-size", "8", "--print-config"]) == 2
    assert "--queue-size is an option of moco, which --method dcl does not use" in capsys.readouterr().err
    assert main(["pretrain", "--method", "simclr", "--dcl-weight", "2", "--print-config"]) == 2
    assert "--dcl-weight is an option of dcl" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    assert "DCL options:\n  --decoupled, --no-decoupled" in capsys.readouterr().out  # a group of its own
    config = PretrainConfig(**{**load_yaml(given), "dcl_weight": 3}).resolved()
    assert (config.decoupled, config.dcl_weight, config.method_options) == (False, 3.0, {"decoupled": False,
                                                                                          "dcl_weight": 3.0})


def test_a_registered_methods_loss_is_its_own(dcl):
    from amcl.config import PretrainConfig

    config = PretrainConfig(**tiny_options(method="dcl", image_size=8)).resolved()  # the config accepts it
    torch.manual_seed(0)
    model = METHOD_CLASSES["dcl"](config, num_classes=10).eval()
    v1, v2 = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    loss, _ = model.loss(v1, v2)
    with torch.no_grad():
        z = model.projector(model.backbone(torch.cat([v1, v2])))
    assert torch.allclose(loss, nt_xent_loss(z[:, :4], z[:, 4:], 0.5, decoupled=True))
    coupled = METHOD_CLASSES["dcl"](dataclasses.replace(config, decoupled=False), num_classes=10)
    assert coupled.criterion.decoupled is False  # the method reads its own option
    with pytest.raises(ValueError, match="a method named 'simclr' is registered already"):
        register_method(METHOD_SPECS["simclr"], DecoupledCLR)
    register_method(METHOD_SPECS["simclr"], SimCLR)  # registering a method again as it is changes nothing


class MomentumCLR(MomentumMethod):
    """A BYOL-like toy: the online projections against the momentum copy's, with NT-Xent. It writes no EMA of its
    own: the momentum base class holds the copy and updates it."""

    def __init__(self, config, num_classes: int, normalization: dict | None = None) -> None:
        super().__init__(config, num_classes, normalization)
        self.projector = self.make_projector()
        self.make_momentum_encoder()
        self.criterion = NTXentLoss(self.config.temperature)

    def loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        online = self.projector(self.backbone(view1))
        return self.criterion(online, self.momentum_targets(view2, 0.5)), {}


def test_a_momentum_method_gets_its_moving_average_copy_from_the_base_class():
    from amcl.config import PretrainConfig

    config = PretrainConfig(**tiny_options(image_size=8)).resolved()
    model = MomentumCLR(config, num_classes=10)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)  # the online weights move away from their copy
    before = [p.clone() for p in model.momentum_backbone.parameters()]
    loss, _ = model.loss(torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8))
    loss.backward()
    for old, new, online in zip(before, model.momentum_backbone.parameters(), model.backbone.parameters()):
        assert torch.allclose(new, 0.5 * old + 0.5 * online)  # one EMA step with the given momentum
        assert new.grad is None and not new.requires_grad  # the copy takes no gradient and no optimiser step
    assert all(p.grad is not None for p in model.projector.parameters())
