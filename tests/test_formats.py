"""A short real pre-training run (the ``amcl`` command, Lightning) on each on-disk dataset format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amcl.cli import main
from amcl.data.datasets import load_dataset
from amcl.data.module import ContrastiveDataModule
from builders import cli_args, make_archive, make_cifar10, make_cifar100, make_stl10

FAST = cli_args(backbone="small_cnn", epochs=2, knn_k=5, progress=False, augs="ae")  # each test gives its data


def pretrain(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), *FAST, *args]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "last.ckpt").is_file() and (out / "config.yaml").is_file()
    assert len(metrics["epochs"]) == 2 and all(np.isfinite(e["loss"]) for e in metrics["epochs"])
    return metrics


@pytest.mark.slow
def test_cifar10_archive(tmp_path):
    make_cifar10(tmp_path / "src")
    make_archive(tmp_path / "src" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    metrics = pretrain(tmp_path, "--dataset", "cifar10", "--data-root", str(tmp_path), "--batch-size", "8")
    assert metrics["epochs"][-1]["step"] == 4  # 20 images, drop_last batches of 8: 2 per epoch
    assert 0 <= metrics["best_knn_acc"] <= 1


@pytest.mark.slow
def test_cifar100_folder(tmp_path):
    make_cifar100(tmp_path)
    metrics = pretrain(tmp_path, "--dataset", "cifar100", "--data-root", str(tmp_path), "--batch-size", "3")
    assert metrics["epochs"][-1]["step"] == 4 and metrics["best_knn_acc"] is not None


@pytest.mark.slow
def test_stl10_with_unlabeled_split_downscaled(tmp_path):
    make_stl10(tmp_path)
    metrics = pretrain(tmp_path, "--dataset", "stl10", "--data-root", str(tmp_path), "--unlabeled",
                       "--image-size", "32", "--batch-size", "3", "--knn-k", "3")  # the bank: 4 labelled images
    assert metrics["epochs"][-1]["step"] == 4  # 4 labelled + 2 unlabeled images
    assert metrics["best_knn_acc"] is not None


def test_knn_bank_holds_only_labelled_images(tmp_path):
    make_stl10(tmp_path)
    splits = load_dataset("stl10", str(tmp_path), unlabeled=True)
    data = ContrastiveDataModule(splits, batch_size=3, image_size=32)
    labels = torch.cat([lab for _, lab in data.plain_batches("train", torch.device("cpu"))])
    assert labels.tolist() == [0, 9, 2, 4] and len(splits.train_labels) == 6 and data.can_monitor


def write_folder(root: Path, per_class: int = 6) -> None:
    """train/ and val/ with two colour classes of 20x28 PNG and JPEG images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for name, colour in (("blue", (20, 40, 220)), ("red", (220, 30, 20))):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, (28, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")


@pytest.mark.parametrize("cache", ["always", "never"])
@pytest.mark.slow
def test_image_folder_cached_and_streamed(tmp_path, cache):
    write_folder(tmp_path / "data")
    metrics = pretrain(tmp_path, "--dataset", "folder", "--data-root", str(tmp_path / "data"), "--image-size", "16",
                       "--batch-size", "4", "--cache-images", cache, "--workers", "2" if cache == "never" else "0")
    assert metrics["epochs"][-1]["step"] == 6  # 12 images, batches of 4
    assert metrics["best_knn_acc"] >= 0.75  # colour alone separates the classes; chance is 0.5
    assert ("unreadable_files" in metrics["epochs"][-1]) == (cache == "never")


@pytest.mark.slow
def test_unlabeled_image_folder_pretrains_without_monitor(tmp_path, capsys):
    write_folder(tmp_path / "data")
    pile = tmp_path / "data" / "train"  # class folders without train/ above them: just a pile of images
    metrics = pretrain(tmp_path, "--dataset", "folder", "--data-root", str(pile), "--image-size", "16",
                       "--batch-size", "4", "--workers", "0")
    assert metrics["best_knn_acc"] is None and "knn_acc" not in metrics["epochs"][-1]
    assert "amcl: warning:" in capsys.readouterr().err
