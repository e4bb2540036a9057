"""Vision Transformer backbones: shapes at both patch sizes, gradients, SDPA attention, position
embedding resizing, the registry and timm names, and a short real pre-training with vit_tiny."""

from __future__ import annotations

import importlib
import json
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from amcl.cli import main
from amcl.config import PretrainConfig
from amcl.errors import AmclError
from amcl.eval.checkpoint import load_pretrained
from amcl.export import load_encoder
from amcl.nn.backbones import BACKBONES, build_backbone
from amcl.nn.vit import Attention, VisionTransformer, default_patch_size
from amcl.train import pretrain


def _timm_importable() -> bool:
    try:
        importlib.import_module("timm")
    except Exception:
        return False
    return True


def test_registry_names_and_sizes() -> None:
    vits = {name for name in BACKBONES if name.startswith("vit_")}
    assert vits == {f"vit_{s}{p}" for s in ("tiny", "small", "base") for p in ("", "_mean")}
    for name, dim in (("vit_tiny", 192), ("vit_small", 384), ("vit_base", 768)):
        for variant, pooling in ((name, "cls"), (f"{name}_mean", "mean")):
            # build at 32 px with meta tensors: no memory, no init cost for ViT-Base
            with torch.device("meta"):
                model = build_backbone(variant, image_size=32)
            assert isinstance(model, VisionTransformer) and model.out_dim == dim and model.pooling == pooling
            assert len(model.blocks) == 12 and model.patch_size == 4
    assert build_backbone("vit_tiny").image_size == 224  # the default without an image size


def test_default_patch_size() -> None:
    assert [default_patch_size(s) for s in (16, 32, 64, 96, 112, 128, 224)] == [4, 4, 4, 8, 8, 16, 16]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_vit_tiny_32px_patch4_forward_backward(pooling: str) -> None:
    torch.manual_seed(0)
    model = build_backbone("vit_tiny" if pooling == "cls" else "vit_tiny_mean", image_size=32)
    assert model.patch_size == 4 and model.grid == 8
    assert model.pos_embed.shape == (1, 64 + (pooling == "cls"), 192)
    seen = []
    handle = model.blocks[0].register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    out = model(torch.randn(2, 3, 32, 32))
    handle.remove()
    assert seen == [torch.Size([2, 64 + (pooling == "cls"), 192])]  # 8x8 patch tokens (+ class token)
    assert out.shape == (2, 192) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    for param in (model.patch_embed.weight, model.pos_embed) + ((model.cls_token,) if pooling == "cls" else ()):
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_224px_patch16_forward_backward(pooling: str) -> None:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=224, dim=64, depth=2, heads=2, pooling=pooling)
    assert model.patch_size == 16 and model.grid == 14
    out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 64) and model.out_dim == 64
    (out * torch.randn_like(out)).sum().backward()  # not out.sum(): the final LayerNorm makes its gradient 0
    assert model.patch_embed.weight.grad.abs().sum() > 0 and model.pos_embed.grad.abs().sum() > 0


def test_single_channel_and_initialisation() -> None:
    torch.manual_seed(0)
    model = build_backbone("vit_tiny_mean", in_channels=1, image_size=16)
    assert model(torch.randn(3, 1, 16, 16)).shape == (3, 192)
    # N(0, 0.02^2) truncated at +-2 std: standard deviation 0.02 * 0.880
    assert abs(model.pos_embed.std().item() - 0.0176) < 0.002 and model.pos_embed.abs().max() <= 0.04
    qkv = model.blocks[0].attn.qkv
    assert abs(qkv.weight.std().item() - 0.0176) < 0.001 and (qkv.bias == 0).all()
    assert qkv.weight.abs().max() <= 0.04 and qkv.weight.abs().max() > 0.039
    assert (model.norm.weight == 1).all() and (model.norm.bias == 0).all()


def test_attention_is_sdpa_and_equals_explicit_softmax(monkeypatch) -> None:
    torch.manual_seed(0)
    attn = Attention(dim=12, heads=3).double()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 3, 4).permute(2, 0, 3, 1, 4)  # [B, heads, N, 4] each
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(4), dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 12))
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    out = attn(x)
    assert calls == [torch.Size([2, 3, 5, 4])]  # one call for all heads
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


def test_position_embeddings_are_interpolated_for_other_sizes() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, dim=32, depth=1, heads=2).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 48, 48)).shape == (2, 32)  # 12x12 grid from the 8x8 one
        assert model(torch.randn(2, 3, 16, 32)).shape == (2, 32)  # non-square 4x8
        same = model.position_embedding(8, 8)
        assert same.shape == (1, 64, 32) and torch.equal(same, model.pos_embed[:, 1:])
        assert model.position_embedding(12, 12).shape == (1, 144, 32)
        # a constant embedding stays constant when resized
        model.pos_embed.fill_(0.5)
        torch.testing.assert_close(model.position_embedding(12, 6), torch.full((1, 72, 32), 0.5))
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        model(torch.randn(1, 3, 30, 32))


