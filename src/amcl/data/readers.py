"""Readers for CIFAR-10, CIFAR-100 and STL-10 in their distributed on-disk formats.

Every reader returns an :class:`ImageSplits` of uint8 ``[N, C, H, W]`` images and
int64 labels. Bad input raises :class:`DatasetError`, whose one-line message names
the problem and the fix, so a command-line tool can print it without a traceback.

CIFAR files are Python pickles. Pickle can execute code, so they are loaded with
:class:`_RestrictedUnpickler`, which only resolves the few globals numpy arrays need.
"""

from __future__ import annotations

import codecs
import io
import math
import os
import pickle
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
import torch

from amcl.data.splits import ImageSplits
from amcl.errors import AmclError

__all__ = ["DatasetError", "ImageSplits", "read_cifar10", "read_cifar100", "read_stl10"]


class DatasetError(AmclError):
    """A user-facing data error; its message is one line naming the problem and the fix."""


def _brief(err: BaseException) -> str:
    """``err`` as one short line, for embedding in a DatasetError message."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------- pickles

_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's _reconstruct, whatever module it lives in
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise DatasetError(
                f"refusing to unpickle {module}.{name}: not a CIFAR data file"
            ) from None


def _unpickle(stream: BinaryIO, where: str) -> dict[str, Any]:
    """Load a CIFAR pickle safely; return it as a dict with str keys."""
    try:
        obj = _RestrictedUnpickler(stream, encoding="bytes").load()
    except DatasetError as err:
        raise DatasetError(f"{where}: {err}; replace it with the original file") from None
    except Exception as err:  # pickle may raise almost anything on corrupt input
        raise DatasetError(
            f"{where} is not a valid CIFAR pickle ({type(err).__name__}: {_brief(err)}); "
            "re-download or re-extract the dataset"
        ) from None
    if not isinstance(obj, dict):
        raise DatasetError(
            f"{where} holds a {type(obj).__name__}, not a CIFAR dict; re-download it"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


# --------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class _CifarSpec:
    name: str
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    layout: str  # the file set, as shown in messages

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)

    def expected(self) -> str:
        return f"expected <root>/{self.folder}/{self.layout} or <root>/{self.archive}"


_CIFAR10 = _CifarSpec(
    name="CIFAR-10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    layout="{data_batch_1..5,test_batch,batches.meta}",
)
_CIFAR100 = _CifarSpec(
    name="CIFAR-100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    layout="{train,test,meta}",
)


def _load_cifar_dicts(spec: _CifarSpec, root: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Find the dataset under ``root`` (folder, parent or archive) and unpickle its files."""
    path = Path(root)
    if not path.exists():
        raise DatasetError(f"{spec.name} path {path} does not exist; {spec.expected()}")
    if path.is_dir():
        if (path / spec.folder).is_dir():
            path = path / spec.folder
        elif (path / spec.archive).is_file():
            path = path / spec.archive
    if path.is_file():
        return _load_cifar_archive(spec, path)
    missing = [f for f in spec.files if not (path / f).is_file()]
    if missing:
        raise DatasetError(
            f"{spec.name} folder {path} is missing {', '.join(missing)}; {spec.expected()}"
        )
    out: dict[str, dict[str, Any]] = {}
    for fname in spec.files:
        try:
            with open(path / fname, "rb") as f:
                out[fname] = _unpickle(f, f"{spec.name} file {path / fname}")
        except OSError as err:
            raise DatasetError(
                f"cannot read {path / fname} ({_brief(err)}); check its permissions"
            ) from None
    return out


def _load_cifar_archive(spec: _CifarSpec, archive: Path) -> dict[str, dict[str, Any]]:
    """Unpickle the dataset files straight out of a (gzipped) tar archive, in one pass."""
    wanted = set(spec.files)
    raw: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                base = PurePosixPath(member.name).name
                if member.isfile() and base in wanted and base not in raw:
                    f = tar.extractfile(member)
                    if f is not None:
                        raw[base] = f.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DatasetError(
            f"{spec.name} archive {archive} is truncated or corrupt ({_brief(err)}); "
            f"re-download {spec.archive}"
        ) from None
    missing = [f for f in spec.files if f not in raw]
    if missing:
        raise DatasetError(
            f"{spec.name} archive {archive} lacks {', '.join(missing)}; {spec.expected()}"
        )
    return {
        f: _unpickle(io.BytesIO(raw.pop(f)), f"{spec.name} file {f} in {archive}")
        for f in spec.files
    }


