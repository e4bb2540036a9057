"""Evaluation protocols: weighted kNN (chunked) and the linear probe on synthetic features whose answer is
known, then ``amcl eval`` end to end on a tiny digits checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from amcl.cli import main
from amcl.data.datasets import load_dataset
from amcl.data.module import ContrastiveDataModule
from amcl.errors import AmclError
from amcl.eval.knn import knn_accuracy, knn_predict, topk_accuracies
from amcl.eval.linear import linear_probe, linear_probe_augmented
from amcl.eval.options import EvalOptions
from amcl.eval.protocols import evaluate_checkpoint, result_name, result_settings
from amcl.train import pretrain
from builders import tiny_config

CPU = torch.device("cpu")


def blobs(num_classes: int, per_class: int, dim: int = 16, spread: float = 0.3, seed: int = 0, centers=None):
    """Gaussian blobs around ``num_classes`` well-separated centres: features [N, dim], labels [N]."""
    g = torch.Generator().manual_seed(seed)
    if centers is None:
        centers = torch.randn(num_classes, dim, generator=g) * 4
    labels = torch.arange(num_classes * per_class) % num_classes
    features = centers[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return features, labels, centers


@pytest.fixture(scope="module")
def clusters():
    """20 separable classes: a training set and a test set drawn around the same centres."""
    train_x, train_y, centers = blobs(20, 30, seed=0)
    test_x, test_y, _ = blobs(20, 25, seed=1, centers=centers)
    return train_x, train_y, test_x, test_y


def shuffled(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


# --------------------------------------------------------------------------- kNN


def test_knn_separable_clusters_score_100_percent(clusters):
    train_x, train_y, test_x, test_y = clusters
    accuracy = topk_accuracies(knn_predict(test_x, train_x, train_y, 20, k=20, t=0.1), test_y)
    assert accuracy == {1: 1.0, 5: 1.0}


def test_knn_shuffled_bank_labels_stay_near_chance(clusters):
    train_x, train_y, test_x, test_y = clusters
    accuracy = topk_accuracies(knn_predict(test_x, train_x, shuffled(train_y), 20, k=20, t=0.1), test_y)
    assert abs(accuracy[1] - 1 / 20) < 0.05  # 500 queries: chance is 0.05, its std about 0.01
    assert abs(accuracy[5] - 5 / 20) < 0.1


def test_knn_bank_chunks_give_the_same_scores():
    g = torch.Generator().manual_seed(2)
    bank, queries = torch.randn(103, 8, generator=g), torch.randn(17, 8, generator=g)
    bank_labels = torch.randint(0, 4, (103,), generator=g)
    full = knn_predict(queries, bank, bank_labels, 4, k=10, t=0.2)
    for chunk, bank_chunk in ((5, 7), (17, 3), (1, 200), (4, 10), (3, 1)):
        torch.testing.assert_close(knn_predict(queries, bank, bank_labels, 4, k=10, t=0.2, chunk_size=chunk,
                                               bank_chunk_size=bank_chunk), full)
    # k larger than the bank: every entry votes, chunked or not
    torch.testing.assert_close(knn_predict(queries, bank, bank_labels, 4, k=500, bank_chunk_size=9),
                               knn_predict(queries, bank, bank_labels, 4, k=500))


def test_knn_unlabeled_bank_entries_never_vote():
    g = torch.Generator().manual_seed(3)
    bank, queries = torch.randn(60, 8, generator=g), torch.randn(9, 8, generator=g)
    bank_labels = torch.randint(0, 3, (60,), generator=g)
    unlabeled = torch.randn(40, 8, generator=g)
    queries_near_unlabeled = unlabeled[:5] + 1e-3  # their nearest neighbours are all unlabeled entries
    mixed = torch.cat([unlabeled, bank]), torch.cat([torch.full((40,), -1), bank_labels])
    q = torch.cat([queries, queries_near_unlabeled])
    for bank_chunk in (1000, 7):
        with_unlabeled = knn_predict(q, *mixed, 3, k=5, t=0.1, bank_chunk_size=bank_chunk)
        torch.testing.assert_close(with_unlabeled, knn_predict(q, bank, bank_labels, 3, k=5, t=0.1))
    with pytest.raises(ValueError, match="no labelled"):
        knn_predict(q, unlabeled, torch.full((40,), -1), 3)


def test_knn_tiny_temperature_keeps_finite_scores_and_the_ranking():
    train_x, train_y, _ = blobs(4, 20, seed=4)
    queries = train_x[:10] + 0.01
    scores = knn_predict(queries, train_x, train_y, 4, k=5, t=0.001)  # exp(1 / 0.001) overflows float32
    assert torch.isfinite(scores).all() and (scores.argmax(1) == train_y[:10]).all()


def test_topk_accuracies_by_hand():
    scores = torch.tensor([
        [0.9, 0.05, 0.03, 0.02, 0.0, 0.0],  # label 0: top-1
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],     # label 1: rank 5 -> top-5 only
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],     # label 5: last -> neither
        [0.0, 0.0, 0.0, 1.0, 2.0, 0.5],     # label 3: rank 2 -> top-2 and top-5
    ])
    labels = torch.tensor([0, 1, 5, 3])
    assert topk_accuracies(scores, labels, ks=(1, 2, 5, 6)) == {1: 0.25, 2: 0.5, 5: 0.75, 6: 1.0}
    # k above the number of classes counts as all classes
    assert topk_accuracies(scores[:, :3].contiguous(), torch.tensor([0, 1, 2, 0]), ks=(1, 5)) == {1: 0.5, 5: 1.0}
    assert topk_accuracies(scores, labels) == {1: 0.25, 5: 0.75}
    assert knn_accuracy(*blobs(3, 5)[:2], *blobs(3, 5)[:2], 3, k=1) == 1.0


# --------------------------------------------------------------------------- linear probe


def test_linear_probe_separable_clusters_reach_100_percent(clusters):
    result = linear_probe(*clusters, 20, epochs=10, batch_size=64)
    assert result["top1"] == 1.0 and result["top5"] == 1.0 and result["train_top1"] == 1.0
    assert result["epochs"] == 10 and result["steps"] == 10 * 10  # 600 images in batches of 64
    assert result["train_loss"] < 0.1


def test_linear_probe_shuffled_training_labels_stay_near_chance(clusters):
    train_x, train_y, test_x, test_y = clusters
    result = linear_probe(train_x, shuffled(train_y), test_x, test_y, 20, epochs=10, batch_size=64)
    assert abs(result["top1"] - 1 / 20) < 0.05
    assert abs(result["top5"] - 5 / 20) < 0.1


def test_linear_probe_is_seeded(clusters):
    train_x, train_y, test_x, test_y = clusters
    noisy = train_y.clone()
    noisy[::3] = shuffled(train_y)[::3]  # some label noise, so that the result depends on the batch order
    runs = [linear_probe(train_x, noisy, test_x, test_y, 20, epochs=3, batch_size=50, seed=s) for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0]["train_loss"] != runs[2]["train_loss"]


def test_linear_probe_standardises_a_huge_noise_dimension(clusters):
    train_x, train_y, test_x, test_y = clusters
    g = torch.Generator().manual_seed(5)
    huge = lambda x: torch.cat([x, 1e4 * torch.randn(len(x), 1, generator=g) + 3e4], dim=1)  # noqa: E731
    result = linear_probe(huge(train_x), train_y, huge(test_x), test_y, 20, epochs=10, batch_size=64)
    assert result["top1"] == 1.0
    # a constant feature (zero variance) is harmless too
    constant = lambda x: torch.cat([x, torch.full((len(x), 1), 5.0)], dim=1)  # noqa: E731
    assert linear_probe(constant(train_x), train_y, constant(test_x), test_y, 20, epochs=5)["top1"] == 1.0


def test_linear_probe_rejects_bad_inputs(clusters):
    train_x, train_y, test_x, test_y = clusters
    with pytest.raises(ValueError, match="epochs"):
        linear_probe(train_x, train_y, test_x, test_y, 20, epochs=0)
    with pytest.raises(ValueError, match="labels must lie"):
        linear_probe(train_x, train_y, test_x, test_y, 10)


class _Pool(nn.Module):
    """A fixed "encoder": each image average-pooled to 2 x 2 pixels, flattened (12 features)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)