def test_patch_size_must_divide_the_image_size() -> None:
    with pytest.raises(ValueError, match="100 px is not a multiple of 8 px"):
        VisionTransformer(image_size=100)  # 100 px -> patch 8
    with pytest.raises(ValueError, match="33 px is not a multiple of 4 px"):
        build_backbone("vit_tiny", image_size=33)
    with pytest.raises(ValueError, match="pooling"):
        VisionTransformer(image_size=32, pooling="max")


def test_config_accepts_vit_and_timm_names() -> None:
    PretrainConfig(backbone="vit_small_mean").resolved()
    PretrainConfig(backbone="timm:vit_small_patch16_224").resolved()  # timm is only needed to build it
    for bad in ("vit_huge", "timm:"):
        with pytest.raises(AmclError, match="unknown backbone"):
            PretrainConfig(backbone=bad).resolved()
    # a patch size that does not divide the image size is caught before any data is read
    with pytest.raises(AmclError, match="use an --image-size divisible by 4, e.g. 16$"):
        PretrainConfig(backbone="vit_tiny", image_size=18).resolved()
    with pytest.raises(AmclError, match="cuts 100 px images into 8 px patches"):
        PretrainConfig(backbone="vit_base_mean", image_size=100).resolved()
    PretrainConfig(backbone="resnet18", image_size=18).resolved()  # convnets take any size


@pytest.mark.skipif(_timm_importable(), reason="timm is importable here")
def test_timm_backbone_without_timm_is_a_one_line_error(tmp_path, capsys) -> None:
    with pytest.raises(AmclError, match="needs the timm package") as exc:
        build_backbone("timm:vit_small_patch16_224", image_size=224)
    assert "install timm" in str(exc.value) and "vit_tiny" in str(exc.value) and "\n" not in str(exc.value)
    out = tmp_path / "run"
    code = main(["pretrain", "--backbone", "timm:resnet18", "--dataset", "digits", "--epochs", "1",
                 "--batch-size", "32", "--max-steps", "1", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "timm:resnet18 needs the timm package" in err
    assert not (out / "config.yaml").exists()


def test_timm_names_with_a_stand_in_timm_module(monkeypatch) -> None:
    """The timm path (options, img_size only where taken, pooling to [B, D]) against a fake timm."""
    calls = []

    def create_model(name, **options):
        calls.append((name, options))
        if name == "nope":
            raise RuntimeError("Unknown model (nope)")
        if name == "convnet" and "img_size" in options:
            raise TypeError("__init__() got an unexpected keyword argument 'img_size'")
        model = torch.nn.Conv2d(options["in_chans"], 7, 3)  # leaves a feature map: the wrapper pools it
        model.num_features = 7
        return model

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    model = build_backbone("timm:convnet", in_channels=1, image_size=32)
    assert model.out_dim == 7 and model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert calls == [("convnet", dict(pretrained=False, num_classes=0, in_chans=1, img_size=32)),
                     ("convnet", dict(pretrained=False, num_classes=0, in_chans=1))]
    with pytest.raises(AmclError, match="timm cannot build 'nope' .*Unknown model"):
        build_backbone("timm:nope")


@pytest.mark.skipif(not _timm_importable(), reason="timm is not importable here")
def test_timm_backbone_when_timm_is_importable() -> None:  # pragma: no cover - needs timm
    model = build_backbone("timm:resnet18", image_size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, model.out_dim)


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vit")
    summary = pretrain(PretrainConfig(dataset="digits", backbone="vit_tiny", image_size=16, batch_size=64, epochs=1,
                                      max_steps=3, knn_k=10, progress=False, out=str(out)))
    return out, summary


@pytest.mark.slow
def test_short_digits_pretraining_with_vit_tiny(vit_run) -> None:
    out, summary = vit_run
    assert (out / "last.ckpt").is_file() and (out / "metrics.json").is_file()
    epoch = summary["epochs"][-1]
    assert math.isfinite(epoch["loss"]) and 0 <= epoch["knn_acc"] <= 1
    backbone = load_pretrained(out).backbone
    assert isinstance(backbone, VisionTransformer) and backbone.patch_size == 4 and backbone.grid == 4


@pytest.mark.slow
def test_export_round_trip_of_a_vit(vit_run) -> None:
    out, _ = vit_run
    assert main(["export", "--checkpoint", str(out / "last.ckpt")]) == 0
    info = json.loads((out / "export" / "encoder.json").read_text())
    assert info["backbone"] == "vit_tiny" and info["image_size"] == 16 and info["feature_dim"] == 192
    encoder, _ = load_encoder(out / "export")
    reference = load_pretrained(out).backbone.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(encoder(x), reference(x))
