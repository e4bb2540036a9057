"""Tests for amcl.nn.backbones: shapes, parameter counts, stems, gradients, registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amcl.nn.backbones import BACKBONES, BasicBlock, ResNet, SmallConvNet, build_backbone

EXPECTED_NAMES = {
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet18_imagenet",
    "resnet34_imagenet",
    "resnet50_imagenet",
    "small_cnn",
}
OUT_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "small_cnn": 128}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_names() -> None:
    assert EXPECTED_NAMES | {f"vit_{s}{p}" for s in ("tiny", "small", "base") for p in ("", "_mean")} == set(BACKBONES)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_output_shape(name: str) -> None:
    torch.manual_seed(0)
    model = build_backbone(name)
    size = 64 if name.endswith("_imagenet") else 32
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert isinstance(model.out_dim, int)
    assert model.out_dim == OUT_DIMS[name.removesuffix("_imagenet")]
    assert out.shape == (2, model.out_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [8, 16, 32])
def test_small_cnn_sizes(size: int) -> None:
    model = build_backbone("small_cnn")
    with torch.no_grad():
        out = model(torch.randn(3, 3, size, size))
    assert out.shape == (3, 128)


def test_small_cnn_width() -> None:
    model = SmallConvNet(width=16)
    assert model.out_dim == 64
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 64)


def test_parameter_counts() -> None:
    # torchvision resnet18: 11,689,512 - fc 513,000 - 7x7 stem 9,408 + 3x3 stem 1,728
    assert n_params(build_backbone("resnet18")) == 11_168_832
    # torchvision resnet50: 25,557,032 - fc 2,049,000
    assert n_params(build_backbone("resnet50_imagenet")) == 23_508_032
    # the two stems differ only in the first conv's kernel size (7x7 vs 3x3, 64 filters, 3 inputs)
    assert n_params(build_backbone("resnet18_imagenet")) - n_params(build_backbone("resnet18")) == 64 * 3 * (49 - 9)


@pytest.mark.parametrize("stem, expected", [("cifar", 32), ("imagenet", 8)])
def test_stem_resolution(stem: str, expected: int) -> None:
    model = build_backbone("resnet18" if stem == "cifar" else "resnet18_imagenet")
    assert isinstance(model, ResNet)
    seen: list[torch.Size] = []
    handle = model.stem.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    handle.remove()
    assert seen == [torch.Size([2, 64, expected, expected])]


@pytest.mark.parametrize("name", ["resnet18", "resnet50_imagenet", "small_cnn"])
def test_gradients_reach_first_conv(name: str) -> None:
    model = build_backbone(name)
    size = 64 if name.endswith("_imagenet") else 32
    model(torch.randn(2, 3, size, size)).sum().backward()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad is not None
    assert first_conv.weight.grad.abs().sum() > 0


def test_zero_init_residual() -> None:
    model = ResNet(BasicBlock, [2, 2, 2, 2])
    blocks = [m for m in model.modules() if hasattr(m, "body")]
    assert blocks and all((b.body[-1][1].weight == 0).all() for b in blocks)
    model = ResNet(BasicBlock, [2, 2, 2, 2], zero_init_residual=False)
    assert all((m.body[-1][1].weight == 1).all() for m in model.modules() if hasattr(m, "body"))


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'") as exc:
        build_backbone("vgg16")
    assert all(name in str(exc.value) for name in EXPECTED_NAMES)


@pytest.mark.parametrize("name", ["resnet18", "resnet18_imagenet", "small_cnn"])
def test_single_channel(name: str) -> None:
    model = build_backbone(name, in_channels=1)
    size = 64 if name.endswith("_imagenet") else 16
    with torch.no_grad():
        out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, model.out_dim)
