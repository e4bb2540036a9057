"""Image encoders (backbones) that map images [B, C, H, W] to flat features [B, out_dim].

Implemented here rather than taken from torchvision:

* ``ResNet`` (18/34 with ``BasicBlock``, 50 with ``Bottleneck``), with two stems:
  ``"cifar"`` (3x3 conv, stride 1, no max-pool) for small 32-96 px images, and
  ``"imagenet"`` (7x7 conv stride 2 + 3x3 max-pool stride 2) for large images.
* ``SmallConvNet``: a tiny three-layer convnet for 8-32 px images.
* ``VisionTransformer`` (:mod:`amcl.nn.vit`): ``vit_tiny``, ``vit_small``, ``vit_base`` with a class
  token, ``vit_*_mean`` with mean pooling; patch 4 up to 64 px, 16 from 128 px.
* ``timm:NAME``: any model of the optional ``timm`` package (imported only when asked for).

No classifier head is included; every module exposes an integer ``out_dim``.
Use :func:`build_backbone` or the :data:`BACKBONES` registry to construct them by name.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Literal, cast

from torch import Tensor, nn

from amcl.errors import AmclError
from amcl.nn.vit import VIT_SIZES, VisionTransformer, default_patch_size

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "SmallConvNet", "TimmBackbone", "BACKBONES", "build_backbone"]


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut; used by ResNet-18/34."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.body = self.make_body(c_in, width, stride)
        self.shortcut = (
            _conv_bn(c_in, c_out, 1, stride, relu=False) if stride != 1 or c_in != c_out else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def make_body(self, c_in: int, width: int, stride: int) -> nn.Sequential:
        return nn.Sequential(_conv_bn(c_in, width, 3, stride), _conv_bn(width, width, 3, relu=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class Bottleneck(BasicBlock):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4) with shortcut; used by ResNet-50."""

    expansion = 4

    def make_body(self, c_in: int, width: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            _conv_bn(c_in, width, 1),
            _conv_bn(width, width, 3, stride),
            _conv_bn(width, width * self.expansion, 1, relu=False),
        )


class ResNet(nn.Module):
    """ResNet feature extractor ending in global average pooling (no fc layer).

    ``stem="cifar"``: 3x3 conv stride 1 + BN + ReLU, keeps the resolution (for 32-96 px images).
    ``stem="imagenet"``: 7x7 conv stride 2 + BN + ReLU + 3x3 max-pool stride 2, reduces it by 4.
    """

    def __init__(
        self,
        block: type[BasicBlock],
        layers: list[int],
        stem: Literal["cifar", "imagenet"] = "cifar",
        in_channels: int = 3,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if stem == "cifar":
            self.stem = _conv_bn(in_channels, 64, 3)
        elif stem == "imagenet":
            self.stem = nn.Sequential(_conv_bn(in_channels, 64, 7, 2), nn.MaxPool2d(3, stride=2, padding=1))
        else:
            raise ValueError(f"unknown stem {stem!r}; choose 'cifar' or 'imagenet'")
        stages: list[nn.Module] = []
        c_in = 64
        for i, (width, n_blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n_blocks):
                blocks.append(block(c_in, width, stride=2 if i > 0 and j == 0 else 1))
                c_in = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim: int = c_in

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    last_norm = cast(nn.BatchNorm2d, cast(nn.Sequential, m.body[-1])[1])
                    nn.init.zeros_(last_norm.weight)  # gamma of the block's last BN

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.stages(self.stem(x)))


