"""One interface for a dataset's splits, wherever the images live.

A :class:`Split` (the training or the held-out images) has int64 ``labels`` (-1 = unlabeled) and gives
uint8 ``[N, C, H, W]`` images by index (:meth:`Split.images`) or in batches on a device
(:meth:`Split.batches`). Two kinds implement it:

* :class:`MemorySplit`: images held in memory (digits, synthetic, CIFAR, STL-10, cached image folders),
  copied once to the device they are used on and gathered there;
* :class:`~amcl.data.images.FileSplit`: image files decoded on the fly by DataLoader workers (large
  image folders); a file that turns out unreadable is reported and left out (or, for training,
  replaced by the next image).

The splits of a dataset (:class:`ImageSplits` in memory, :class:`~amcl.data.folders.FolderSplits`
streamed) expose them as ``train`` and ``test``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.data import DataLoader

__all__ = ["ImageSplits", "MemorySplit", "Split", "UnreadableHandler", "balanced_counts", "per_class_draw",
           "train_subset", "with_validation"]

#: Called with the paths of files that could not be decoded in one batch.
UnreadableHandler = Callable[[list[str]], None]


class Split:
    """A split's images and labels (see the module docstring).

    The data module drives Lightning with :meth:`loader`, :meth:`before_transfer` (on the host) and
    :meth:`after_transfer` (on the device); :meth:`batches` chains the three outside Lightning.
    """

    #: Whether images are decoded from files on every pass (rather than held in memory).
    streamed: ClassVar[bool]
    labels: Tensor
    #: The file of each image; None in memory.
    paths: tuple[str, ...] | None

    def __len__(self) -> int:
        return len(self.labels)

    def labelled(self) -> Tensor:
        """Indices of the labelled images, in order."""
        return (self.labels >= 0).nonzero().flatten()

    def images(self, index: Tensor, workers: int = 0) -> Tensor:
        """uint8 images at int64 ``index``, on the CPU; unreadable files are left out."""
        raise NotImplementedError

    def loader(self, batch_size: int, index: Tensor | None = None, *, workers: int = 0,
               replace_unreadable: bool = False, **options: Any) -> DataLoader:
        """A DataLoader over the images at ``index`` (default: all, in order); ``options`` go to the
        DataLoader (``shuffle``, ``sampler``, ``drop_last``...). Its batches go through
        :meth:`before_transfer` and :meth:`after_transfer`. ``replace_unreadable`` (training) replaces
        an unreadable file by the next image, so batches keep their size."""
        raise NotImplementedError

    def before_transfer(self, batch: Any, on_unreadable: UnreadableHandler | None = None) -> Any:
        """A loader batch on the host: files that failed to decode go to ``on_unreadable`` and, unless
        replaced, are dropped."""
        return batch

    def after_transfer(self, batch: Any) -> tuple[Tensor, Tensor]:
        """A loader batch on its device as uint8 images and labels."""
        raise NotImplementedError

    def batches(self, batch_size: int, device: torch.device, index: Tensor | None = None, *, workers: int = 0,
                replace_unreadable: bool = False,
                on_unreadable: UnreadableHandler | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """The images at ``index`` (default: all) in that order, with their labels, as uint8 batches
        of at most ``batch_size`` on ``device`` (see :meth:`loader` and :meth:`before_transfer`)."""
        pin = device.type == "cuda"
        loader = self.loader(batch_size, index, workers=workers, replace_unreadable=replace_unreadable, pin_memory=pin)
        for batch in loader:
            batch = self.before_transfer(batch, on_unreadable)
            moved = batch.to(device) if isinstance(batch, Tensor) else tuple(t.to(device) for t in batch)
            yield self.after_transfer(moved)


class MemorySplit(Split):
    """uint8 ``pixels`` ``[N, C, H, W]`` held in memory, with their labels. Loader batches are indices;
    the images are gathered on the device from a copy made there once."""

    streamed = False
    paths = None

    def __init__(self, pixels: Tensor, labels: Tensor) -> None:
        self.pixels, self.labels = pixels, labels
        self._on_device: tuple[Tensor, Tensor] | None = None

    def on_device(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The images and labels on ``device``, copied there once (the copy on the last device is kept)."""
        if self._on_device is None or self._on_device[0].device != device:
            self._on_device = (self.pixels.to(device), self.labels.to(device))
        return self._on_device

    def images(self, index: Tensor, workers: int = 0) -> Tensor:
        return self.pixels[index]

    def loader(self, batch_size: int, index: Tensor | None = None, *, workers: int = 0,
               replace_unreadable: bool = False, **options: Any) -> DataLoader:
        return DataLoader(torch.arange(len(self)) if index is None else index, batch_size, **options)

    def after_transfer(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        images, labels = self.on_device(batch.device)
        return images[batch], labels[batch]

    def batches(self, batch_size: int, device: torch.device, index: Tensor | None = None,
                **unused: Any) -> Iterator[tuple[Tensor, Tensor]]:
        """As :meth:`Split.batches`, sliced straight from the copy on ``device``."""
        images, labels = self.on_device(device)
        index = torch.arange(len(self), device=device) if index is None else index.to(device)
        for chunk in index.split(batch_size):
            yield images[chunk], labels[chunk]


@dataclass(frozen=True)
class ImageSplits:
    """Train and test images (uint8 ``[N, C, H, W]``) with int64 labels (-1 = unlabeled), in memory, and
    optionally a validation split (:func:`with_validation`): labelled training images whose labels are held
    out of the training split, for choosing settings without looking at the test split."""

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: tuple[str, ...]
    val_images: Tensor | None = None
    val_labels: Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @cached_property
    def train(self) -> MemorySplit:
        return MemorySplit(self.train_images, self.train_labels)

    @cached_property
    def test(self) -> MemorySplit:
        return MemorySplit(self.test_images, self.test_labels)

    @cached_property
    def val(self) -> MemorySplit | None:
        """The validation split, or None without one."""
        if self.val_images is None or self.val_labels is None:
            return None
        return MemorySplit(self.val_images, self.val_labels)


def per_class_draw(labels: Tensor, counts: Tensor, seed: int) -> Tensor:
    """Sorted indices of ``counts[c]`` images of each class ``c`` among ``labels``, drawn with ``seed``
    (a class with fewer images gives all of them). The same labels, counts and seed give the same draw,
    whatever else a run does."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    shuffled = labels[order]
    chosen = []
    for c in range(len(counts)):
        chosen.append(order[shuffled == c][: int(counts[c])])
    return torch.cat(chosen).sort().values if chosen else torch.zeros(0, dtype=torch.long)


def balanced_counts(total: int, classes: int, seed: int) -> Tensor:
    """``total`` split over ``classes`` as evenly as possible; the remainder goes to classes drawn with ``seed``."""
    counts = torch.full((classes,), total // classes, dtype=torch.long)
    extra = torch.randperm(classes, generator=torch.Generator().manual_seed(seed + 1))[: total % classes]
    counts[extra] += 1
    return counts


def train_subset(splits: ImageSplits, count: int, seed: int) -> ImageSplits:
    """The splits with ``count`` training images, class-balanced and drawn with ``seed`` (``--train-subset``);
    the test split is kept whole. Raises ValueError (with the reason) when the classes are too small."""
    labels = splits.train_labels
    if bool((labels < 0).any()):
        raise ValueError("--train-subset draws labelled images per class, and this training split has unlabeled "
                         "images: drop --unlabeled or --train-subset")
    sizes = torch.bincount(labels, minlength=splits.num_classes)
    counts = balanced_counts(count, splits.num_classes, seed)
    short = (counts > sizes).nonzero().flatten()
    if count > len(labels) or len(short):
        raise ValueError(f"--train-subset {count} needs {int(counts.max())} images of every class, and "
                         f"{splits.name} has {int(sizes.min())} of its smallest; use --train-subset <= "
                         f"{int(sizes.min()) * splits.num_classes}")
    index = per_class_draw(labels, counts, seed)
    return ImageSplits(splits.name, splits.train_images[index], labels[index], splits.test_images,
                       splits.test_labels, splits.classes)


def with_validation(splits: ImageSplits, fraction: float, seed: int) -> ImageSplits:
    """The splits with a validation split (``--val-fraction``): ``fraction`` of each class's labelled training
    images (at least one), drawn with ``seed``. They keep their place in the training split with their label
    removed (-1): pre-training still sees them, while the kNN bank and the linear probe, which use labelled
    training images only, do not."""
    labels = splits.train_labels
    sizes = torch.bincount(labels[labels >= 0], minlength=splits.num_classes)
    counts = (sizes.double() * fraction).round().long().clamp(min=1)
    if bool((counts >= sizes).any()):
        raise ValueError(f"--val-fraction {fraction:g} would leave a class of {splits.name} without labelled training "
                         f"images (its smallest class has {int(sizes.min())}); use a smaller --val-fraction")
    index = per_class_draw(labels, counts, seed + 2)  # unlabeled images (-1) are never drawn
    train_labels = labels.clone()
    train_labels[index] = -1
    return ImageSplits(splits.name, splits.train_images, train_labels, splits.test_images, splits.test_labels,
                       splits.classes, splits.train_images[index], labels[index])
