"""Builders shared by the test modules (import them with ``from builders import ...``; pytest puts tests/ on
sys.path, see conftest.py).

* Tiny runs on the bundled digits: :data:`TINY_DIGITS`, :func:`tiny_options`, :func:`tiny_config` and, for the
  command line, :func:`cli_args` and :func:`tiny_argv`. A module states only what its runs do differently.
* Written-out formulas the loss tests compare against: :func:`cos`, :func:`reference_omega`, and
  :class:`amcl.profiling.LargestTensor`.
* Tiny data sets in their real distributed formats (CIFAR-10/100 pickles, STL-10 binaries, their archives).
"""

from __future__ import annotations

import io
import math
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amcl.config import PretrainConfig
from amcl.profiling import LargestTensor  # noqa: F401  (the largest tensor an op makes; the benchmarks use it too)

# --------------------------------------------------------------------------- tiny runs on the bundled digits

# 1438 training images: 11 drop_last batches of 128 per epoch; small_cnn at 16 px trains in seconds on a CPU.
TINY_DIGITS: dict[str, Any] = dict(dataset="digits", backbone="small_cnn", image_size=16, batch_size=128, knn_k=20,
                                   progress=False)
# SimSiam's and Barlow Twins' 2048-wide default heads are slow here and make a 200 MB checkpoint
SMALL_HEADS: dict[str, Any] = dict(proj_hidden=64, proj_dim=32)


def tiny_options(**overrides: Any) -> dict[str, Any]:
    """:data:`TINY_DIGITS` with ``overrides``; an override of ``None`` drops the option (its default applies)."""
    options = {**TINY_DIGITS, **overrides}
    return {name: value for name, value in options.items() if value is not None}


def tiny_config(**overrides: Any) -> PretrainConfig:
    """The :class:`PretrainConfig` of :func:`tiny_options` (not resolved)."""
    return PretrainConfig(**tiny_options(**overrides))


def cli_args(options: dict[str, Any] | None = None, **more: Any) -> list[str]:
    """Config options as ``amcl`` command-line arguments: ``image_size=16`` -> ``--image-size 16``,
    ``amcl=True`` -> ``--amcl``, ``progress=False`` -> ``--no-progress``; ``None`` leaves an option out."""
    args: list[str] = []
    for name, value in {**(options or {}), **more}.items():
        flag = name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            args += [f"--{flag}", str(value)]
    return args


def tiny_argv(**overrides: Any) -> list[str]:
    """:func:`tiny_options` as command-line arguments."""
    return cli_args(tiny_options(**overrides))


# --------------------------------------------------------------------------- written-out formulas


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two vectors, as a Python float (no gradient)."""
    a, b = a.detach(), b.detach()
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def reference_omega(tau: float, dim: int) -> float:
    """The temperature regulariser Omega(tau) = d/2 log tau + 1/tau."""
    return dim / 2 * math.log(tau) + 1 / tau


# --------------------------------------------------------------------------- data sets in their real formats

CIFAR10_NAMES = [f"class{i}" for i in range(10)]
CIFAR100_NAMES = [f"fine{i}" for i in range(100)]


class _Py2Pickler(pickle._Pickler):  # type: ignore[misc,name-defined]
    """Writes str/bytes as Python 2 ``str`` (BINSTRING), like the original CIFAR files."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_str8(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_str8
    dispatch[str] = _save_str8


