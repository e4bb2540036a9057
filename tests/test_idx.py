"""Fashion-MNIST, MNIST and KMNIST from their standard IDX files (written here in the real format, gzipped
and plain), the class-balanced training subset and the validation split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amcl.config import PretrainConfig
from amcl.data.datasets import load_configured_dataset, load_dataset
from amcl.data.idx import find_idx_folder, read_idx
from amcl.data.readers import DatasetError
from amcl.data.splits import ImageSplits, balanced_counts, per_class_draw, train_subset, with_validation
from builders import make_idx_dataset, write_idx


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
@pytest.mark.parametrize("layout", ["", "FashionMNIST/raw", "raw"])
def test_fashion_mnist_reads_its_four_files_in_the_layouts_users_have(tmp_path, gz, layout):
    arrays = make_idx_dataset(tmp_path / layout if layout else tmp_path, gz=gz)
    splits = load_dataset("fashion_mnist", str(tmp_path))
    assert splits.train_images.shape == (60, 1, 28, 28) and splits.train_images.dtype == torch.uint8
    assert torch.equal(splits.train_images[:, 0], torch.from_numpy(arrays["train_images"]))
    assert splits.train_labels.tolist() == arrays["train_labels"].tolist()
    assert splits.test_labels.tolist() == arrays["test_labels"].tolist() and splits.num_classes == 10
    assert splits.classes[0] == "T-shirt/top" and splits.classes[9] == "Ankle boot"


def test_mnist_and_kmnist_use_the_same_reader(tmp_path):
    make_idx_dataset(tmp_path / "MNIST" / "raw")
    make_idx_dataset(tmp_path / "KMNIST" / "raw", gz=False)
    assert load_dataset("mnist", str(tmp_path)).classes[3] == "3"
    assert len(load_dataset("kmnist", str(tmp_path)).test_labels) == 20


def test_the_header_is_read_as_the_format_says(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x-idx3-ubyte", array)
    raw = (tmp_path / "x-idx3-ubyte").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:16] == b"\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x04"
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte", 3), array)


def _damaged(tmp_path, name: str, change) -> str:
    make_idx_dataset(tmp_path, gz=False)
    path = tmp_path / name
    path.write_bytes(change(path.read_bytes()))
    with pytest.raises(DatasetError) as error:
        load_dataset("fashion_mnist", str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_wrong_magic_number_names_the_file_and_the_fix(tmp_path):
    message = _damaged(tmp_path, "train-labels-idx1-ubyte", lambda b: b"\x00\x00\x08\x03" + b[4:])
    assert "train-labels-idx1-ubyte has the wrong IDX magic number 0x00000803" in message
    assert "expected 0x00000801" in message and "download it again" in message
    message = _damaged(tmp_path, "t10k-images-idx3-ubyte", lambda b: b"PK\x03\x04" + b[4:])
    assert "is not an IDX file (its first bytes are 504b0304" in message


def test_a_truncated_file_is_one_line(tmp_path):
    message = _damaged(tmp_path, "train-images-idx3-ubyte", lambda b: b[:-100])
    assert "train-images-idx3-ubyte has 46956 bytes, but its header announces 60x28x28 values (47056 bytes): it " \
           "is truncated" in message


def test_a_truncated_gzip_is_one_line(tmp_path):
    make_idx_dataset(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz .*truncated or corrupt: download it again"):
        load_dataset("fashion_mnist", str(tmp_path))


def test_images_and_labels_of_different_downloads_are_refused(tmp_path):
    make_idx_dataset(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    with pytest.raises(DatasetError, match="holds 20 images but .*t10k-labels-idx1-ubyte.gz 7 labels"):
        load_dataset("fashion_mnist", str(tmp_path))


def test_missing_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(DatasetError, match="path .*nowhere does not exist"):
        load_dataset("fashion_mnist", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=r"no Fashion-MNIST files in .*FashionMNIST/raw.*train-images-idx3-ubyte"):
        load_dataset("fashion_mnist", str(tmp_path))
    make_idx_dataset(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="is missing t10k-images-idx3-ubyte"):
        load_dataset("fashion_mnist", str(tmp_path))


def test_fashion_mnist_without_data_root_is_the_system_package_or_says_how_to_install_it(monkeypatch, tmp_path):
    import amcl.data.idx as idx

    monkeypatch.setitem(idx.IDX_DATASETS, "fashion_mnist",
                        idx.IdxDataset("fashion_mnist", "Fashion-MNIST", "FashionMNIST", tuple("abcdefghij"),
                                       tmp_path / "system"))
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        find_idx_folder("fashion_mnist", None)
    make_idx_dataset(tmp_path / "system")
    assert find_idx_folder("fashion_mnist", None) == tmp_path / "system"
    config = PretrainConfig(dataset="fashion_mnist").resolved()
    assert config.image_size == 28 and config.data_root is None
    assert len(load_configured_dataset(config).train_labels) == 60


# --------------------------------------------------------------------------- subsets and the validation split


def _splits(per_class: list[int]) -> ImageSplits:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    return ImageSplits("toy", images, labels, images[:3], labels[:3], tuple(map(str, range(len(per_class)))))


def test_a_train_subset_is_class_balanced_seeded_and_keeps_the_test_split():
    splits = _splits([30, 20, 25])
    subset = train_subset(splits, 31, seed=3)
    counts = torch.bincount(subset.train_labels, minlength=3).tolist()
    assert sorted(counts) == [10, 10, 11] and sum(counts) == 31
    assert torch.equal(subset.train_images[:, 0, 0, 0], subset.train_images[:, 0, 0, 0].unique())  # no repeats
    again = train_subset(splits, 31, seed=3)
    assert torch.equal(subset.train_images, again.train_images)
    assert not torch.equal(train_subset(splits, 31, seed=4).train_images, subset.train_images)
    assert torch.equal(subset.test_images, splits.test_images)
    with pytest.raises(ValueError, match="--train-subset 70 needs 24 images of every class.*has 20.*<= 60"):
        train_subset(splits, 70, seed=0)


def test_balanced_counts_and_per_class_draws():
    assert balanced_counts(10, 3, 0).sum() == 10 and sorted(balanced_counts(10, 3, 0).tolist()) == [3, 3, 4]
    labels = torch.tensor([0, 1, 0, 1, 0, -1, 1, 0])
    drawn = per_class_draw(labels, torch.tensor([2, 3]), seed=5)
    assert torch.bincount(labels[drawn]).tolist() == [2, 3] and bool((labels[drawn] >= 0).all())
    assert torch.equal(drawn, drawn.sort().values)


def test_the_validation_split_holds_labels_out_of_training_but_keeps_the_images():
    splits = _splits([50, 30, 20])
    held = with_validation(splits, 0.2, seed=0)
    assert torch.bincount(held.val_labels, minlength=3).tolist() == [10, 6, 4]
    assert torch.equal(held.train_images, splits.train_images)  # pre-training still sees every image
    unlabelled = (held.train_labels == -1).nonzero().flatten()
    assert len(unlabelled) == 20 and torch.equal(held.train_images[unlabelled], held.val_images)
    assert torch.equal(splits.train_labels[unlabelled], held.val_labels)
    assert held.val is not None and len(held.val) == 20 and _splits([5, 5]).val is None
    assert torch.equal(with_validation(splits, 0.2, seed=0).val_images, held.val_images)
    with pytest.raises(ValueError, match="would leave a class of toy without labelled training images"):
        with_validation(_splits([50, 1]), 0.2, seed=0)


def test_subset_and_validation_come_from_the_config_and_its_split_seed():
    config = PretrainConfig(dataset="digits", train_subset=500, val_fraction=0.1, split_seed=4).resolved()
    splits = load_configured_dataset(config)
    assert len(splits.train_labels) == 500 and len(splits.val_labels) == 50
    assert int((splits.train_labels >= 0).sum()) == 450 and len(splits.test_labels) == 359
    other = load_configured_dataset(PretrainConfig(dataset="digits", train_subset=500, val_fraction=0.1,
                                                   split_seed=4, seed=9).resolved())
    assert torch.equal(other.val_images, splits.val_images)  # --seed does not move the split


@pytest.mark.slow
def test_a_run_with_a_validation_split_reports_val_metrics_beside_the_test_ones(tmp_path):
    from amcl.train import pretrain
    from builders import tiny_config

    summary = pretrain(tiny_config(epochs=1, max_steps=4, val_fraction=0.2, out=str(tmp_path / "run")))
    assert 0.1 < summary["final_val_knn_acc"] <= 1 and summary["final_knn_acc"] > 0.1
    assert "val_knn_acc" in summary["epochs"][-1] and summary["best_val_knn_acc"] == summary["final_val_knn_acc"]


def test_the_reader_reads_the_real_files_when_the_package_is_installed():
    from amcl.data.idx import FASHION_MNIST_SYSTEM_PATH

    if not FASHION_MNIST_SYSTEM_PATH.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed (tests do not need it)")
    splits = load_dataset("fashion_mnist")
    assert splits.train_images.shape == (60000, 1, 28, 28) and len(splits.test_labels) == 10000
    assert torch.bincount(splits.train_labels).tolist() == [6000] * 10
