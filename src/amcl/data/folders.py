"""Image folders: ImageNet-style ``train/<class>/`` and ``val/<class>/`` trees of JPEG/PNG files of any size.

Layouts (``root`` is ``--data-root``)::

    root/train/<class>/**/*.jpg|png|...   labelled training images (required for labels)
    root/val/<class>/...  or root/test/   labelled held-out images (the kNN monitor's queries)
    root/unlabeled/**/*                   extra images for pre-training only (with ``unlabeled=True``)
    root/**/*  (no train/ folder)         an unlabeled folder: pre-training only, no kNN monitor

Every image is decoded to RGB, its shorter side resized to ``image_size`` and the centre
cropped to a square, giving fixed-size uint8 ``[3, S, S]`` tensors that batch and augment on
the training device. Decoding runs in DataLoader worker processes; a small folder is decoded
once and held in memory (``cache="auto"``), a large one every epoch.

A file that cannot be decoded is skipped with a :class:`~amcl.errors.AmclWarning` giving the
count and an example, or raises :class:`~amcl.data.readers.DatasetError` when ``strict``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from amcl.data.images import (
    DecodedImages,
    FileSplit,
    ImageFiles,
    decode_image,
    default_workers,
    file_batches,
    image_sizes,
    report_unreadable,
)
from amcl.data.readers import DatasetError, _brief
from amcl.data.splits import ImageSplits
from amcl.errors import warn

__all__ = [
    "FOLDER_LAYOUT",
    "FolderSplits",
    "ImageFiles",
    "DecodedImages",
    "decode_image",
    "default_workers",
    "read_image_folder",
    "read_class_list",
]

FOLDER_LAYOUT = (
    "expected <root>/train/<class>/<images> and <root>/val/<class>/<images> (or test/), optionally "
    "<root>/unlabeled/<images> for --unlabeled; a folder of images without train/ is used unlabeled"
)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
#: ``cache="auto"`` keeps decoded images in memory up to this many bytes (and a quarter of the RAM).
CACHE_LIMIT_BYTES = 8 << 30


# --------------------------------------------------------------------------- layout


def _visible(entries: Iterator[os.DirEntry]) -> list[os.DirEntry]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _within(path: str, folder: str) -> bool:
    """Whether the real path ``path`` is ``folder`` or below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class _Scan:
    """One scan of an image folder (``root``, the --data-root): the symbolic links it did not follow."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.skipped_links: list[tuple[str, str]] = []

    def files_under(self, folder: Path) -> list[str]:
        """Every non-hidden file below ``folder`` (recursively, sorted); hidden files and folders skipped.

        A folder reached again through a symbolic link (a loop, or a second link to it) is read once, and a
        link to a folder above ``folder`` or elsewhere in the data root (another class or split) is not
        followed: its images would be read again under this folder's label (:meth:`warn_about_links`). A link
        that cannot be resolved (missing target, a loop of links) is kept as a file, so that decoding
        reports it like an unreadable image."""
        out: list[str] = []
        stack = [folder]
        seen: set[tuple[int, int]] = set()
        real_folder = os.path.realpath(folder)
        while stack:
            current = stack.pop()
            try:
                info = current.stat()
                if (info.st_dev, info.st_ino) in seen:
                    continue
                seen.add((info.st_dev, info.st_ino))
                with os.scandir(current) as it:
                    entries = _visible(it)
            except OSError as err:  # e.g. a link to a missing folder, or no permission
                raise DatasetError(f"cannot read the image folder {current} ({_brief(err)}); fix or remove it") \
                    from None
            folders = []
            for entry in entries:
                try:
                    is_dir = entry.is_dir()
                except OSError:  # a loop of links: a file that cannot be read
                    is_dir = False
                if not is_dir:
                    if entry.is_symlink() or entry.is_file():
                        out.append(entry.path)
                    continue
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if _within(real_folder, target) or (_within(target, self.root)
                                                        and not _within(target, real_folder)):
                        self.skipped_links.append((entry.path, target))
                        continue
                folders.append(Path(entry.path))
            stack += reversed(folders)
        return sorted(out)

    def warn_about_links(self) -> None:
        if self.skipped_links:
            link, target = self.skipped_links[0]
            warn(f"did not follow {len(self.skipped_links)} symbolic link(s) in {self.root} to folders above them or "
                 f"elsewhere in the data (e.g. {link} -> {target}): their images would be read again under another "
                 "label; link to folders outside the data root, or copy the images")


def read_class_list(path: str | os.PathLike[str]) -> list[str]:
    """Class folder names from a text file: one per line; blank lines and ``#`` comments ignored."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"class list {p} does not exist; give a text file with one class folder name per line")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read class list {p} ({_brief(err)}); it must be a UTF-8 text file") from None
    names = [s.split("#", 1)[0].strip() for s in lines]
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise DatasetError(f"class list {p} names no classes; write one class folder name per line")
    return names


