"""Batched, on-device augmentation policies for contrastive learning.

A policy is a set of code letters (see :data:`AUGMENTATION_CODES`) naming the
augmentation types of the AMCL paper's seed code, or one of the keywords
``default`` (SimCLR's policy, identical to ``acde``) and ``color`` (crop plus
colour jitter applied with probability 1). Whatever order the letters come in,
the ops run in the fixed order crop, flip, jitter, grayscale, blur
(``a, e, d, c, b``). All ops are :mod:`kornia.augmentation` modules that act on
a whole batch at once and draw fresh random parameters per image on every call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amcl.policies import APPLY_ORDER, AUGMENTATION_CODES, POLICY_KEYWORDS, parse_policy, policy_help  # noqa: F401

DEFAULT_PROBABILITIES: dict[str, float] = {"a": 1.0, "b": 0.5, "c": 0.2, "d": 0.8, "e": 0.5}


def blur_kernel_size(image_size: int) -> int:
    """Odd Gaussian-blur kernel size of about 10% of ``image_size``, at least 3."""
    k = max(3, int(round(0.1 * image_size)))
    return k if k % 2 == 1 else k + 1


class ViewAugmentation(nn.Module):
    """One random view of a batch: ``[B, C, H, W]`` (uint8 or float in [0, 1]) -> float32 ``[B, 3, S, S]``.

    The input is converted to float32 in [0, 1] (uint8 is divided by 255), a
    single-channel batch is repeated to 3 channels (so the colour ops apply),
    images whose size differs from ``image_size`` are resized (bilinear,
    antialiased), the policy is applied, and the result is normalised with
    ``mean``/``std`` when given. ``probabilities`` overrides the application
    probability of individual codes, e.g. ``{"e": 1.0}``.
    """

    def __init__(
        self,
        policy: str,
        image_size: int,
        color_strength: float = 0.5,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        probabilities: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.policy = parse_policy(policy)
        self.image_size = int(image_size)
        self.color_strength = float(color_strength)
        probs = dict(DEFAULT_PROBABILITIES)
        letters = self.policy
        if self.policy == "color":
            letters, probs["d"] = "ad", 1.0
        for code, p in (probabilities or {}).items():
            if code not in AUGMENTATION_CODES:
                raise ValueError(f"unknown augmentation code {code!r} in probabilities; {policy_help()}")
            probs[code] = float(p)
        size, s = self.image_size, self.color_strength
        builders = {
            "a": lambda p: K.RandomResizedCrop((size, size), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), p=p),
            "e": lambda p: K.RandomHorizontalFlip(p=p),
            "d": lambda p: K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=p),
            "c": lambda p: K.RandomGrayscale(p=p),
            "b": lambda p: K.RandomGaussianBlur(blur_kernel_size(size), (0.1, 2.0), p=p),
        }
        self.ops = nn.ModuleDict({code: builders[code](probs[code]) for code in APPLY_ORDER if code in letters})
        if (mean is None) != (std is None):
            raise ValueError("mean and std must be given together")
        self.normalize = None if mean is None else K.Normalize(mean=tuple(mean), std=tuple(std))

    def prepare(self, images: Tensor) -> Tensor:
        """Convert to float32 [0, 1], 3 channels and ``image_size`` (no randomness)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected a [B, 1|3, H, W] batch, got shape {tuple(images.shape)}")
        x = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x

    def plain(self, images: Tensor) -> Tensor:
        """The un-augmented image as the encoder sees it (prepared and normalised), for evaluation."""
        x = self.prepare(images)
        return self.normalize(x) if self.normalize is not None else x

    def forward(self, images: Tensor) -> Tensor:
        """Return one independently augmented view of every image in the batch."""
        x = self.prepare(images)
        for op in self.ops.values():
            x = op(x)
        return self.normalize(x) if self.normalize is not None else x

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}, image_size={self.image_size}, color_strength={self.color_strength}"


class TwoViews(nn.Module):
    """Two independent augmentations ``(view1, view2)`` of the same batch.

    With one :class:`ViewAugmentation` both views use it (with fresh random
    parameters each call); pass ``second`` for asymmetric pipelines.
    """

    def __init__(self, first: ViewAugmentation, second: ViewAugmentation | None = None) -> None:
        super().__init__()
        self.first = first
        self.second = second if second is not None else first

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(view1, view2)``."""
        return self.first(images), self.second(images)
