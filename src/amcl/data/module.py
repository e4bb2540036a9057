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
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from amcl.data.augment import TwoViews, ViewAugmentation
from amcl.data.folders import DecodedImages, FolderSplits, ImageFiles, decode_failure, default_workers, file_batches
from amcl.data.readers import DatasetError, ImageSplits
from amcl.errors import warn

#: Images used to estimate the normalisation statistics (an even spread over the training split).
STATS_SAMPLE = 10_000
STREAMED_STATS_SAMPLE = 512
_WARN_UNREADABLE = 5


class _Indices(Dataset):
    """The indices ``start, start + step, ...`` below ``n`` (one process's shard when ``step`` > 1)."""

    def __init__(self, n: int, start: int = 0, step: int = 1) -> None:
        self.n, self.start, self.step = n, start, step

    def __len__(self) -> int:
        return len(range(self.start, self.n, self.step))

    def __getitem__(self, i: int) -> int:
        return self.start + i * self.step


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
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        """``normalization`` (``{"mean": [...], "std": [...]}``) overrides the statistics measured on the
        training images, e.g. to evaluate a checkpoint exactly as it was trained."""
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.streamed = isinstance(splits, FolderSplits)
        self.seed = seed  # the training order across processes (DistributedSampler)
        self.channels_last = channels_last  # on CUDA: views in channels-last layout, faster convolutions
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
        sample = files.take(_spread(len(files), STREAMED_STATS_SAMPLE))
        return torch.cat([b[0] for b in file_batches(DecodedImages(sample, self.splits.image_size), self.workers)])

    # ----------------------------------------------------------------- loaders

    def _process(self) -> tuple[int, int]:
        """This process's rank and the number of processes (0, 1 outside distributed training)."""
        trainer = self.trainer
        return getattr(trainer, "global_rank", 0), getattr(trainer, "world_size", 1)

    def _train_sampling(self, n: int) -> dict:
        """Shuffled order of ``n`` images: one process, or this process's share of a seeded global permutation."""
        rank, world = self._process()
        if world == 1:
            return {"shuffle": True}
        return {"sampler": DistributedSampler(_Indices(n), world, rank, shuffle=True, seed=self.seed, drop_last=True)}

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
        n = len(self.splits.train_labels)
        if self.streamed:
            return self._file_loader(self.splits.train, self.batch_size, training=True, drop_last=True,
                                     persistent_workers=self.workers > 0, **self._train_sampling(n))
        return DataLoader(_Indices(n), self.batch_size, drop_last=True, **self._train_sampling(n))

    def val_dataloader(self) -> DataLoader:
        rank, world = self._process()  # each process takes every world-th query; the counts are summed
        if self.streamed:
            return self._file_loader(_stride(self.splits.test, rank, world), self.eval_batch_size)
        return DataLoader(_Indices(len(self.splits.test_labels), rank, world), self.eval_batch_size)

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
        rank, world = self._process()
        files = self._files("train") if training else _stride(self.splits.test, rank, world)
        self._note_unreadable(files.paths, broken)
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
            views = self.two_views(images)
            if self.channels_last and images.device.type == "cuda":
                views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
            return views
        return self.augment.plain(images), labels

    def plain_batches(self, split: str, device: torch.device, shard: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """The labelled images of a split, un-augmented, with labels, in evaluation-sized chunks on ``device``.

        With ``shard``, only this process's share (every world-th labelled image) in distributed training.
        """
        rank, world = self._process() if shard else (0, 1)
        if self.streamed:
            files = self._files(split)
            labelled = _stride(files.subset(files.labels >= 0), rank, world)
            for images, labels, broken, _ in self._file_loader(labelled, self.eval_batch_size):
                self._note_unreadable(labelled.paths, broken)
                images, labels = _readable(images, labels, broken)
                yield self.augment.plain(images.to(device)), labels.to(device)
            return
        images, labels = self.split_on_device(split, device)
        labelled = (labels >= 0).nonzero().flatten()[rank::world]
        for index in labelled.split(self.eval_batch_size):
            yield self.augment.plain(images[index]), labels[index]


def _readable(images: Tensor, labels: Tensor, broken: Tensor) -> tuple[Tensor, Tensor]:
    """A decoded evaluation batch without its unreadable files (on the host, before the transfer)."""
    if bool((broken < 0).all()):
        return images, labels
    keep = broken < 0
    return images[keep], labels[keep]


def _stride(files: ImageFiles, start: int, step: int) -> ImageFiles:
    """Every ``step``-th file from ``start``: one process's share of an evaluation split."""
    return files if step == 1 else files.take(slice(start, None, step))
