"""A synthetic labelled image dataset for tests and benchmarks (no files, any size)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from amcl.data.readers import ImageSplits


def make_synthetic(
    num_train: int = 2048, num_test: int = 512, image_size: int = 32, num_classes: int = 10, seed: int = 0
) -> ImageSplits:
    """Class-structured uint8 ``[N, 3, S, S]`` images: each class is a smooth random colour pattern,
    each image that pattern rescaled in brightness and noised, so that features can
    separate the classes and kNN accuracy means something.
    """
    g = torch.Generator().manual_seed(seed)
    templates = F.interpolate(torch.rand(num_classes, 3, 4, 4, generator=g), size=image_size, mode="bicubic")

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(num_classes, (n,), generator=g)
        x = templates[labels]
        x = x * (0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)) + 0.1 * torch.randn(x.shape, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels

    train_x, train_y = sample(num_train)
    test_x, test_y = sample(num_test)
    return ImageSplits("synthetic", train_x, train_y, test_x, test_y, tuple(f"class{i}" for i in range(num_classes)))
