"""Modules: backbones, the multi-head projector and the shared temperature network."""

from amcl.nn.backbones import BACKBONES, build_backbone
from amcl.nn.heads import HeadwiseLinear, MultiHeadProjector
from amcl.nn.temperature import TemperatureNet

__all__ = ["BACKBONES", "HeadwiseLinear", "MultiHeadProjector", "TemperatureNet", "build_backbone"]