class SmallConvNet(nn.Module):
    """Three conv-BN-ReLU layers (strides 1, 2, 2) + global average pool, for tiny 8-32 px images."""

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(in_channels, width, 3),
            _conv_bn(width, 2 * width, 3, 2),
            _conv_bn(2 * width, 4 * width, 3, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_dim: int = 4 * width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


_ARCHS: dict[str, tuple[type[BasicBlock], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}

_POOLINGS: tuple[tuple[str, Literal["cls", "mean"]], ...] = (("", "cls"), ("_mean", "mean"))
#: ViT names (they take the image size, which sets the patch size and position embeddings).
_VITS: dict[str, Callable[..., nn.Module]] = {
    f"vit_{size}{suffix}": partial(VisionTransformer, dim=dim, depth=depth, heads=heads, pooling=pooling)
    for size, (dim, depth, heads) in VIT_SIZES.items()
    for suffix, pooling in _POOLINGS
}
#: ``--backbone timm:NAME`` builds timm's model NAME when the timm package can be imported.
TIMM_PREFIX = "timm:"
#: Image size of a ViT built without one.
DEFAULT_VIT_IMAGE_SIZE = 224

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    **{name: partial(ResNet, block, layers, "cifar") for name, (block, layers) in _ARCHS.items()},
    **{f"{name}_imagenet": partial(ResNet, block, layers, "imagenet") for name, (block, layers) in _ARCHS.items()},
    "small_cnn": SmallConvNet,
    **_VITS,
}


def is_backbone_name(name: str) -> bool:
    """Whether ``name`` is a registered backbone or ``timm:NAME`` (timm itself is checked when building)."""
    return name in BACKBONES or (name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX))


def image_size_problem(name: str, image_size: int) -> str | None:
    """Why backbone ``name`` cannot take ``image_size`` px images (a ViT whose patch size does not divide
    it), as a message naming the fix; None when it can."""
    if name not in _VITS or image_size < 1:
        return None
    patch = default_patch_size(image_size)
    if image_size % patch == 0:
        return None
    nearest = max(patch, round(image_size / patch) * patch)
    return (f"--backbone {name} cuts {image_size} px images into {patch} px patches, which does not divide "
            f"{image_size}; use an --image-size divisible by {patch}, e.g. {nearest}")


class TimmBackbone(nn.Module):
    """A timm model without classifier (``num_classes=0``) as a backbone: [B, C, H, W] -> [B, out_dim]."""

    def __init__(self, model: Any) -> None:  # a timm model (nn.Module with num_features)
        super().__init__()
        self.model = model
        self.out_dim: int = int(model.num_features)

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if out.ndim == 4:  # a model left unpooled: average the feature map
            out = out.mean(dim=(-2, -1))
        elif out.ndim == 3:  # ... or the tokens
            out = out.mean(dim=1)
        return out


def _build_timm(name: str, in_channels: int, image_size: int | None) -> TimmBackbone:
    model_name = name[len(TIMM_PREFIX):]
    try:
        import timm
    except Exception as exc:  # not installed, or a build that does not work with this torch
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise AmclError(
            f"--backbone {name} needs the timm package, which cannot be imported here "
            f"({type(exc).__name__}: {reason}); install timm, or use one of: {', '.join(sorted(BACKBONES))}"
        ) from None
    options = dict(pretrained=False, num_classes=0, in_chans=in_channels)
    try:
        try:
            model = timm.create_model(model_name, **options, **({"img_size": image_size} if image_size else {}))
        except TypeError:  # the model has no img_size argument (e.g. convnets)
            model = timm.create_model(model_name, **options)
    except Exception as exc:
        raise AmclError(
            f"--backbone {name}: timm cannot build {model_name!r} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); see timm.list_models() for its model names"
        ) from None
    return TimmBackbone(model)


def build_backbone(name: str, in_channels: int = 3, image_size: int | None = None) -> nn.Module:
    """Construct the backbone registered under ``name`` (see :data:`BACKBONES`), or ``timm:NAME``.

    ``image_size`` sets a ViT's patch size and position embeddings (default 224) and timm models'
    ``img_size`` where they take one; ResNets and the small convnet ignore it.
    """
    if name.startswith(TIMM_PREFIX) and is_backbone_name(name):
        return _build_timm(name, in_channels, image_size)
    if name not in BACKBONES:
        raise ValueError(
            f"unknown backbone {name!r}; choose one of: {', '.join(sorted(BACKBONES))}, or timm:NAME (needs timm)"
        )
    if name in _VITS:
        return BACKBONES[name](in_channels=in_channels, image_size=image_size or DEFAULT_VIT_IMAGE_SIZE)
    return BACKBONES[name](in_channels=in_channels)
