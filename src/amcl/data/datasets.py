"""One entry point for every dataset: :func:`load_dataset` -> :class:`ImageSplits` (in memory) or
:class:`FolderSplits` (an image folder too large to hold, decoded every epoch)."""

from __future__ import annotations

from typing import Protocol

from amcl.data.folders import FolderSplits
from amcl.data.splits import ImageSplits, train_subset, with_validation

#: The datasets :func:`load_dataset` reads (the config offers the same names).
DATASET_NAMES = ("digits", "synthetic", "cifar10", "cifar100", "stl10", "fashion_mnist", "mnist", "kmnist", "folder")


class DataOptions(Protocol):
    """The data options of a resolved config (:class:`amcl.config.PretrainConfig` has them)."""

    dataset: str
    data_root: str | None
    split_seed: int
    image_size: int
    unlabeled: bool
    class_list: str | None
    strict_data: bool
    cache_images: str
    workers: int | None
    train_subset: int | None
    val_fraction: float


def load_dataset(
    name: str,
    root: str | None = None,
    seed: int = 0,
    *,
    image_size: int = 224,
    unlabeled: bool = False,
    class_list: str | None = None,
    strict: bool = False,
    cache: str = "auto",
    workers: int | None = None,
) -> ImageSplits | FolderSplits:
    """Read a dataset by name (one of :data:`DATASET_NAMES`); all but digits and synthetic read ``root``.

    ``seed`` draws the train/test split of digits and the images of synthetic (the config's
    ``split_seed``); the file datasets come with their own splits.

    ``unlabeled`` adds STL-10's unlabeled split, or a folder's ``unlabeled/`` images, to the training
    images (label -1). ``image_size``, ``class_list``, ``strict``, ``cache`` and ``workers`` apply
    to ``folder`` (see :func:`amcl.data.folders.read_image_folder`).
    """
    if name == "digits":
        from amcl.data.digits import read_digits

        return read_digits(seed)
    if name == "synthetic":
        from amcl.data.synthetic import make_synthetic

        return make_synthetic(seed=seed)
    from amcl.data import folders, readers

    if name == "cifar10":
        return readers.read_cifar10(root)
    if name == "cifar100":
        return readers.read_cifar100(root)
    if name == "stl10":
        return readers.read_stl10(root, include_unlabeled=unlabeled)
    if name in ("fashion_mnist", "mnist", "kmnist"):
        from amcl.data.idx import read_idx_dataset

        return read_idx_dataset(name, root)
    if name == "folder":
        return folders.read_image_folder(root, image_size, class_list, unlabeled, strict, cache, workers)
    raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")


def load_configured_dataset(options: DataOptions, cache: str | None = None) -> ImageSplits | FolderSplits:
    """The dataset a resolved config names, with its data options (``cache`` overrides the config's): a
    class-balanced ``train_subset`` of its training images, then a ``val_fraction`` validation split, both
    drawn with ``split_seed`` (so every run and every evaluation of a config sees the same images)."""
    from amcl.data.readers import DatasetError

    splits = load_dataset(
        options.dataset,
        options.data_root,
        options.split_seed,
        image_size=options.image_size,
        unlabeled=options.unlabeled,
        class_list=options.class_list,
        strict=options.strict_data,
        cache=cache or options.cache_images,
        workers=options.workers,
    )
    subset, fraction = getattr(options, "train_subset", None), getattr(options, "val_fraction", 0.0) or 0.0
    if not (subset or fraction):
        return splits
    if not isinstance(splits, ImageSplits):
        raise DatasetError(f"--train-subset and --val-fraction need the images in memory, and {options.data_root} is "
                           "decoded every epoch: pass --cache-images always (or use a smaller folder)")
    try:
        if subset:
            splits = train_subset(splits, subset, options.split_seed)
        if fraction:
            splits = with_validation(splits, fraction, options.split_seed)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    return splits