def _class_colour_folder(root: Path) -> None:
    """An image folder whose two classes differ in colour (red vs blue), 8 px PNGs."""
    for split, count in (("train", 6), ("val", 3)):
        for c, colour in enumerate(((220, 30, 30), (30, 30, 220))):
            for i in range(count):
                pixels = np.clip(np.array(colour) + 8 * i + np.zeros((8, 8, 3)), 0, 255).astype(np.uint8)
                path = root / split / f"class{c}" / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)


@pytest.mark.parametrize("cache", ["always", "never"])
def test_augmented_linear_probe_in_memory_and_streamed(tmp_path, cache):
    _class_colour_folder(tmp_path)
    splits = load_dataset("folder", str(tmp_path), image_size=8, cache=cache, workers=0)
    data = ContrastiveDataModule(splits, batch_size=4, image_size=8, workers=0)
    assert data.streamed == (cache == "never")
    runs = [linear_probe_augmented(_Pool(), data, 2, epochs=4, batch_size=4, seed=1) for _ in range(2)]
    assert runs[0] == runs[1]  # seeded: the same crops, flips and batches
    assert runs[0]["top1"] == 1.0 and runs[0]["policy"] == "ae" and runs[0]["steps"] == 4 * 3


# --------------------------------------------------------------------------- amcl eval end to end


