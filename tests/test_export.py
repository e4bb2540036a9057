"""``amcl export``: plain encoder weights that load with weights_only=True, and features as .npy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

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
    assert "encoder.safetensors" in capsys.readouterr().out
    info = json.loads((folder / "encoder.json").read_text())
    assert info["backbone"] == "small_cnn" and info["image_size"] == 16 and info["method"] == "simclr"
    assert info["feature_dim"] == 128 and info["amcl"] is True and len(info["normalization"]["mean"]) == 3
    assert info["weights"] == "encoder.safetensors" and info["names"] == "amcl"  # no library has this convnet
    state = load_file(folder / "encoder.safetensors")  # a plain state dict of tensors
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    plain = build_backbone(info["backbone"])
    plain.load_state_dict(state)
    encoder, loaded_info = load_encoder(folder)
    reference = load_pretrained(digits_run).backbone
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(encoder(x), reference(x)) and torch.equal(plain.eval()(x), reference(x))
    assert loaded_info == info and not encoder.training


def test_a_resnet_exports_under_torchvisions_names_with_a_model_card(tmp_path):
    run = tmp_path / "run"
    pretrain(PretrainConfig(**{**TINY, "backbone": "resnet18", "amcl": True, "out": str(run)}))
    assert main(["eval", "--checkpoint", str(run), "--device", "cpu"]) == 0
    result = export_encoder(run / "last.ckpt")
    folder = run / "export"
    assert result["names"] == "torchvision" and result["weights"] == "encoder.safetensors"
    state = load_file(folder / "encoder.safetensors")
    assert state["conv1.weight"].shape == (64, 3, 3, 3) and "layer2.0.downsample.0.weight" in state
    assert not any(key.startswith(("stem", "stages", "fc.")) for key in state)
    card = (folder / "README.md").read_text()
    assert card.startswith("# resnet18 encoder pre-trained with simclr with AMCL (3 heads, softmax form")
    assert "model = torchvision.models.resnet18(); model.fc = torch.nn.Identity()" in card
    assert "model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False); model.maxpool = torch.nn.Identity()" in card
    knn = json.loads((run / "eval-knn.json").read_text())["top1"]
    assert f"| kNN top-1 (`amcl eval`) | {100 * knn:.2f}% |" in card and "16 px" in card
    encoder, _ = load_encoder(folder)  # and amcl reads torchvision's names back into its own module
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(encoder(x), load_pretrained(run).backbone(x))
    old = export_encoder(run / "last.ckpt", tmp_path / "own", format="amcl")
    assert old["names"] == "amcl" and "stem.0.weight" in load_file(tmp_path / "own" / "encoder.safetensors")
    with pytest.raises(AmclError, match="--format timm: a ResNet has no timm names"):
        export_encoder(run / "last.ckpt", tmp_path / "timm", format="timm")


def test_an_export_of_an_earlier_version_still_loads(digits_run, tmp_path):
    folder = tmp_path / "old"
    export_encoder(digits_run, folder, format="amcl")
    info = json.loads((folder / "encoder.json").read_text())
    torch.save(load_file(folder / "encoder.safetensors"), folder / "encoder.pt")
    (folder / "encoder.safetensors").unlink()
    for key in ("weights", "names"):  # encoder.json of earlier versions: encoder.pt under amcl's names
        info.pop(key)
    (folder / "encoder.json").write_text(json.dumps(info))
    encoder, _ = load_encoder(folder)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(encoder(x), load_pretrained(digits_run).backbone(x))


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
    weights = tmp_path / "exp" / "encoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AmclError, match="export the encoder again"):
        load_encoder(tmp_path / "exp")
