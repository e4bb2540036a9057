"""``amcl export``: plain encoder weights that load with weights_only=True, and features as .npy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amcl.cli import main
from amcl.config import PretrainConfig
from amcl.data.datasets import load_dataset
from amcl.errors import AmclError
from amcl.eval.checkpoint import load_pretrained
from amcl.export import export_encoder, load_encoder
from amcl.nn import build_backbone
from amcl.train import pretrain
from builders import tiny_options

pytestmark = pytest.mark.slow  # every test exports a real digits or folder run

TINY = tiny_options(batch_size=64, epochs=1, max_steps=2, knn_k=5)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    pretrain(PretrainConfig(amcl=True, out=str(out), **TINY))
    return out


def test_encoder_weights_load_plainly_and_match_the_checkpoint(digits_run, capsys):
    assert main(["export", "--checkpoint", str(digits_run / "last.ckpt")]) == 0
    folder = digits_run / "export"
    assert "encoder.pt" in capsys.readouterr().out
    info = json.loads((folder / "encoder.json").read_text())
    assert info["backbone"] == "small_cnn" and info["image_size"] == 16 and info["method"] == "simclr"
    assert info["feature_dim"] == 128 and info["amcl"] is True and len(info["normalization"]["mean"]) == 3
    state = torch.load(folder / "encoder.pt", weights_only=True)  # a plain state dict of tensors
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    plain = build_backbone(info["backbone"])
    plain.load_state_dict(state)
    encoder, loaded_info = load_encoder(folder)
    reference = load_pretrained(digits_run).backbone
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(encoder(x), reference(x)) and torch.equal(plain.eval()(x), reference(x))
    assert loaded_info == info and not encoder.training


def test_features_equal_the_encoder_on_normalised_images(digits_run):
    out = digits_run / "features"
    result = export_encoder(digits_run, out, features=True, splits=["test"])
    features, labels = np.load(out / "features-test.npy"), np.load(out / "labels-test.npy")
    splits = load_dataset("digits", seed=0)
    assert features.shape == (359, 128) and features.dtype == np.float32
    assert np.array_equal(labels, splits.test_labels.numpy())
    pretrained = load_pretrained(digits_run)
    norm = pretrained.normalization
    x = splits.test_images[:5].float().div(255).repeat(1, 3, 1, 1)  # 8x8 grey -> 3 channels, then 16 px
    x = torch.nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(norm["mean"])[:, None, None]) / torch.tensor(norm["std"])[:, None, None]
    with torch.no_grad():
        expected = pretrained.backbone(x).numpy()
    assert np.allclose(features[:5], expected, atol=1e-5)
    assert result["features"]["test"] == {"count": 359, "labelled": 359, "features": "features-test.npy",
                                          "labels": "labels-test.npy"}
    assert not (out / "features-train.npy").exists()


def test_folder_features_keep_paths_unlabeled_images_and_skip_unreadable(tmp_path):
    root = tmp_path / "data"
    for split, classes in (("train", ("a", "b")), ("val", ("a",)), ("unlabeled", ("x",))):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (10, 12), (40 * i, 200 if c == "a" else 20, 90)).save(root / split / c / f"{i}.png")
    (root / "train" / "b" / "bad.png").write_bytes(b"not a png")
    run = tmp_path / "run"
    with pytest.warns(Warning, match="not readable images"):
        pretrain(PretrainConfig(**{**TINY, "dataset": "folder", "data_root": str(root), "image_size": 8,
                                   "unlabeled": True, "workers": 0, "batch_size": 4, "out": str(run)}))
        result = export_encoder(run, tmp_path / "exp", features=True)
    paths = (tmp_path / "exp" / "paths-train.txt").read_text().splitlines()
    labels = np.load(tmp_path / "exp" / "labels-train.npy")
    assert len(paths) == len(labels) == np.load(tmp_path / "exp" / "features-train.npy").shape[0] == 9
    assert not any(p.endswith("bad.png") for p in paths)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, -1, -1, -1]
    assert all(Path(p).parent.name == ("x" if lab < 0 else "ab"[lab]) for p, lab in zip(paths, labels))
    assert result["features"]["train"]["labelled"] == 6 and result["features"]["test"]["count"] == 3


def test_bad_exports_are_one_line_errors(digits_run, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "missing.ckpt")]) == 2
    assert capsys.readouterr().err.startswith("amcl export: error: checkpoint")
    with pytest.raises(AmclError, match="encoder.json"):
        load_encoder(tmp_path)
    export_encoder(digits_run, tmp_path / "exp")
    weights = tmp_path / "exp" / "encoder.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AmclError, match="export the encoder again"):
        load_encoder(tmp_path / "exp")