def _class_folders(split: Path, wanted: list[str] | None, scan: _Scan) -> dict[str, list[str]]:
    """The class sub-folders of ``split`` (restricted to ``wanted``) and their files."""
    with os.scandir(split) as it:
        entries = _visible(it)
    folders = {e.name: Path(e.path) for e in entries if e.is_dir()}
    stray = [e.name for e in entries if e.is_file() and Path(e.name).suffix.lower() in _IMAGE_SUFFIXES]
    if stray:
        raise DatasetError(
            f"{split} holds images outside class folders (e.g. {stray[0]}); put each class in its own "
            f"sub-folder {split}/<class>/, or point --data-root at a folder without train/ to use them unlabeled"
        )
    if not folders:
        raise DatasetError(f"{split} has no class sub-folders; {FOLDER_LAYOUT}")
    if wanted is not None:
        missing = [c for c in wanted if c not in folders]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DatasetError(
                f"the class list names {len(missing)} classes with no folder in {split}: {shown}; "
                "fix the list or the folder"
            )
        folders = {c: folders[c] for c in wanted}
    files = {name: scan.files_under(path) for name, path in sorted(folders.items())}
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise DatasetError(
            f"class folder {split / empty[0]} is empty"
            + (f" ({len(empty)} empty class folders in {split})" if len(empty) > 1 else "")
            + "; add its images or remove the folder (or leave the class out with --class-list)"
        )
    return files


def _labelled(files: dict[str, list[str]], classes: list[str]) -> ImageFiles:
    index = {c: i for i, c in enumerate(classes)}
    paths = [p for c in files for p in files[c]]
    labels = [index[c] for c in files for _ in files[c]]
    return ImageFiles(tuple(paths), torch.tensor(labels, dtype=torch.int64))


def _unlabeled(paths: list[str]) -> ImageFiles:
    return ImageFiles(tuple(paths), torch.full((len(paths),), -1, dtype=torch.int64))


def scan_image_folder(
    root: str | os.PathLike[str], class_list: str | os.PathLike[str] | None = None, unlabeled: bool = False
) -> tuple[ImageFiles, ImageFiles, tuple[str, ...]]:
    """Find the train and held-out files of an image folder (no decoding); see the module docstring."""
    path = Path(root)
    if not path.exists():
        raise DatasetError(f"image folder {path} does not exist; {FOLDER_LAYOUT}")
    if not path.is_dir():
        raise DatasetError(f"image folder path {path} is a file, not a folder; {FOLDER_LAYOUT}")
    wanted = read_class_list(class_list) if class_list else None
    scan = _Scan(path)
    train_dir = path / "train"
    if not train_dir.is_dir():
        if wanted is not None:
            raise DatasetError(f"--class-list needs labelled classes in {train_dir}/<class>/, which does not exist")
        if unlabeled:
            raise DatasetError(f"--unlabeled needs {train_dir}/<class>/ beside {path}/unlabeled/; {FOLDER_LAYOUT}")
        everything = scan.files_under(path)
        scan.warn_about_links()
        if not everything:
            raise DatasetError(f"image folder {path} holds no files; {FOLDER_LAYOUT}")
        warn(
            f"{path} has no train/ folder: its {len(everything)} files are unlabeled images, for pre-training "
            "only (no kNN monitor or evaluation); for labels use <root>/train/<class>/ and <root>/val/<class>/"
        )
        return _unlabeled(everything), _unlabeled([]), ()
    train_files = _class_folders(train_dir, wanted, scan)
    classes = list(train_files)
    held_out = next((path / name for name in ("val", "test") if (path / name).is_dir()), None)
    if held_out is None:
        test = _unlabeled([])
        warn(f"{path} has no val/ or test/ folder: no held-out labelled images, so no kNN monitor, evaluation or "
             "analysis on this dataset")
    else:
        present = _subdirs(held_out)
        test_files = _class_folders(held_out, [c for c in wanted if c in present] if wanted else None, scan)
        extra = [c for c in test_files if c not in train_files]
        if extra:
            raise DatasetError(
                f"{held_out} has class folders that {train_dir} lacks (e.g. {extra[0]}); the held-out classes must "
                "be training classes: remove them or add them to train/"
            )
        test = _labelled(test_files, classes)
    train = _labelled(train_files, classes)
    if unlabeled:
        extra_dir = path / "unlabeled"
        if not extra_dir.is_dir():
            raise DatasetError(f"--unlabeled: {extra_dir} does not exist; {FOLDER_LAYOUT}")
        more = scan.files_under(extra_dir)
        train = ImageFiles(train.paths + tuple(more), torch.cat([train.labels, _unlabeled(more).labels]))
    scan.warn_about_links()
    return train, test, tuple(classes)