@pytest.fixture
def checkpoint(digits_baseline_run) -> Path:  # conftest.py: trained once per session
    return digits_baseline_run[0] / "last.ckpt"


def run_eval(*args: str) -> int:
    return main(["eval", *args])


@pytest.mark.slow
def test_eval_knn_reproduces_the_training_monitor(checkpoint, capsys):
    assert run_eval("--checkpoint", str(checkpoint), "--protocol", "knn", "--device", "cpu") == 0
    printed = capsys.readouterr().out
    assert "protocol knn, top1 " in printed and "top5 " in printed and "eval-knn.json" in printed
    result = json.loads((checkpoint.parent / "eval-knn.json").read_text())
    metrics = json.loads((checkpoint.parent / "metrics.json").read_text())
    assert result["protocol"] == "knn" and result["k"] == 20 and result["t"] == 0.1
    assert result["top1"] == pytest.approx(metrics["epochs"][-1]["knn_acc"], abs=1e-6)
    assert 0.5 < result["top1"] <= result["top5"] <= 1.0
    assert (result["train_images"], result["test_images"], result["feature_dim"]) == (1438, 359, 128)
    assert result["dataset"] == "digits" and Path(result["checkpoint"]) == checkpoint.resolve()
    assert not list(checkpoint.parent.glob("*.tmp"))


@pytest.mark.slow
def test_eval_linear_on_features_and_augmented(checkpoint, capsys, tmp_path):
    assert run_eval("--checkpoint", str(checkpoint.parent), "--protocol", "linear", "--epochs", "5") == 0
    assert "protocol linear, top1 " in capsys.readouterr().out
    result = json.loads((checkpoint.parent / "eval-linear-epochs5.json").read_text())  # named by its settings
    assert 0.5 < result["top1"] <= result["top5"] <= 1.0
    assert (result["epochs"], result["lr"], result["batch_size"], result["augment"]) == (5, 0.1, 256, False)
    again = evaluate_checkpoint(checkpoint, "linear", epochs=5, device="cpu", out=tmp_path / "again.json")
    assert again["top1"] == result["top1"] and again["json"] == str(tmp_path / "again.json")  # seeded

    out = tmp_path / "sub" / "augmented.json"
    assert run_eval("--checkpoint", str(checkpoint), "--protocol", "linear", "--augment", "--epochs", "2",
                    "--out", str(out)) == 0
    augmented = json.loads(out.read_text())
    assert augmented["augment"] is True and augmented["policy"] == "ae" and augmented["steps"] == 2 * 6
    assert 0.2 < augmented["top1"] <= augmented["top5"] <= 1.0


