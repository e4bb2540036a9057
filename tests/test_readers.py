"""Tests for amcl.data.readers: tiny datasets written in the exact distributed formats."""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from amcl.data.readers import DatasetError, ImageSplits, read_cifar10, read_cifar100, read_stl10

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


def assert_same(a: ImageSplits, b: ImageSplits) -> None:
    assert a.name == b.name and a.classes == b.classes
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("dumps", [py2_dumps, py3_dumps], ids=["py2-pickle", "py3-pickle"])
def test_cifar10_pixels_labels_classes(tmp_path: Path, dumps) -> None:
    train_x, train_y, test_x, test_y = make_cifar10(tmp_path, dumps)
    ds = read_cifar10(tmp_path)
    assert ds.name == "CIFAR-10" and ds.classes == tuple(CIFAR10_NAMES) and ds.num_classes == 10
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (3, 3, 32, 32) and ds.test_images.dtype == torch.uint8
    assert ds.train_labels.dtype == torch.int64 and ds.train_labels.tolist() == train_y
    assert ds.test_labels.tolist() == test_y
    assert np.array_equal(ds.train_images.numpy(), train_x)
    assert np.array_equal(ds.test_images.numpy(), test_x)
    img = ds.train_images[4]  # first image of data_batch_2: the ramp
    for y, x in [(0, 0), (0, 31), (31, 0), (5, 17)]:
        assert img[0, y, x] == 8 * x  # red is a horizontal ramp
        assert img[1, y, x] == 4 * y  # green is a vertical ramp
        assert img[2, y, x] == 7


def test_cifar10_folder_parent_archive_identical(tmp_path: Path) -> None:
    make_cifar10(tmp_path / "data")
    folder = tmp_path / "data" / "cifar-10-batches-py"
    archive_dir = tmp_path / "arch"
    archive_dir.mkdir()
    make_archive(folder, archive_dir / "cifar-10-python.tar.gz")
    ref = read_cifar10(tmp_path / "data")
    assert_same(ref, read_cifar10(folder))
    assert_same(ref, read_cifar10(str(archive_dir / "cifar-10-python.tar.gz")))
    assert_same(ref, read_cifar10(archive_dir))


# --------------------------------------------------------------------------- CIFAR-100


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    train_x, train_y, test_x, test_y = make_cifar100(tmp_path)
    ds = read_cifar100(tmp_path)
    assert ds.name == "CIFAR-100" and ds.num_classes == 100 and ds.classes[42] == "fine42"
    assert ds.train_labels.tolist() == train_y and ds.test_labels.tolist() == test_y
    assert np.array_equal(ds.train_images.numpy(), train_x)
    assert np.array_equal(ds.test_images.numpy(), test_x)
    assert ds.train_images[0, 0, 3, 10] == 80 and ds.train_images[0, 1, 3, 10] == 12
    make_archive(tmp_path / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz")
    assert_same(ds, read_cifar100(tmp_path / "cifar-100-python.tar.gz"))
    assert_same(ds, read_cifar100(tmp_path / "cifar-100-python"))


# --------------------------------------------------------------------------- STL-10


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


def test_stl10_upright_and_labels(tmp_path: Path) -> None:
    data = make_stl10(tmp_path)
    ds = read_stl10(tmp_path)
    assert ds.name == "STL-10" and ds.num_classes == 10 and ds.classes[0] == "airplane"
    assert ds.train_images.shape == (4, 3, 96, 96) and ds.train_images.dtype == torch.uint8
    assert ds.train_images[0, 1, 0, 5] == 255 and ds.train_images[0, 1, 5, 0] == 0
    assert int(ds.train_images[0].sum()) == 255
    assert ds.train_labels.dtype == torch.int64 and ds.train_labels.tolist() == [0, 9, 2, 4]
    assert ds.test_labels.tolist() == [1, 1, 9]
    assert np.array_equal(ds.train_images.numpy(), data["train_X"])
    assert np.array_equal(ds.test_images.numpy(), data["test_X"])
    assert_same(ds, read_stl10(tmp_path / "stl10_binary"))


def test_stl10_include_unlabeled(tmp_path: Path) -> None:
    data = make_stl10(tmp_path)
    ds = read_stl10(tmp_path, include_unlabeled=True)
    assert ds.train_images.shape == (6, 3, 96, 96)
    assert ds.train_labels.tolist() == [0, 9, 2, 4, -1, -1]
    assert np.array_equal(ds.train_images[:4].numpy(), data["train_X"])
    assert np.array_equal(ds.train_images[4:].numpy(), data["unlabeled_X"])
    assert ds.train_images[4, 1, 0, 5] == 255


# --------------------------------------------------------------------------- bad input


def raises(fn, *args, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    ("reader", "hint"),
    [
        (read_cifar10, "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"),
        (read_cifar100, "cifar-100-python/{train,test,meta}"),
        (read_stl10, "test_y.bin,class_names.txt[,unlabeled_X.bin]} (extract"),
    ],
)
def test_missing_path(tmp_path: Path, reader, hint: str) -> None:
    msg = raises(reader, tmp_path / "nope")
    assert "does not exist" in msg and hint in msg and "nope" in msg


def test_wrong_folder_names_missing_files(tmp_path: Path) -> None:
    make_cifar100(tmp_path)
    msg = raises(read_cifar10, tmp_path / "cifar-100-python")
    assert "missing data_batch_1" in msg and "batches.meta" in msg and "test_batch" in msg
    (tmp_path / "cifar-100-python" / "meta").unlink()
    assert "missing meta" in raises(read_cifar100, tmp_path)
    make_stl10(tmp_path / "s")
    (tmp_path / "s" / "stl10_binary" / "test_y.bin").unlink()
    assert "missing test_y.bin" in raises(read_stl10, tmp_path / "s")


def test_stl10_unlabeled_missing(tmp_path: Path) -> None:
    make_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    assert read_stl10(tmp_path).train_images.shape[0] == 4
    assert "missing unlabeled_X.bin" in raises(read_stl10, tmp_path, include_unlabeled=True)


def test_stl10_truncated_images(tmp_path: Path) -> None:
    make_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-100])
    msg = raises(read_stl10, tmp_path)
    assert "test_X.bin" in msg and str(3 * 27648 - 100) in msg and "27648" in msg


