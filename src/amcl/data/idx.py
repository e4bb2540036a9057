"""Fashion-MNIST, MNIST and KMNIST from their standard IDX files.

Each dataset is four files, plain or gzipped, as distributed::

    train-images-idx3-ubyte[.gz]   train-labels-idx1-ubyte[.gz]   (60,000 images)
    t10k-images-idx3-ubyte[.gz]    t10k-labels-idx1-ubyte[.gz]    (10,000 images)

An IDX file is a big-endian header (two zero bytes, a type code, the number of dimensions, one 4-byte
size per dimension) followed by the values; images are ``0x08`` (unsigned byte) with 3 dimensions
(count, rows, columns), labels ``0x08`` with 1. The files are looked for in ``--data-root`` itself, in
the layout other tools leave (``<root>/FashionMNIST/raw/``, ``<root>/MNIST/raw/``, ``<root>/KMNIST/raw/``,
also with ``<root>`` being the ``raw`` folder's parent), and, for Fashion-MNIST without ``--data-root``,
where the Debian/Ubuntu package ``dataset-fashion-mnist`` installs them
(``/usr/share/datasets/fashion-mnist``). Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from amcl.data.readers import DatasetError, _brief
from amcl.data.splits import ImageSplits

__all__ = ["IDX_DATASETS", "FASHION_MNIST_SYSTEM_PATH", "find_idx_folder", "read_idx", "read_idx_dataset"]

#: Where ``apt-get install dataset-fashion-mnist`` puts the four files.
FASHION_MNIST_SYSTEM_PATH = Path("/usr/share/datasets/fashion-mnist")

#: The IDX value type codes a reader accepts: unsigned bytes only (what the MNIST family holds).
_UNSIGNED_BYTE = 0x08


@dataclass(frozen=True)
class IdxDataset:
    """One dataset of the MNIST family: its name, the sub-folder other tools keep it in, its classes."""

    name: str
    title: str
    folder: str  # <root>/<folder>/raw/ in the layout of other tools
    classes: tuple[str, ...]
    system_path: Path | None = None  # where a system package installs it


IDX_DATASETS = {
    "fashion_mnist": IdxDataset(
        "fashion_mnist", "Fashion-MNIST", "FashionMNIST",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        FASHION_MNIST_SYSTEM_PATH,
    ),
    "mnist": IdxDataset("mnist", "MNIST", "MNIST", tuple(str(d) for d in range(10))),
    "kmnist": IdxDataset("kmnist", "KMNIST", "KMNIST", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
}

_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_EXPECTED = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte " \
            "(each plain or .gz)"


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _candidates(spec: IdxDataset, root: Path | None) -> list[Path]:
    if root is None:
        return [spec.system_path] if spec.system_path is not None else []
    return [root, root / spec.folder / "raw", root / "raw", root / spec.folder]


def find_idx_folder(name: str, root: str | os.PathLike[str] | None) -> Path:
    """The folder holding dataset ``name``'s four IDX files (see the module docstring), or a
    :class:`DatasetError` saying where they were looked for and how to get them."""
    spec = IDX_DATASETS[name]
    base = None if root is None else Path(root).expanduser()
    if base is not None and not base.exists():
        raise DatasetError(f"{spec.title} path {base} does not exist; give the folder holding {_EXPECTED}")
    for folder in _candidates(spec, base):
        if _file_in(folder, _FILES["train_images"]) is not None:
            return folder
    if base is None:
        where = spec.system_path
        raise DatasetError(
            f"{spec.title} is not installed at {where}; install it with `sudo apt-get install dataset-fashion-mnist`"
            f" (Debian/Ubuntu; or `make fashion-mnist`), or give --data-root DIR holding {_EXPECTED}"
            if spec.system_path is not None else f"--dataset {name} needs --data-root DIR holding {_EXPECTED}")
    looked = ", ".join(str(p) for p in _candidates(spec, base))
    raise DatasetError(f"no {spec.title} files in {looked}; expected {_EXPECTED}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # a truncated or corrupt gzip stream
        raise DatasetError(f"cannot read {path} ({_brief(err)}); it is truncated or corrupt: download it "
                           "again") from None


def read_idx(path: str | os.PathLike[str], dimensions: int) -> np.ndarray:
    """The uint8 array in the IDX file ``path`` (plain or gzipped), checked to have ``dimensions``
    dimensions and exactly the bytes its header announces."""
    p = Path(path)
    data = _read_bytes(p)
    fix = "download it again, or point --data-root at the original files"
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{p} is not an IDX file (its first bytes are {data[:4].hex() or 'missing'}, not "
                           f"00 00 08 0{dimensions}); {fix}")
    kind, ndim = data[2], data[3]
    if kind != _UNSIGNED_BYTE or ndim != dimensions:
        raise DatasetError(f"{p} has the wrong IDX magic number 0x{int.from_bytes(data[:4], 'big'):08x} (expected "
                           f"0x0000080{dimensions}: unsigned bytes in {dimensions} dimension(s)); is it the "
                           f"{'images' if dimensions == 3 else 'labels'} file? {fix}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{p} is truncated inside its header ({len(data)} bytes); {fix}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise DatasetError(f"{p} has {len(data)} bytes, but its header announces {'x'.join(map(str, shape))} values "
                           f"({expected} bytes): it is {'truncated' if len(data) < expected else 'too long'}; {fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _split(folder: Path, split: str, spec: IdxDataset) -> tuple[torch.Tensor, torch.Tensor]:
    paths = {}
    for part in ("images", "labels"):
        found = _file_in(folder, _FILES[f"{split}_{part}"])
        if found is None:
            raise DatasetError(f"{spec.title} folder {folder} is missing {_FILES[f'{split}_{part}']}[.gz]; expected "
                               f"{_EXPECTED}")
        paths[part] = found
    images, labels = read_idx(paths["images"], 3), read_idx(paths["labels"], 1)
    if len(images) != len(labels):
        raise DatasetError(f"{paths['images']} holds {len(images)} images but {paths['labels']} {len(labels)} labels;"
                           " the two files belong to different downloads: download them again")
    if len(labels) and int(labels.max()) >= len(spec.classes):
        raise DatasetError(f"{paths['labels']} has label {int(labels.max())}; {spec.title} has "
                           f"{len(spec.classes)} classes (0-{len(spec.classes) - 1}): is it another dataset's file?")
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))


def read_idx_dataset(name: str, root: str | os.PathLike[str] | None = None) -> ImageSplits:
    """Dataset ``name`` (a key of :data:`IDX_DATASETS`) as uint8 ``[N, 1, 28, 28]`` images with its
    standard train (60,000) and test (10,000) splits."""
    spec = IDX_DATASETS[name]
    folder = find_idx_folder(name, root)
    train_images, train_labels = _split(folder, "train", spec)
    test_images, test_labels = _split(folder, "test", spec)
    return ImageSplits(spec.name, train_images, train_labels, test_images, test_labels, spec.classes)
