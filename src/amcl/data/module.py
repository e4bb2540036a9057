"""The Lightning data module: fixed-size uint8 images, augmented on the training device in whole batches.

Two input paths, one interface:

* **in memory** (:class:`ImageSplits`: CIFAR, STL-10, digits, synthetic, cached folders): the images
  are sent to the training device once; the loaders yield only batches of indices, and
  ``on_after_batch_transfer`` gathers and augments them there.
* **streamed** (:class:`FolderSplits`: large image folders): DataLoader workers decode files to
  uint8 ``[B, 3, S, S]`` batches, which are moved to the device and augmented there.

Either way a training batch becomes two augmented views, and an evaluation batch plain images
with labels. Unlabeled images (label -1) take part in pre-training only.
"""

from __future__ import annotations

from typing import Iterator

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from amcl.data.augment import TwoViews, ViewAugmentation
from amcl.data.folders import DecodedImages, FolderSplits, ImageFiles, decode_failure, default_workers, file_batches
from amcl.data.readers import DatasetError, ImageSplits
from amcl.errors import warn

#: Images used to estimate the normalisation statistics (an even spread over the training split).
STATS_SAMPLE = 10_000
STREAMED_STATS_SAMPLE = 512
_WARN_UNREADABLE = 5


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


def _spread(n: int, count: int) -> Tensor:
    """``min(n, count)`` indices spread evenly over ``range(n)``."""
    return torch.linspace(0, n - 1, min(n, count)).round().long().unique()


class ContrastiveDataModule(L.LightningDataModule):
    """Two augmented views per image for pre-training; plain labelled images for the kNN monitor."""

    def __init__(
        self,
        splits: ImageSplits | FolderSplits,
        batch_size: int,
        policy: str = "default",
        image_size: int = 32,
        color_strength: float = 0.5,
        eval_batch_size: int = 1024,
        workers: int | None = None,
        normalization: dict[str, list[float]] | None = None,
    ) -> None:
        """``normalization`` (``{"mean": [...], "std": [...]}``) overrides the statistics measured on the
        training images, e.g. to evaluate a checkpoint exactly as it was trained."""
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.streamed = isinstance(splits, FolderSplits)
        self.workers = default_workers() if workers is None else workers
        self.unreadable: set[str] = set()
        self._on_device: dict[str, tuple[Tensor, Tensor]] = {}
        if normalization is None:
            mean, std = channel_stats(self._stats_sample())
        else:
            mean, std = normalization["mean"], normalization["std"]
        self.normalization = {"mean": list(mean), "std": list(std)}
        self.augment = ViewAugmentation(policy, image_size, color_strength, mean, std)
        self.two_views = TwoViews(self.augment)

    @property
    def can_monitor(self) -> bool:
        """Whether the kNN monitor can run: labelled training images and a labelled held-out split."""
        s = self.splits
        return s.num_classes > 0 and bool((s.train_labels >= 0).any()) and len(s.test_labels) > 0

    def _stats_sample(self) -> Tensor:
        if not self.streamed:
            images = self.splits.train_images
            return images[_spread(len(images), STATS_SAMPLE)]
        files = self.splits.train
        keep = torch.zeros(len(files), dtype=torch.bool)
        keep[_spread(len(files), STREAMED_STATS_SAMPLE)] = True
        sample = files.subset(keep)
        return torch.cat([b[0] for b in file_batches(DecodedImages(sample, self.splits.image_size), self.workers)])

    # ----------------------------------------------------------------- loaders

    def _files(self, split: str) -> ImageFiles:
        return self.splits.train if split == "train" else self.splits.test

    def _file_loader(self, files: ImageFiles, batch_size: int, training: bool = False, **options) -> DataLoader:
        """Decoded batches of ``files``. Training replaces a broken file by the next image (batches keep
        their size); evaluation drops it (``on_before_batch_transfer``), as the in-memory cache does."""
        trainer = self.trainer
        pin = trainer is not None and trainer.strategy.root_device.type == "cuda"
        return file_batches(DecodedImages(files, self.splits.image_size, substitute=training), self.workers,
                            batch_size, pin_memory=pin, **options)

    def train_dataloader(self) -> DataLoader:
        if self.streamed:
            return self._file_loader(self.splits.train, self.batch_size, training=True, shuffle=True,
                                     drop_last=True, persistent_workers=self.workers > 0)
        return DataLoader(_Indices(len(self.splits.train_labels)), self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        if self.streamed:
            return self._file_loader(self.splits.test, self.eval_batch_size)
        return DataLoader(_Indices(len(self.splits.test_labels)), self.eval_batch_size)

    # ----------------------------------------------------------------- batches

    def _note_unreadable(self, paths: tuple[str, ...], broken: Tensor) -> None:
        """Report files (``paths[broken]``) a worker could not decode and replaced by the next image;
        refuse them if strict."""
        broken = broken[broken >= 0]
        if not len(broken):
            return
        for i in broken.tolist():
            path = paths[i]
            if path in self.unreadable:
                continue
            reason = decode_failure(path, self.splits.image_size)
            if self.splits.strict:
                raise DatasetError(f"{path} is not a readable image ({reason}); remove or replace it, or drop "
                                   "--strict-data to skip such files")
            self.unreadable.add(path)
            if len(self.unreadable) <= _WARN_UNREADABLE:
                more = "; further ones are counted in the run's metrics" if len(self.unreadable) == _WARN_UNREADABLE else ""
                warn(f"unreadable image {path} ({reason}) replaced by the next file; --strict-data makes this an "
                     f"error{more}")

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if not self.streamed:
            return batch
        images, labels, broken, _ = batch
        training = self.trainer is not None and self.trainer.training
        self._note_unreadable(self._files("train" if training else "test").paths, broken)
        return (images, labels) if training else _readable(images, labels, broken)

    def split_on_device(self, split: str, device: torch.device) -> tuple[Tensor, Tensor]:
        """An in-memory split's uint8 images and labels on ``device``, copied there once."""
        cached = self._on_device.get(split)
        if cached is None or cached[0].device != device:
            images = getattr(self.splits, f"{split}_images")
            labels = getattr(self.splits, f"{split}_labels")
            cached = (images.to(device), labels.to(device))
            self._on_device[split] = cached
        return cached

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        training = self.trainer is not None and self.trainer.training
        if self.streamed:
            images, labels = batch
        else:
            images, labels = self.split_on_device("train" if training else "test", batch.device)
            images, labels = images[batch], labels[batch]
        if training:
            return self.two_views(images)
        return self.augment.plain(images), labels

    def plain_batches(self, split: str, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        """The labelled images of a split, un-augmented, with labels, in evaluation-sized chunks on ``device``."""
        if self.streamed:
            files = self._files(split)
            labelled = files.subset(files.labels >= 0)
            for images, labels, broken, _ in self._file_loader(labelled, self.eval_batch_size):
                self._note_unreadable(labelled.paths, broken)
                images, labels = _readable(images, labels, broken)
                yield self.augment.plain(images.to(device)), labels.to(device)
            return
        images, labels = self.split_on_device(split, device)
        labelled = (labels >= 0).nonzero().flatten()
        for index in labelled.split(self.eval_batch_size):
            yield self.augment.plain(images[index]), labels[index]


def _readable(images: Tensor, labels: Tensor, broken: Tensor) -> tuple[Tensor, Tensor]:
    """A decoded evaluation batch without its unreadable files (on the host, before the transfer)."""
    if bool((broken < 0).all()):
        return images, labels
    keep = broken < 0
    return images[keep], labels[keep]
