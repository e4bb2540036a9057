"""Modules: backbones (ResNets, a small convnet, Vision Transformers), the multi-head projector and
predictor, the shared temperature network, MoCo's momentum copy and queue, and drop-in loss modules
(:mod:`amcl.nn.criteria`) for other training loops."""

from amcl.nn.backbones import BACKBONES, build_backbone
from amcl.nn.criteria import (
    AMCLBarlowTwinsLoss,
    AMCLMoCoLoss,
    AMCLNTXentLoss,
    AMCLSimSiamLoss,
    BarlowTwinsLoss,
    MoCoLoss,
    NTXentLoss,
    SimSiamLoss,
)
from amcl.nn.heads import HeadwiseLinear, MultiHeadPredictor, MultiHeadProjector
from amcl.nn.momentum import FeatureQueue, momentum_copy, momentum_update_
from amcl.nn.temperature import GlobalTemperature, Shard, TemperatureNet
from amcl.nn.vit import VisionTransformer

__all__ = [
    "AMCLBarlowTwinsLoss",
    "AMCLMoCoLoss",
    "AMCLNTXentLoss",
    "AMCLSimSiamLoss",
    "BACKBONES",
    "BarlowTwinsLoss",
    "MoCoLoss",
    "NTXentLoss",
    "SimSiamLoss",
    "FeatureQueue",
    "GlobalTemperature",
    "HeadwiseLinear",
    "MultiHeadPredictor",
    "MultiHeadProjector",
    "Shard",
    "TemperatureNet",
    "VisionTransformer",
    "build_backbone",
    "momentum_copy",
    "momentum_update_",
]
