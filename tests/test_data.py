"""Digits and synthetic datasets, the data module's on-device views, and the kNN classifier."""

import numpy as np
import torch
from sklearn.datasets import load_digits

from amcl.data.datasets import load_dataset
from amcl.data.module import ContrastiveDataModule, channel_stats
from amcl.eval.knn import knn_accuracy, knn_predict


def test_digits_pixels_labels_and_seeded_split():
    a, b, c = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert a.train_images.shape == (1438, 1, 8, 8) and a.test_images.shape == (359, 1, 8, 8)
    assert a.train_images.dtype == torch.uint8 and a.num_classes == 10
    assert torch.equal(a.test_labels, b.test_labels) and not torch.equal(a.test_labels, c.test_labels)
    raw = load_digits()
    # every image is the original 0-16 image scaled to 0-255, with its own label
    scaled = np.rint(raw.images * 255 / 16).astype(np.uint8)
    originals = {tuple(img.ravel()): int(t) for img, t in zip(scaled, raw.target)}
    for img, label in zip(a.test_images[:50], a.test_labels[:50]):
        assert originals[tuple(img.ravel().tolist())] == int(label)
    assert a.train_images.max() == 255


def test_synthetic_is_class_structured():
    s = load_dataset("synthetic", seed=3)
    assert s.train_images.shape[1:] == (3, 32, 32) and s.num_classes == 10
    acc = knn_accuracy(s.test_images.flatten(1).float(), s.test_labels, s.train_images.flatten(1).float(),
                       s.train_labels, 10, k=10)
    assert acc > 0.5


def test_data_module_makes_two_different_views_on_device():
    splits = load_dataset("digits")
    dm = ContrastiveDataModule(splits, batch_size=32, policy="default", image_size=16)
    idx = next(iter(dm.train_dataloader()))
    assert idx.shape == (32,)

    class Trainer:
        training = True

    dm.trainer = Trainer()
    v1, v2 = dm.on_after_batch_transfer(idx, 0)
    assert v1.shape == v2.shape == (32, 3, 16, 16) and v1.dtype == torch.float32
    assert not torch.allclose(v1, v2)
    Trainer.training = False
    images, labels = dm.on_after_batch_transfer(torch.arange(5), 0)
    assert torch.equal(labels, splits.test_labels[:5])
    plain = dm.augment.plain(splits.test_images[:5])
    assert torch.equal(images, plain)
    chunks = list(dm.plain_batches("train", torch.device("cpu")))
    assert sum(len(lab) for _, lab in chunks) == 1438


def test_channel_stats_normalise_to_zero_mean_unit_std():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(images)
    x = (images.float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-4


def test_knn_on_separable_clusters_and_shuffled_labels():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 5
    bank_labels = torch.arange(400) % 4
    bank = centers[bank_labels] + 0.1 * torch.randn(400, 16, generator=g)
    labels = torch.arange(100) % 4
    queries = centers[labels] + 0.1 * torch.randn(100, 16, generator=g)
    assert knn_accuracy(queries, labels, bank, bank_labels, 4, k=20) == 1.0
    shuffled = bank_labels[torch.randperm(400, generator=g)]
    assert knn_accuracy(queries, labels, bank, shuffled, 4, k=20) < 0.5


def test_knn_chunks_do_not_change_scores_and_weights_follow_formula():
    g = torch.Generator().manual_seed(1)
    bank, q = torch.randn(50, 8, generator=g), torch.randn(7, 8, generator=g)
    bank_labels = torch.randint(0, 3, (50,), generator=g)
    full = knn_predict(q, bank, bank_labels, 3, k=5, t=0.1, chunk_size=100)
    chunked = knn_predict(q, bank, bank_labels, 3, k=5, t=0.1, chunk_size=2)
    torch.testing.assert_close(full, chunked)
    # by hand for query 0: the 5 most cosine-similar bank entries vote exp(sim / t)
    sims = torch.nn.functional.cosine_similarity(q[0:1], bank)
    top = sims.topk(5).indices
    expected = torch.zeros(3)
    for i in top:
        expected[bank_labels[i]] += torch.exp(sims[i] / 0.1)
    torch.testing.assert_close(full[0], expected, rtol=1e-5, atol=1e-5)


def test_the_data_package_does_not_import_the_config_or_anything_above_it():
    import subprocess
    import sys

    code = ("import sys, amcl.data.datasets, amcl.data.module, amcl.data.preview, amcl.data.folders; "
            "print(' '.join(m for m in sys.modules if m.startswith('amcl.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "amcl.data.splits" in loaded
    assert not [m for m in loaded if m.split(".")[1] in ("config", "eval", "methods", "train", "nn")], loaded


def test_the_datasets_read_are_the_datasets_the_config_offers():
    from amcl.config import DATASETS, PretrainConfig
    from amcl.data.datasets import DATASET_NAMES, load_configured_dataset

    assert DATASET_NAMES == DATASETS
    splits = load_configured_dataset(PretrainConfig(dataset="digits", split_seed=3).resolved())
    assert torch.equal(splits.test_labels, load_dataset("digits", seed=3).test_labels)
