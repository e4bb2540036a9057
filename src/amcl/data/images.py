"""Image files decoded to fixed-size uint8 tensors, and :class:`FileSplit`, a split of image files
decoded on the fly by DataLoader workers.

Every image is decoded to RGB, its shorter side resized to ``size`` and the centre cropped to a
square (:func:`decode_image`). A file that cannot be decoded is flagged, not raised, by
:class:`DecodedImages`, so the main process can skip, report or refuse it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from amcl.data.readers import DatasetError, _brief
from amcl.data.splits import Split, UnreadableHandler
from amcl.errors import warn

__all__ = [
    "DecodedImages",
    "FileSplit",
    "ImageFiles",
    "decode_failure",
    "decode_image",
    "default_workers",
    "file_batches",
    "image_sizes",
    "report_unreadable",
]

#: Decode errors that mean "this file is not a readable image" (PIL raises all of these on bad input).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def default_workers() -> int:
    """DataLoader worker processes for decoding: one per CPU core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def decode_image(path: str | os.PathLike[str], size: int) -> tuple[np.ndarray, int]:
    """Decode ``path`` to RGB uint8 ``[3, size, size]``: EXIF orientation applied, shorter side
    resized to ``size`` (bilinear, antialiased), centre crop. Also returns the original shorter side.

    Raises OSError (or another of PIL's errors) when the file is not a readable image.
    """
    with Image.open(path) as im:
        short = min(im.size)
        im.draft("RGB", (size, size))  # JPEG: let the decoder downscale by 1/2..1/8, keeping >= size
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I"):  # 16-bit (or 32-bit int) grey: convert("RGB") would clip at 255
            im = Image.fromarray((np.asarray(im, dtype=np.float64).clip(0, 65535) / 257).round().astype(np.uint8))
        with warnings.catch_warnings():  # palette images with transparency warn on convert
            warnings.simplefilter("ignore")
            im = im.convert("RGB")
        w, h = im.size
        if short != size:
            w, h = max(size, round(w * size / short)), max(size, round(h * size / short))
            im = im.resize((w, h), Image.Resampling.BILINEAR)
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im).transpose(2, 0, 1).copy(), short


@dataclass(frozen=True)
class ImageFiles:
    """Image file paths with int64 labels (-1 = unlabeled)."""

    paths: tuple[str, ...]
    labels: Tensor

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: Tensor) -> "ImageFiles":
        """The entries where boolean ``keep`` is true."""
        return self.take(keep.nonzero().flatten())

    def take(self, index: Tensor | slice) -> "ImageFiles":
        """The entries at ``index`` (int64 indices or a slice), in that order."""
        if isinstance(index, slice):
            return ImageFiles(self.paths[index], self.labels[index])
        return ImageFiles(tuple(self.paths[i] for i in index.tolist()), self.labels[index])


class DecodedImages(Dataset):
    """``files[index[i]]`` decoded to ``(uint8 [3, S, S], label, broken, short_side)`` (``index``
    defaults to every file, in order).

    ``broken`` is -1 when the file decoded, else its position in ``files``, so the main process can
    count, report or refuse it. A broken file is replaced by the next decodable one of ``index`` when
    ``substitute`` (so training batches keep their size), else by zeros. ``short_side`` is the original
    image's shorter side (0 for a broken file without substitute).
    """

    max_substitutes = 32

    def __init__(self, files: ImageFiles, size: int, substitute: bool = True, index: Tensor | None = None) -> None:
        self.files = files
        self.size = size
        self.substitute = substitute
        self.index = torch.arange(len(files)) if index is None else index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int, int]:
        n = len(self.index)
        for step in range(min(n, self.max_substitutes) if self.substitute else 1):
            k = int(self.index[(i + step) % n])
            try:
                image, short = decode_image(self.files.paths[k], self.size)
            except _DECODE_ERRORS:
                continue
            return torch.from_numpy(image), int(self.files.labels[k]), (int(self.index[i]) if step else -1), short
        k = int(self.index[i])
        if not self.substitute:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), int(self.files.labels[k]), k, 0
        raise DatasetError(
            f"{min(n, self.max_substitutes)} image files in a row from {self.files.paths[k]} cannot be decoded; "
            "check the folder (are these images?)"
        )