def _subdirs(folder: Path) -> set[str]:
    with os.scandir(folder) as it:
        return {e.name for e in it if e.is_dir()}


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class FolderSplits:
    """An image folder decoded on the fly: the train and held-out splits are each a :class:`FileSplit`.

    ``train_labels`` / ``test_labels`` mirror :class:`ImageSplits` so callers can count and check
    labels without decoding anything.
    """

    name: str
    train: FileSplit
    test: FileSplit
    classes: tuple[str, ...]
    image_size: int
    strict: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def train_labels(self) -> Tensor:
        return self.train.labels

    @property
    def test_labels(self) -> Tensor:
        return self.test.labels


def machine_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def _drop_unreadable_headers(files: ImageFiles, where: Path, size: int, strict: bool, workers: int) -> ImageFiles:
    """Check every file's header (fast, no decoding); skip or refuse the unreadable ones."""
    if not len(files):
        return files
    sizes = image_sizes(files.paths, workers)
    ok = sizes[:, 0] >= 0
    report_unreadable([p for p, good in zip(files.paths, ok.tolist()) if not good], len(files), str(where), size,
                      strict, FOLDER_LAYOUT)
    _warn_upscaled(int((sizes[ok].min(dim=1).values < size).sum()), int(ok.sum()), where, size)
    return files.subset(ok)


def _warn_upscaled(count: int, total: int, where: Path, size: int) -> None:
    if count:
        warn(
            f"{count} of {total} images under {where} are smaller than --image-size {size} and are upscaled; "
            "a smaller --image-size keeps their detail without interpolation"
        )


def _decode_all(files: ImageFiles, where: Path, size: int, strict: bool, workers: int) -> tuple[Tensor, Tensor]:
    """Decode every file once (in worker processes) into uint8 ``[N, 3, S, S]`` and its labels."""
    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    broken = torch.empty(len(files), dtype=torch.int64)
    short = torch.empty(len(files), dtype=torch.int64)
    start = 0
    for batch_images, _, batch_broken, batch_short in file_batches(DecodedImages(files, size, False), workers):
        end = start + len(batch_images)
        images[start:end], broken[start:end], short[start:end] = batch_images, batch_broken, batch_short
        start = end
    ok = broken < 0
    report_unreadable([files.paths[i] for i in broken[~ok].tolist()], len(files), str(where), size, strict,
                      FOLDER_LAYOUT)
    _warn_upscaled(int((short[ok] < size).sum()), int(ok.sum()), where, size)
    return images[ok], files.labels[ok]


def read_image_folder(
    root: str | os.PathLike[str],
    image_size: int,
    class_list: str | os.PathLike[str] | None = None,
    unlabeled: bool = False,
    strict: bool = False,
    cache: str = "auto",
    workers: int | None = None,
) -> ImageSplits | FolderSplits:
    """Read an image folder (see the module docstring) at ``image_size`` pixels.

    ``cache``: ``"always"`` decodes every image once now and returns in-memory :class:`ImageSplits`;
    ``"never"`` checks the file headers and returns :class:`FolderSplits`, decoded every epoch by
    DataLoader workers; ``"auto"`` caches when the decoded images take at most 8 GiB and a quarter
    of the machine's memory.
    """
    if cache not in ("auto", "always", "never"):
        raise ValueError(f"cache must be auto, always or never, not {cache!r}")
    workers = default_workers() if workers is None else workers
    train, test, classes = scan_image_folder(root, class_list, unlabeled)
    name = Path(root).name or str(root)
    decoded_bytes = (len(train) + len(test)) * 3 * image_size * image_size
    if cache == "auto":
        cache = "always" if decoded_bytes <= min(CACHE_LIMIT_BYTES, machine_memory() // 4) else "never"
    elif cache == "always" and decoded_bytes > machine_memory() // 2:
        raise DatasetError(f"--cache-images always: the {len(train) + len(test)} images of {root} at {image_size} px "
                           f"take {decoded_bytes / 1e9:.1f} GB decoded, more than half of this machine's "
                           f"{machine_memory() / 1e9:.1f} GB; use --cache-images never (decode every epoch) or a "
                           "smaller --image-size")
    where = Path(root)
    if cache == "never":
        return FolderSplits(
            name,
            FileSplit(_drop_unreadable_headers(train, where, image_size, strict, workers), image_size),
            FileSplit(_drop_unreadable_headers(test, where, image_size, strict, workers), image_size),
            classes,
            image_size,
            strict,
        )
    train_x, train_y = _decode_all(train, where, image_size, strict, workers)
    test_x, test_y = _decode_all(test, where, image_size, strict, workers)
    return ImageSplits(name, train_x, train_y, test_x, test_y, classes)
