"""The Lightning data module: images held as uint8 tensors, sent to the training device once,
sampled and augmented there in whole batches.

The data loaders yield only batches of indices; ``on_after_batch_transfer`` turns them into
two augmented views (training) or plain images and labels (kNN monitor) on the device.
"""

from __future__ import annotations

from typing import Iterator

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from amcl.data.augment import TwoViews, ViewAugmentation
from amcl.data.readers import ImageSplits


class _Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (in [0, 1] units) of uint8 images, as 3 channels."""
    x = images.float().div(255)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.tolist(), std.tolist()


class ContrastiveDataModule(L.LightningDataModule):
    """Two augmented views per image for pre-training; plain images for the kNN monitor."""

    def __init__(
        self,
        splits: ImageSplits,
        batch_size: int,
        policy: str = "default",
        image_size: int = 32,
        color_strength: float = 0.5,
        eval_batch_size: int = 1024,
    ) -> None:
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        mean, std = channel_stats(splits.train_images)
        self.augment = ViewAugmentation(policy, image_size, color_strength, mean, std)
        self.two_views = TwoViews(self.augment)
        self._on_device: dict[str, tuple[Tensor, Tensor]] = {}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Indices(len(self.splits.train_labels)), self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Indices(len(self.splits.test_labels)), self.eval_batch_size)

    def split_on_device(self, split: str, device: torch.device) -> tuple[Tensor, Tensor]:
        """The split's uint8 images and labels on ``device``, copied there once."""
        cached = self._on_device.get(split)
        if cached is None or cached[0].device != device:
            images = getattr(self.splits, f"{split}_images")
            labels = getattr(self.splits, f"{split}_labels")
            cached = (images.to(device), labels.to(device))
            self._on_device[split] = cached
        return cached

    def on_after_batch_transfer(self, batch: Tensor, dataloader_idx: int) -> tuple[Tensor, Tensor]:
        if self.trainer is not None and self.trainer.training:
            images, _ = self.split_on_device("train", batch.device)
            return self.two_views(images[batch])
        images, labels = self.split_on_device("test", batch.device)
        return self.augment.plain(images[batch]), labels[batch]

    def plain_batches(self, split: str, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        """All images of a split, un-augmented, with labels, in evaluation-sized chunks on ``device``."""
        images, labels = self.split_on_device(split, device)
        for start in range(0, len(labels), self.eval_batch_size):
            end = start + self.eval_batch_size
            yield self.augment.plain(images[start:end]), labels[start:end]