def _one_line_error(capsys, *args: str) -> str:
    assert run_eval(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amcl eval: error:") and "\n" not in err, err
    return err


@pytest.mark.slow
def test_eval_bad_inputs_are_one_line_errors(checkpoint, capsys, tmp_path):
    ckpt = str(checkpoint)
    assert "does not exist" in _one_line_error(capsys, "--checkpoint", str(tmp_path / "missing.ckpt"))
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    _one_line_error(capsys, "--checkpoint", str(text))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    assert "truncated" in _one_line_error(capsys, "--checkpoint", str(truncated))
    assert "--epochs" in _one_line_error(capsys, "--checkpoint", ckpt, "--protocol", "linear", "--epochs", "0")
    assert "--lr" in _one_line_error(capsys, "--checkpoint", ckpt, "--protocol", "linear", "--lr", "0")
    assert "--knn-k" in _one_line_error(capsys, "--checkpoint", ckpt, "--knn-k", "0")
    assert "--knn-t" in _one_line_error(capsys, "--checkpoint", ckpt, "--knn-t", "-1")
    assert "--augment" in _one_line_error(capsys, "--checkpoint", ckpt, "--augment")
    if not torch.cuda.is_available():
        assert "CUDA" in _one_line_error(capsys, "--checkpoint", ckpt, "--device", "cuda")


@pytest.mark.slow
def test_eval_needs_labelled_splits(checkpoint, tmp_path):
    unlabeled = tmp_path / "photos"
    unlabeled.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(unlabeled / f"{i}.png")
    with pytest.warns(UserWarning), pytest.raises(AmclError, match=r"photos/train/<class>/ and .*photos/val/<class>/"):
        evaluate_checkpoint(checkpoint, dataset="folder", data_root=str(unlabeled), workers=0, device="cpu")
    with pytest.raises(AmclError, match="unknown --protocol"):
        evaluate_checkpoint(checkpoint, "svm")


@pytest.mark.slow
def test_eval_accepts_a_copied_checkpoint_folder(checkpoint, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(checkpoint, copy / "last.ckpt")
    result = evaluate_checkpoint(copy, "knn", knn_k=5, knn_t=0.5, device="cpu")
    assert Path(result["json"]) == copy / "eval-knn-k5-t0.5.json" and (copy / "eval-knn-k5-t0.5.json").is_file()
    assert (result["k"], result["t"]) == (5, 0.5) and 0.5 < result["top1"] <= result["top5"]


# --------------------------------------------------------------------------- the few-label protocol, validation


def test_result_files_are_named_by_every_setting_that_changes_the_result():
    assert result_name("knn") == "eval-knn.json"
    assert result_name("knn", None, result_settings(EvalOptions(knn_k=5, epochs=3))) == "eval-knn-k5.json"  # kNN
    assert result_name("linear", None, result_settings(EvalOptions(protocol="linear", epochs=50, lr=0.2,
                                                                   augment=True))) == \
        "eval-linear-epochs50-lr0.2-augmented.json"
    assert result_name("knn", 10, result_settings(EvalOptions(labels_per_class=10, label_draws=5, seed=3))) == \
        "eval-knn-10-per-class-draws5-seed3.json"
    assert result_name("knn", None, result_settings(EvalOptions(dataset="mnist")), "epoch-20") == \
        "eval-knn-mnist-epoch-20.json"


@pytest.mark.slow
def test_few_labels_per_class_draw_seeded_stratified_banks_and_average_over_draws(checkpoint, tmp_path):
    full = evaluate_checkpoint(checkpoint, "knn", device="cpu", out=tmp_path / "all.json")
    few = evaluate_checkpoint(checkpoint, "knn", labels_per_class=3, label_draws=4, device="cpu")
    assert Path(few["json"]).name == "eval-knn-3-per-class-draws4.json" and few["train_images"] == 30
    assert few["labels_per_class"] == 3 and few["label_seeds"] == [0, 1, 2, 3] and few["k"] == 1
    assert few["top1"] == pytest.approx(sum(few["top1_draws"]) / 4) and len(set(few["top1_draws"])) > 1
    assert few["top1_std"] > 0 and 0.1 < few["top1"] < full["top1"]  # 30 labels: above chance, below 1438
    assert few["test_images"] == full["test_images"]  # every draw is scored on the whole test split
    again = evaluate_checkpoint(checkpoint, "knn", labels_per_class=3, label_draws=4, device="cpu",
                                out=tmp_path / "again.json")
    assert again["top1_draws"] == few["top1_draws"]
    shifted = evaluate_checkpoint(checkpoint, "knn", labels_per_class=3, label_draws=1, seed=2, device="cpu",
                                  out=tmp_path / "shifted.json")
    assert shifted["top1"] == few["top1_draws"][2]  # draw d is seeded with seed + d
    linear = evaluate_checkpoint(checkpoint, "linear", labels_per_class=10, label_draws=2, epochs=30, device="cpu")
    assert Path(linear["json"]).name == "eval-linear-10-per-class-epochs30-draws2.json"
    assert linear["train_images"] == 100
    assert 0.1 < linear["top1"] <= 1 and len(linear["top1_draws"]) == 2
    with pytest.raises(AmclError, match="--labels-per-class 500: digits has .* in its smallest class"):
        evaluate_checkpoint(checkpoint, "knn", labels_per_class=500, device="cpu")
    with pytest.raises(AmclError, match="--label-draws 3 draws labelled images for --labels-per-class N"):
        evaluate_checkpoint(checkpoint, "knn", label_draws=3, device="cpu")
    with pytest.raises(AmclError, match="drop --augment"):
        evaluate_checkpoint(checkpoint, "linear", labels_per_class=5, augment=True, device="cpu")


@pytest.mark.slow
def test_eval_reports_the_validation_split_of_the_run(tmp_path):
    out = tmp_path / "run"
    summary = pretrain(tiny_config(epochs=1, max_steps=6, val_fraction=0.2, out=str(out)))
    knn = evaluate_checkpoint(out, "knn", device="cpu")
    assert knn["val_images"] == 289 and knn["train_images"] == 1438 - 289  # 20% of each class, rounded
    assert knn["val_top1"] == pytest.approx(summary["final_val_knn_acc"], abs=1 / 289)
    assert knn["top1"] == pytest.approx(summary["final_knn_acc"], abs=1 / 359)
    linear = evaluate_checkpoint(out, "linear", epochs=20, device="cpu")
    assert 0.1 < linear["val_top1"] <= linear["val_top5"] <= 1
