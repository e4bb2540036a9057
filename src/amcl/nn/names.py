"""The names other libraries give an encoder's weights: torchvision's for the ResNets, timm's for the ViTs.

amcl's own modules name their weights by what they are (``stem``, ``stages.1.0.body.0``); a user loading an
exported encoder into ``torchvision.models.resnet18`` or ``timm.create_model("vit_small_patch16_224")`` needs
those libraries' names. :func:`export_names` gives the renaming of a backbone's state dict, one name for one,
so that :func:`rename` maps it either way and an export loads back into amcl's module too.

* ResNet -> torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.bn1``, ``layer2.0.downsample.0``);
  torchvision's ``fc`` is not part of an encoder. The CIFAR stem (``resnet18`` ...) keeps torchvision's names
  for its 3x3 stride-1 ``conv1`` without max-pool: build torchvision's model, then set
  ``conv1 = Conv2d(3, 64, 3, 1, 1, bias=False)`` and ``maxpool = Identity()``.
* VisionTransformer -> timm (``patch_embed.proj``, ``blocks.0.mlp.fc1``, ``norm``; with mean pooling
  ``fc_norm``, as timm's ``global_pool="avg", class_token=False``); timm's ``head`` is not part of an encoder.
* ``timm:NAME`` backbones already hold a timm model: its names without amcl's ``model.`` prefix.
* The small convnet has no counterpart elsewhere: its names stay amcl's.
"""

from __future__ import annotations

import re
from typing import Mapping, TypeVar

from torch import nn

from amcl.nn.backbones import ResNet, TimmBackbone
from amcl.nn.vit import VisionTransformer

__all__ = ["NAME_STYLES", "export_names", "rename"]

#: What ``amcl export --format`` can write.
NAME_STYLES = ("torchvision", "timm", "amcl")

_BLOCK = r"stages\.(\d+)\.(\d+)\."  # stage i, block j: torchvision's layer{i+1}.{j}
_RESNET_RULES = (
    (r"stem\.0\.0\.(.+)", r"conv1.\1"),  # ImageNet stem: (conv-bn-relu, max-pool)
    (r"stem\.0\.1\.(.+)", r"bn1.\1"),
    (r"stem\.0\.(weight|bias)", r"conv1.\1"),  # CIFAR stem: conv-bn-relu
    (r"stem\.1\.(.+)", r"bn1.\1"),
    (_BLOCK + r"body\.(\d+)\.0\.(.+)", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.{m[4]}"),
    (_BLOCK + r"body\.(\d+)\.1\.(.+)", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.{m[4]}"),
    (_BLOCK + r"shortcut\.(\d)\.(.+)", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.{m[3]}.{m[4]}"),
)
_VIT_RULES = (
    (r"patch_embed\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"blocks\.(\d+)\.mlp\.0\.(.+)", r"blocks.\1.mlp.fc1.\2"),
    (r"blocks\.(\d+)\.mlp\.2\.(.+)", r"blocks.\1.mlp.fc2.\2"),
)


def _apply(rules, key: str) -> str:
    for pattern, replacement in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    return key


def export_names(backbone: nn.Module, style: str = "auto") -> tuple[str, dict[str, str]]:
    """The style an export of ``backbone`` is written in and ``{amcl name: exported name}`` for every entry of
    its state dict. ``style``: ``auto`` (torchvision for ResNets, timm for ViTs and ``timm:NAME``, amcl
    otherwise), or one of :data:`NAME_STYLES`; a style the backbone has no names in is a ValueError."""
    keys = list(backbone.state_dict())
    native = ("torchvision" if isinstance(backbone, ResNet) else
              "timm" if isinstance(backbone, (VisionTransformer, TimmBackbone)) else "amcl")
    chosen = native if style == "auto" else style
    if chosen not in NAME_STYLES:
        raise ValueError(f"unknown name style {style!r}; choose auto or one of: {', '.join(NAME_STYLES)}")
    if chosen not in (native, "amcl"):
        raise ValueError(f"a {type(backbone).__name__} has no {chosen} names; use --format {native} or amcl")
    if chosen == "amcl":
        return chosen, {key: key for key in keys}
    if isinstance(backbone, ResNet):
        names = {key: _apply(_RESNET_RULES, key) for key in keys}
    elif isinstance(backbone, TimmBackbone):
        names = {key: key.removeprefix("model.") for key in keys}
    else:
        mean = isinstance(backbone, VisionTransformer) and backbone.pooling == "mean"
        names = {key: _apply(_VIT_RULES, key) for key in keys}
        if mean:  # timm normalises the pooled token with fc_norm when it pools by averaging
            names = {key: re.sub(r"^norm\.", "fc_norm.", name) for key, name in names.items()}
    if len(set(names.values())) != len(names):  # a renaming must be one name for one, to be undone
        raise AssertionError(f"the {chosen} names of a {type(backbone).__name__} are not unique")
    return chosen, names


T = TypeVar("T")


def rename(state: Mapping[str, T], names: Mapping[str, str], back: bool = False) -> dict[str, T]:
    """``state`` with its keys renamed by ``names`` (amcl -> exported), or with ``back`` the other way; a key
    the renaming does not know is a KeyError naming it."""
    table = {new: old for old, new in names.items()} if back else dict(names)
    unknown = [key for key in state if key not in table]
    if unknown:
        raise KeyError(f"{len(unknown)} weights the encoder does not have, e.g. {unknown[0]!r}")
    return {table[key]: value for key, value in state.items()}
