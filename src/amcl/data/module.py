"""The Lightning data module: fixed-size uint8 images, augmented on the training device in whole batches.

Two input paths behind one interface (:class:`~amcl.data.splits.Split`):

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
from amcl.data.folders import FolderSplits
from amcl.data.images import decode_failure, default_workers
from amcl.data.readers import DatasetError
from amcl.data.splits import ImageSplits, Split
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
        self.streamed = splits.train.streamed
        self.seed = seed  # the training order across processes (DistributedSampler)
        self.channels_last = channels_last  # on CUDA: views in channels-last layout, faster convolutions
        self.workers = default_workers() if workers is None else workers
        self.unreadable: set[str] = set()
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

    @property
    def query_splits(self) -> tuple[str, ...]:
        """The kNN monitor's query splits, in the order of its loaders: the test split, and the validation
        split when there is one (``--val-fraction``)."""
        return ("test", "val") if getattr(self.splits, "val", None) is not None else ("test",)

    def split(self, name: str) -> Split:
        """The ``"train"``, ``"test"`` or ``"val"`` split."""
        return {"train": self.splits.train, "test": self.splits.test}.get(name) or getattr(self.splits, name)

    def _stats_sample(self) -> Tensor:
        train = self.splits.train
        sample = _spread(len(train), STREAMED_STATS_SAMPLE if train.streamed else STATS_SAMPLE)
        return train.images(sample, self.workers)

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

    def _pin_memory(self) -> dict:
        """Decoded batches in pinned host memory when training on CUDA."""
        trainer = self.trainer
        cuda = trainer is not None and trainer.strategy.root_device.type == "cuda"
        return {"pin_memory": True} if cuda and self.streamed else {}

    def _query_index(self, split: str) -> Tensor:
        """This process's kNN queries of a split: every world-th image (the counts are summed over processes)."""
        rank, world = self._process()
        return torch.arange(rank, len(self.split(split)), world)

    def train_dataloader(self) -> DataLoader:
        """Training batches; an unreadable file is replaced by the next image, so batches keep their size."""
        train = self.splits.train
        return train.loader(self.batch_size, workers=self.workers, replace_unreadable=True, drop_last=True,
                            persistent_workers=train.streamed and self.workers > 0, **self._pin_memory(),
                            **self._train_sampling(len(train)))

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The kNN monitor's queries (:attr:`query_splits`); unreadable files are left out, as the in-memory cache
        does."""
        loaders = [self.split(name).loader(self.eval_batch_size, self._query_index(name), workers=self.workers,
                                           **self._pin_memory()) for name in self.query_splits]
        return loaders[0] if len(loaders) == 1 else loaders

    # ----------------------------------------------------------------- batches

    def _training(self) -> bool:
        return self.trainer is not None and self.trainer.training

    def note_unreadable(self, paths: list[str]) -> None:
        """Report image files a worker could not decode (each once); refuse them if strict. Only streamed
        splits (:class:`FolderSplits`) have such files."""
        for path in paths:
            if path in self.unreadable:
                continue
            reason = decode_failure(path, self.splits.image_size)
            if self.splits.strict:
                raise DatasetError(f"{path} is not a readable image ({reason}); remove or replace it, or drop "
                                   "--strict-data to skip such files")
            self.unreadable.add(path)
            if len(self.unreadable) <= _WARN_UNREADABLE:
                last = len(self.unreadable) == _WARN_UNREADABLE
                more = "; further ones are counted in the run's metrics" if last else ""
                warn(f"unreadable image {path} ({reason}) replaced by the next file; --strict-data makes this an "
                     f"error{more}")

    def _batch_split(self, dataloader_idx: int) -> str:
        return "train" if self._training() else self.query_splits[dataloader_idx]

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return self.split(self._batch_split(dataloader_idx)).before_transfer(batch, self.note_unreadable)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        training = self._training()
        images, labels = self.split(self._batch_split(dataloader_idx)).after_transfer(batch)
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
        chosen = self.split(split)
        index = chosen.labelled()[rank::world]
        for images, labels in chosen.batches(self.eval_batch_size, device, index, workers=self.workers,
                                             on_unreadable=self.note_unreadable):
            yield self.augment.plain(images), labels