def test_stl10_label_count_mismatch(tmp_path: Path) -> None:
    make_stl10(tmp_path)
    np.array([1, 2, 3], dtype=np.uint8).tofile(tmp_path / "stl10_binary" / "train_y.bin")
    msg = raises(read_stl10, tmp_path)
    assert "train_y.bin" in msg and "3 labels" in msg and "4 images" in msg


def test_stl10_label_out_of_range(tmp_path: Path) -> None:
    make_stl10(tmp_path)
    np.array([0, 1, 2], dtype=np.uint8).tofile(tmp_path / "stl10_binary" / "test_y.bin")
    assert "outside 1..10" in raises(read_stl10, tmp_path)


def test_cifar_corrupt_pickle(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:50])
    msg = raises(read_cifar10, tmp_path)
    assert "data_batch_3" in msg and "not a valid CIFAR pickle" in msg
    path.write_bytes(b"this is not a pickle")
    assert "data_batch_3" in raises(read_cifar10, tmp_path)


def test_cifar_missing_data_key(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_2", {b"labels": [1, 2]})
    msg = raises(read_cifar10, tmp_path)
    assert "data_batch_2" in msg and "'data'" in msg


def test_cifar_wrong_data_size(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    bad = {b"data": np.zeros((4, 3000), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", bad)
    msg = raises(read_cifar10, tmp_path)
    assert "test_batch" in msg and "[N, 3072]" in msg


def test_cifar_image_size_mismatch_names_the_sizes(tmp_path: Path) -> None:
    """A CIFAR-format pickle of 64x64 images (like downsampled ImageNet) is refused, not misread."""
    make_cifar10(tmp_path)
    bad = {b"data": np.zeros((4, 3 * 64 * 64), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_2", bad)
    msg = raises(read_cifar10, tmp_path)
    assert "data_batch_2 holds 64x64 images (12288 values per row)" in msg
    assert "are 32x32" in msg and "--dataset folder" in msg


def test_cifar_label_count_and_range(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    zeros = np.zeros((2, 3072), np.uint8)
    write_pickle(folder / "test_batch", {b"data": zeros, b"labels": [1]})
    assert "2 images but 1 labels" in raises(read_cifar10, tmp_path)
    write_pickle(folder / "test_batch", {b"data": zeros, b"labels": [1, 10]})
    assert "outside 0..9" in raises(read_cifar10, tmp_path)


def test_cifar_meta_without_names(tmp_path: Path) -> None:
    make_cifar100(tmp_path)
    write_pickle(tmp_path / "cifar-100-python" / "meta", {b"coarse_label_names": [b"a"]})
    msg = raises(read_cifar100, tmp_path)
    assert "meta" in msg and "fine_label_names" in msg


def test_truncated_archive(tmp_path: Path) -> None:
    make_cifar10(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    make_archive(tmp_path / "src" / "cifar-10-batches-py", archive)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    msg = raises(read_cifar10, archive)
    assert "truncated or corrupt" in msg and "cifar-10-python.tar.gz" in msg
    archive.write_bytes(b"garbage" * 100)
    assert "truncated or corrupt" in raises(read_cifar10, tmp_path)


def test_archive_missing_members(tmp_path: Path) -> None:
    make_cifar10(tmp_path / "src")
    (tmp_path / "src" / "cifar-10-batches-py" / "data_batch_5").unlink()
    archive = tmp_path / "cifar-10-python.tar.gz"
    make_archive(tmp_path / "src" / "cifar-10-batches-py", archive)
    assert "lacks data_batch_5" in raises(read_cifar10, archive)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_cifar10(tmp_path)
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(evil)
    msg = raises(read_cifar10, tmp_path)
    assert "refusing to unpickle" in msg and "system" in msg and "batches.meta" in msg
    assert not marker.exists()