def _cifar_batch(
    d: Mapping[str, Any], spec: _CifarSpec, fname: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate one unpickled batch; return images ``[N, 3, 32, 32]`` and labels ``[N]``."""
    where = f"{spec.name} file {fname}"
    for key in ("data", spec.label_key):
        if key not in d:
            raise DatasetError(
                f"{where} has no {key!r} entry; it is not a {spec.name} batch, re-download it"
            )
    data, labels = d["data"], d[spec.label_key]
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] != 3072:
        side = math.isqrt(data.shape[1] // 3)
        if 3 * side * side == data.shape[1]:  # e.g. the 64x64 "downsampled ImageNet" pickles
            raise DatasetError(
                f"{where} holds {side}x{side} images ({data.shape[1]} values per row), but {spec.name} images "
                f"are 32x32 (3072); this is not {spec.name}: use --dataset folder for images of other sizes"
            )
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        shape = getattr(data, "shape", None)
        raise DatasetError(
            f"{where}: 'data' is {type(data).__name__} {shape}, expected uint8 [N, 3072]; "
            "re-download it"
        )
    try:
        lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DatasetError(
            f"{where}: {spec.label_key!r} is not a list of integers; re-download it"
        ) from None
    if len(lab) != len(data):
        raise DatasetError(f"{where} has {len(data)} images but {len(lab)} labels; re-download it")
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise DatasetError(
            f"{where} has labels outside 0..{num_classes - 1} "
            f"(found {lab.min()}..{lab.max()}); re-download it"
        )
    return data.reshape(-1, 3, 32, 32), lab


def _read_cifar(spec: _CifarSpec, root: str | os.PathLike[str]) -> ImageSplits:
    dicts = _load_cifar_dicts(spec, root)
    names = dicts[spec.meta_file].get(spec.names_key)
    if not (isinstance(names, (list, tuple)) and names
            and all(isinstance(n, (bytes, str)) for n in names)):
        raise DatasetError(
            f"{spec.name} file {spec.meta_file} has no valid {spec.names_key!r} list; "
            "re-download it"
        )
    classes = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)
    train = [_cifar_batch(dicts[f], spec, f, len(classes)) for f in spec.train_files]
    test_x, test_y = _cifar_batch(dicts[spec.test_file], spec, spec.test_file, len(classes))
    return ImageSplits(
        name=spec.name,
        train_images=torch.from_numpy(np.concatenate([x for x, _ in train])),
        train_labels=torch.from_numpy(np.concatenate([y for _, y in train])),
        test_images=torch.from_numpy(np.ascontiguousarray(test_x)),
        test_labels=torch.from_numpy(test_y),
        classes=classes,
    )


def read_cifar10(root: str | os.PathLike[str]) -> ImageSplits:
    """Read CIFAR-10 (python version) from ``cifar-10-batches-py/``, its parent or the .tar.gz."""
    return _read_cifar(_CIFAR10, root)


def read_cifar100(root: str | os.PathLike[str]) -> ImageSplits:
    """Read CIFAR-100 (python version, fine labels) from ``cifar-100-python/``, its parent
    or the .tar.gz."""
    return _read_cifar(_CIFAR100, root)


# --------------------------------------------------------------------------- STL-10

_STL_FOLDER = "stl10_binary"
_STL_SHAPE = (3, 96, 96)
_STL_IMAGE_BYTES = 3 * 96 * 96  # 27648
_STL_LAYOUT = (
    f"expected <root>/{_STL_FOLDER}/{{train_X.bin,train_y.bin,test_X.bin,test_y.bin,"
    "class_names.txt[,unlabeled_X.bin]} (extract stl10_binary.tar.gz first)"
)


def _stl_count(path: Path) -> int:
    """Number of images in an STL-10 ``*_X.bin`` file, checking its size."""
    size = path.stat().st_size
    if size == 0 or size % _STL_IMAGE_BYTES:
        raise DatasetError(
            f"STL-10 file {path} has {size} bytes, not a positive multiple of {_STL_IMAGE_BYTES} "
            "(3x96x96); it is truncated, re-extract stl10_binary.tar.gz"
        )
    return size // _STL_IMAGE_BYTES


def _stl_images_into(path: Path, out: np.ndarray) -> None:
    """Copy the column-major images of ``path`` into ``out`` ``[N, 3, 96, 96]``, upright."""
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=(len(out), *_STL_SHAPE))
    np.copyto(out, mm.transpose(0, 1, 3, 2))  # stored as [c, x, y]; swap to [c, y, x]
    del mm


def _stl_labels(path: Path, count: int, num_classes: int) -> np.ndarray:
    """Read 1-based uint8 labels and return them 0-based, checking count and range."""
    lab = np.fromfile(path, dtype=np.uint8)
    if len(lab) != count:
        raise DatasetError(
            f"STL-10 file {path} has {len(lab)} labels but its images file has {count} images; "
            "re-extract stl10_binary.tar.gz"
        )
    if lab.min() < 1 or lab.max() > num_classes:
        raise DatasetError(
            f"STL-10 file {path} has labels outside 1..{num_classes} "
            f"(found {lab.min()}..{lab.max()}); re-extract stl10_binary.tar.gz"
        )
    return lab.astype(np.int64) - 1


def read_stl10(root: str | os.PathLike[str], include_unlabeled: bool = False) -> ImageSplits:
    """Read STL-10 (binary version) from ``stl10_binary/`` or its parent.

    With ``include_unlabeled`` the 100k unlabeled images are appended to the
    training images with label -1.
    """
    path = Path(root)
    if not path.exists():
        raise DatasetError(f"STL-10 path {path} does not exist; {_STL_LAYOUT}")
    if path.is_file():
        raise DatasetError(f"STL-10 path {path} is a file, not a folder; {_STL_LAYOUT}")
    if (path / _STL_FOLDER).is_dir():
        path = path / _STL_FOLDER
    files = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"]
    files += ["unlabeled_X.bin"] if include_unlabeled else []
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise DatasetError(f"STL-10 folder {path} is missing {', '.join(missing)}; {_STL_LAYOUT}")
    try:
        text = (path / "class_names.txt").read_text(encoding="utf-8", errors="replace")
        classes = tuple(s.strip() for s in text.splitlines() if s.strip())
        if not classes:
            raise DatasetError(
                f"STL-10 file {path / 'class_names.txt'} is empty; re-extract stl10_binary.tar.gz"
            )
        n_train, n_test = _stl_count(path / "train_X.bin"), _stl_count(path / "test_X.bin")
        n_unl = _stl_count(path / "unlabeled_X.bin") if include_unlabeled else 0
        train_y = _stl_labels(path / "train_y.bin", n_train, len(classes))
        test_y = _stl_labels(path / "test_y.bin", n_test, len(classes))
        train_x = torch.empty((n_train + n_unl, *_STL_SHAPE), dtype=torch.uint8)
        test_x = torch.empty((n_test, *_STL_SHAPE), dtype=torch.uint8)
        _stl_images_into(path / "train_X.bin", train_x.numpy()[:n_train])
        if n_unl:
            _stl_images_into(path / "unlabeled_X.bin", train_x.numpy()[n_train:])
        _stl_images_into(path / "test_X.bin", test_x.numpy())
    except OSError as err:
        raise DatasetError(
            f"cannot read STL-10 file {err.filename} ({_brief(err)}); check the files"
        ) from None
    train_labels = np.concatenate([train_y, np.full(n_unl, -1, dtype=np.int64)])
    return ImageSplits(
        name="STL-10",
        train_images=train_x,
        train_labels=torch.from_numpy(train_labels),
        test_images=test_x,
        test_labels=torch.from_numpy(test_y),
        classes=classes,
    )