def py2_dumps(obj: object) -> bytes:
    """Pickle like Python 2 + numpy 1.x did: protocol 2, byte strings, numpy.core globals."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def py3_dumps(obj: object) -> bytes:
    """Pickle with the Python 3 pickler at protocol 2 (bytes become _codecs.encode calls)."""
    return pickle.dumps(obj, protocol=2)


def ramp_image() -> np.ndarray:
    """A [3, 32, 32] image: red = horizontal ramp (x), green = vertical ramp (y), blue = 7."""
    img = np.zeros((3, 32, 32), dtype=np.uint8)
    img[0] = np.arange(32, dtype=np.uint8)[None, :] * 8
    img[1] = np.arange(32, dtype=np.uint8)[:, None] * 4
    img[2] = 7
    return img


def batch_images(n: int, seed: int) -> np.ndarray:
    imgs = np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    imgs[0] = ramp_image()
    return imgs


def write_pickle(path: Path, obj: object, dumps=py2_dumps) -> None:
    path.write_bytes(dumps(obj))


Arrays = tuple[np.ndarray, list[int], np.ndarray, list[int]]


def make_cifar10(root: Path, dumps=py2_dumps) -> Arrays:
    """Write cifar-10-batches-py/ with 5 train batches of 4 images and a test batch of 3."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        x = batch_images(4, i)
        y = [(i + k) % 10 for k in range(4)]
        batch = {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": y,
            b"data": x.reshape(4, 3072),
            b"filenames": [f"img_{i}_{k}.png".encode() for k in range(4)],
        }
        write_pickle(folder / f"data_batch_{i}", batch, dumps)
        train_x.append(x)
        train_y += y
    test_x, test_y = batch_images(3, 99), [9, 0, 5]
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": test_y}
    test[b"data"] = test_x.reshape(3, 3072)
    write_pickle(folder / "test_batch", test, dumps)
    names = [n.encode() for n in CIFAR10_NAMES]
    meta = {b"num_cases_per_batch": 4, b"label_names": names, b"num_vis": 3072}
    write_pickle(folder / "batches.meta", meta, dumps)
    return np.concatenate(train_x), train_y, test_x, test_y


def make_cifar100(root: Path) -> Arrays:
    """Write cifar-100-python/ with coarse labels deliberately different from fine labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    train_x, train_y = batch_images(6, 1), [0, 42, 99, 7, 63, 15]
    test_x, test_y = batch_images(2, 2), [88, 3]
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        d = {
            b"filenames": [b"f.png"] * len(y),
            b"batch_label": name.encode(),
            b"fine_labels": y,
            b"coarse_labels": [(v + 1) % 20 for v in y],
            b"data": x.reshape(len(y), 3072),
        }
        write_pickle(folder / name, d)
    meta = {
        b"fine_label_names": [n.encode() for n in CIFAR100_NAMES],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    write_pickle(folder / "meta", meta)
    return train_x, train_y, test_x, test_y


def make_archive(folder: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)

def stl_images(n: int, seed: int) -> np.ndarray:
    """Upright [n, 3, 96, 96] images; image 0 has only pixel (y=0, x=5) bright in channel 1."""
    imgs = np.random.default_rng(seed).integers(0, 200, (n, 3, 96, 96), dtype=np.uint8)
    imgs[0] = 0
    imgs[0, 1, 0, 5] = 255
    return imgs


def write_stl_x(path: Path, upright: np.ndarray) -> None:
    """Write images column-major per channel, as the real STL-10 binaries are stored."""
    path.write_bytes(np.ascontiguousarray(upright.transpose(0, 1, 3, 2)).tobytes())


def make_stl10(root: Path) -> dict[str, np.ndarray]:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    data = {
        "train_X": stl_images(4, 1),
        "train_y": np.array([1, 10, 3, 5], dtype=np.uint8),
        "test_X": stl_images(3, 2),
        "test_y": np.array([2, 2, 10], dtype=np.uint8),
        "unlabeled_X": stl_images(2, 3),
    }
    for name, arr in data.items():
        if name.endswith("_X"):
            write_stl_x(folder / f"{name}.bin", arr)
        else:
            arr.tofile(folder / f"{name}.bin")
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return data



# --------------------------------------------------------------------------- the MNIST family's IDX files


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> None:
    """``array`` (uint8) as an IDX file: magic 00 00 08 <ndim>, big-endian sizes, the bytes; gzipped when
    ``compress`` (default: when the name ends in .gz)."""
    import gzip

    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress if compress is not None else path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_idx_dataset(folder: Path, train_per_class: int = 6, test_per_class: int = 2, classes: int = 10,
                     gz: bool = True) -> dict[str, np.ndarray]:
    """The four files of a tiny MNIST-family dataset (28x28 uint8, each class a brightness level) in ``folder``."""
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for split, per_class, stem in (("train", train_per_class, "train"), ("test", test_per_class, "t10k")):
        labels = np.repeat(np.arange(classes, dtype=np.uint8), per_class)
        rng.shuffle(labels)
        images = (labels[:, None, None].astype(np.int64) * 25 + rng.integers(0, 20, (len(labels), 28, 28)))
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images.astype(np.uint8), labels
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", arrays[f"{split}_images"])
        write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", labels)
    return arrays