class _ImageHeaders(Dataset):
    """``(width, height)`` of each file from its header alone, (-1, -1) when it is not an image."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        try:
            with Image.open(self.paths[i]) as im:
                return torch.tensor(im.size)
        except _DECODE_ERRORS:
            return torch.tensor([-1, -1])


def image_sizes(paths: Sequence[str], workers: int) -> Tensor:
    """int64 ``[N, 2]``: each file's ``(width, height)`` from its header alone (fast, no decoding),
    ``(-1, -1)`` when it is not an image."""
    if not paths:
        return torch.empty(0, 2, dtype=torch.int64)
    return torch.cat(list(file_batches(_ImageHeaders(paths), workers, batch_size=512)))


def file_batches(dataset: Dataset, workers: int, batch_size: int = 256, **options) -> DataLoader:
    """A DataLoader over ``dataset`` decoding in ``workers`` processes (0: in this process)."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, **options)


def decode_failure(path: str, size: int) -> str:
    """Why ``path`` cannot be decoded, as one line (re-decodes it in this process)."""
    try:
        decode_image(path, size)
    except _DECODE_ERRORS as err:
        return _brief(err).replace(f" '{path}'", "").replace(f" {path}", "")
    return "it decoded on a second try (flaky storage?)"


#: How many unreadable files ``--strict-data`` names (with their reasons) before counting the rest.
STRICT_LISTED = 3


def report_unreadable(paths: Sequence[str], total: int, where: str, size: int, strict: bool, layout: str = "") -> None:
    """Warn about (or with ``strict`` refuse) the unreadable image files ``paths`` out of ``total``;
    ``layout`` (the expected folder layout) ends the message when none is readable."""
    if not paths:
        return
    example = f"{paths[0]}: {decode_failure(paths[0], size)}"
    if len(paths) == total:
        raise DatasetError(f"none of the {total} files under {where} is a readable image (e.g. {example})"
                           + (f"; {layout}" if layout else ""))
    if strict:
        first = "; ".join(f"{p}: {decode_failure(p, size)}" for p in paths[:STRICT_LISTED])
        more = f"; and {len(paths) - STRICT_LISTED} more" if len(paths) > STRICT_LISTED else ""
        raise DatasetError(
            f"{len(paths)} of {total} files under {where} are not readable images ({first}{more}); "
            "remove or replace them, or drop --strict-data to skip them"
        )
    warn(
        f"skipped {len(paths)} of {total} files under {where} that are not readable images "
        f"(e.g. {example}); --strict-data makes this an error"
    )




# --------------------------------------------------------------------------- streamed split


def _collate_decoded(items: list, drop_unreadable: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Batch :class:`DecodedImages` items (in the worker) as ``(images, labels, unreadable)``: the
    positions of the files that failed, whose images are dropped with ``drop_unreadable``."""
    images, labels, broken, _ = default_collate(items)
    failed = broken >= 0
    if drop_unreadable and bool(failed.any()):
        images, labels = images[~failed], labels[~failed]
    return images, labels, broken[failed]


class FileSplit(Split):
    """Image ``files`` decoded at ``size`` pixels on every pass, by DataLoader workers (see
    :class:`~amcl.data.splits.Split`). Loader batches are ``(images, labels, unreadable)``."""

    streamed = True

    def __init__(self, files: ImageFiles, size: int) -> None:
        self.files, self.size = files, size

    @property
    def labels(self) -> Tensor:
        return self.files.labels

    @property
    def paths(self) -> tuple[str, ...]:
        return self.files.paths

    def images(self, index: Tensor, workers: int = 0) -> Tensor:
        decoded = [images for images, _ in self.batches(256, torch.device("cpu"), index, workers=workers)]
        return torch.cat(decoded) if decoded else torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8)

    def loader(self, batch_size: int, index: Tensor | None = None, *, workers: int = 0,
               replace_unreadable: bool = False, **options: Any) -> DataLoader:
        decoded = DecodedImages(self.files, self.size, substitute=replace_unreadable, index=index)
        collate = partial(_collate_decoded, drop_unreadable=not replace_unreadable)
        return file_batches(decoded, workers, batch_size, collate_fn=collate, **options)

    def before_transfer(self, batch: tuple[Tensor, Tensor, Tensor],
                        on_unreadable: UnreadableHandler | None = None) -> tuple[Tensor, Tensor]:
        images, labels, unreadable = batch
        if len(unreadable) and on_unreadable is not None:
            on_unreadable([self.files.paths[i] for i in unreadable.tolist()])
        return images, labels

    def after_transfer(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return batch
