"""Exported weights under torchvision's and timm's names: checked against those libraries' architectures, written
here from their documentation (torchvision and timm cannot be imported with this torch), by names, shapes,
parameter counts and a strict load whose forward pass equals amcl's encoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amcl.nn import build_backbone
from amcl.nn.names import export_names, rename

# --------------------------------------------------------------------------- torchvision's ResNet, as documented


class TorchvisionBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        out = width * self.expansion
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                           if stride != 1 or c_in != out else None)

    def residual(self, x):
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def forward(self, x):
        return self.relu(self.residual(x) + (x if self.downsample is None else self.downsample(x)))


class TorchvisionBottleneck(TorchvisionBasicBlock):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__(c_in, width, stride)
        # torchvision's v1.5 bottleneck: the stride on the 3x3 conv
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)

    def residual(self, x):
        x = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        return self.bn3(self.conv3(x))


class TorchvisionResNet(nn.Module):
    """torchvision.models.resnet{18,34,50} with ``fc = Identity()``; ``cifar``: conv1 3x3 stride 1, no max-pool."""

    def __init__(self, block, layers, cifar: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False) if cifar else nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1)
        c_in = 64
        for index, (width, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            stage = []
            for j in range(blocks):
                stage.append(block(c_in, width, 2 if index > 1 and j == 0 else 1))
                c_in = width * block.expansion
            setattr(self, f"layer{index}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------- timm's VisionTransformer, as documented


class TimmPatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimmAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(b, n, d))


class TimmMlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TimmBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), TimmAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), TimmMlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TimmViT(nn.Module):
    """timm's ``vit_*_patch16_224`` with ``num_classes=0`` (and ``class_token=False, global_pool="avg"``:
    ``fc_norm`` after the mean instead of ``norm`` before it)."""

    def __init__(self, dim: int, depth: int, heads: int, image: int = 224, patch: int = 16,
                 mean: bool = False) -> None:
        super().__init__()
        tokens = (image // patch) ** 2
        self.mean = mean
        self.patch_embed = TimmPatchEmbed(patch, dim)
        if not mean:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + (0 if mean else 1), dim))
        self.blocks = nn.Sequential(*(TimmBlock(dim, heads) for _ in range(depth)))
        if mean:
            self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
        else:
            self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        x = self.patch_embed(x)
        if self.mean:
            return self.fc_norm(self.blocks(x + self.pos_embed).mean(1))
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]


# --------------------------------------------------------------------------- the checks

# parameters without the classifier: torchvision's documented totals (resnet18 11,689,512; resnet50 25,557,032)
# and timm's vit_small_patch16_224 (22,050,664) less their 1000-class fc / head
CASES = {
    "resnet18_imagenet": (lambda: TorchvisionResNet(TorchvisionBasicBlock, [2, 2, 2, 2]), 64, 11_689_512 - 513_000),
    "resnet18": (lambda: TorchvisionResNet(TorchvisionBasicBlock, [2, 2, 2, 2], cifar=True), 16,
                 11_689_512 - 513_000 - 64 * 3 * (49 - 9)),  # the CIFAR stem's conv1 is 3x3 instead of 7x7
    "resnet50_imagenet": (lambda: TorchvisionResNet(TorchvisionBottleneck, [3, 4, 6, 3]), 64, 25_557_032 - 2_049_000),
    "vit_small": (lambda: TimmViT(384, 12, 6), 224, 22_050_664 - 385_000),
    "vit_tiny_mean": (lambda: TimmViT(192, 12, 3, image=32, patch=4, mean=True), 32, None),
}

# a few names and shapes written out from the libraries' state dicts
PINNED = {
    "resnet18_imagenet": {"conv1.weight": (64, 3, 7, 7), "bn1.running_var": (64,), "layer1.1.conv2.weight":
                          (64, 64, 3, 3), "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                          "layer4.1.bn2.num_batches_tracked": ()},
    "resnet18": {"conv1.weight": (64, 3, 3, 3), "layer3.0.downsample.1.weight": (256,)},
    "resnet50_imagenet": {"layer1.0.conv3.weight": (256, 64, 1, 1), "layer1.0.downsample.0.weight": (256, 64, 1, 1),
                          "layer4.2.bn3.bias": (2048,)},
    "vit_small": {"cls_token": (1, 1, 384), "pos_embed": (1, 197, 384), "patch_embed.proj.weight": (384, 3, 16, 16),
                  "blocks.11.attn.qkv.weight": (1152, 384), "blocks.0.mlp.fc1.weight": (1536, 384),
                  "blocks.0.mlp.fc2.bias": (384,), "norm.weight": (384,)},
    "vit_tiny_mean": {"pos_embed": (1, 64, 192), "fc_norm.bias": (192,), "patch_embed.proj.weight": (192, 3, 4, 4)},
}


@pytest.mark.parametrize("name", list(CASES))
def test_exported_names_and_shapes_are_the_librarys_and_load_strictly(name):
    build, size, parameters = CASES[name]
    torch.manual_seed(0)
    ours = build_backbone(name, image_size=size).eval()
    style, names = export_names(ours)
    assert style == ("torchvision" if name.startswith("resnet") else "timm")
    exported = rename(ours.state_dict(), names)
    reference = build().eval()
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    assert {key: tuple(value.shape) for key, value in exported.items()} == expected  # exactly, fc/head excluded
    for key, shape in PINNED[name].items():
        assert tuple(exported[key].shape) == shape, key
    if parameters is not None:
        assert sum(p.numel() for p in reference.parameters()) == parameters
    reference.load_state_dict(exported, strict=True)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(reference(x), ours(x), rtol=1e-4, atol=1e-4)  # the same function
    back = rename(exported, names, back=True)
    assert list(back) == list(ours.state_dict())  # and the renaming is undone exactly


def test_the_small_convnet_keeps_amcls_names_and_other_styles_are_refused():
    small = build_backbone("small_cnn")
    style, names = export_names(small)
    assert style == "amcl" and all(k == v for k, v in names.items())
    with pytest.raises(ValueError, match="a SmallConvNet has no torchvision names; use --format amcl"):
        export_names(small, "torchvision")
    with pytest.raises(ValueError, match="a ResNet has no timm names; use --format torchvision or amcl"):
        export_names(build_backbone("resnet18"), "timm")
    assert export_names(build_backbone("resnet18"), "amcl")[0] == "amcl"
