"""Tests for amcl.data.readers: tiny datasets written in the exact distributed formats (the writers are in
builders.py, shared with test_formats.py and test_bad_input.py)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from amcl.data.readers import DatasetError, ImageSplits, read_cifar10, read_cifar100, read_stl10
from builders import (
    CIFAR10_NAMES,
    make_archive,
    make_cifar10,
    make_cifar100,
    make_stl10,
    py2_dumps,
    py3_dumps,
    write_pickle,
)


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
