"""``amcl analyze``: the overlap and AUC measures, the derangement of negatives, the temperatures each
method's loss would use, and the command end to end on tiny digits checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amcl.cli import main
from amcl.config import PretrainConfig
from amcl.eval.analysis import (
    PairFeatures,
    analyze_checkpoint,
    derangement,
    distribution_overlap,
    pair_temperatures_by_head,
    separation_auc,
)
from amcl.methods import METHOD_CLASSES
from amcl.train import pretrain
from builders import SMALL_HEADS, tiny_options

TINY = tiny_options(batch_size=64, epochs=1, max_steps=3, knn_k=10)
AMCL = dict(amcl=True, tau_min=0.01, tau_max=1.5)


# --------------------------------------------------------------------------- overlap and AUC


def test_overlap_of_identical_and_disjoint_samples() -> None:
    x = np.random.default_rng(0).normal(size=1000)
    assert distribution_overlap(x, x) == pytest.approx(1.0)
    assert distribution_overlap(x, x.copy(), bins=7, value_range=(-1, 1)) == pytest.approx(1.0)  # clipped ends
    assert distribution_overlap(np.linspace(0, 0.99, 50), np.linspace(2, 3, 50), bins=30) == 0.0
    assert distribution_overlap([0.5, 0.5], [0.5]) == pytest.approx(1.0)  # one value: one narrow range
    assert distribution_overlap([0.0, 0.1], [0.9, 1.0], bins=4) == 0.0


def test_overlap_of_shifted_uniforms_is_one_half_and_symmetric() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 1, 100_000), rng.uniform(0.5, 1.5, 80_000)
    for bins in (3, 6, 12):  # bin edges on multiples of 0.5 over (0, 1.5)
        assert distribution_overlap(a, b, bins=bins, value_range=(0, 1.5)) == pytest.approx(0.5, abs=0.01)
    assert distribution_overlap(a, b, bins=30) == pytest.approx(0.5, abs=0.02)  # data range, about aligned
    x, y = rng.normal(0, 1, 500), rng.normal(0.7, 2, 300)
    assert distribution_overlap(x, y, bins=17) == distribution_overlap(y, x, bins=17)
    assert 0 < distribution_overlap(x, y, bins=17) < 1
    assert distribution_overlap(torch.tensor(x), torch.tensor(y), bins=17) == distribution_overlap(x, y, bins=17)


def test_overlap_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="bin"):
        distribution_overlap([1.0], [2.0], bins=0)
    with pytest.raises(ValueError, match="empty"):
        distribution_overlap([], [2.0])
    with pytest.raises(ValueError, match="low < high"):
        distribution_overlap([1.0], [2.0], value_range=(1, 1))


def test_auc_of_separated_identical_and_tied_samples() -> None:
    low, high = np.linspace(0, 1, 40), np.linspace(2, 3, 30)
    assert separation_auc(high, low) == 1.0 and separation_auc(low, high) == 0.0
    x = np.random.default_rng(2).normal(size=300)
    assert separation_auc(x, x) == pytest.approx(0.5)
    rng = np.random.default_rng(3)  # integers: many ties, each counting one half
    pos, neg = rng.integers(0, 6, 50), rng.integers(0, 4, 70)
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (50 * 70)
    assert separation_auc(pos, neg) == pytest.approx(brute, abs=1e-12)


def test_derangement_is_a_seeded_permutation_without_fixed_points() -> None:
    for n in (2, 3, 10, 1000):
        perm = derangement(n, torch.Generator().manual_seed(n))
        assert perm.dtype == torch.int64 and torch.equal(perm.sort().values, torch.arange(n))
        assert not (perm == torch.arange(n)).any()
    same = [derangement(1000, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*same)
    assert not torch.equal(same[0], derangement(1000, torch.Generator().manual_seed(8)))
    with pytest.raises(ValueError):
        derangement(1)


# --------------------------------------------------------------------------- temperatures as each loss uses them


def _model(method: str, **options):
    config = PretrainConfig(method=method, backbone="small_cnn", batch_size=8, **AMCL, **SMALL_HEADS, **options)
    return METHOD_CLASSES[method](config.resolved(), 10).eval()


def _features(model, n: int = 8) -> PairFeatures:
    g = torch.Generator().manual_seed(0)
    c, d = model.config.heads, model.config.proj_dim
    z1, z2, p1 = (torch.randn(c, n, d, generator=g) for _ in range(3))
    return PairFeatures(torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g), z1, z2, p1)


@pytest.mark.parametrize("mode", ["adaptive", "positive", "negative"])
def test_simclr_temperatures_follow_the_ablation_mode(mode: str) -> None:
    model = _model("simclr", temperature_mode=mode, temperature=0.3)
    features, partner = _features(model), derangement(8, torch.Generator().manual_seed(0))
    by_head, kind = pair_temperatures_by_head(model, features, partner)
    net = model.temperature_net
    assert kind == "pair" and len(by_head) == 3
    with torch.no_grad():
        positive = net.paired_temperatures(features.z1, features.z2)
        negative = net.paired_temperatures(features.z1, features.z2[:, partner])
    for c, taus in enumerate(by_head):
        if mode == "negative":
            assert taus.positive == 0.3
        else:
            torch.testing.assert_close(taus.positive, positive[c])
        if mode == "positive":
            assert taus.negative == 0.3
        else:
            torch.testing.assert_close(taus.negative, negative[c])


def test_simsiam_temperatures_read_the_prediction_and_constant_mode_learns_none() -> None:
    model = _model("simsiam")
    features, partner = _features(model), torch.arange(8).roll(1)
    by_head, _ = pair_temperatures_by_head(model, features, partner)
    with torch.no_grad():
        expected = model.temperature_net.paired_temperatures(features.p1, features.z2)
    torch.testing.assert_close(by_head[1].positive, expected[1])
    assert pair_temperatures_by_head(_model("simclr", temperature_mode="constant"), features, partner) == (None,
                                                                                                          "constant")


def test_barlow_twins_temperatures_are_the_channel_matrix_split_into_diagonal_and_off_diagonal() -> None:
    model = _model("barlow_twins", temperature_mode="positive")
    features = _features(model, n=10)
    by_head, kind = pair_temperatures_by_head(model, features, torch.arange(10).roll(1))
    with torch.no_grad():
        taus = model.channel_temperatures(features.z1[:, :8], features.z2[:, :8])  # batch_size 8 of 10
    assert kind == "channel"
    torch.testing.assert_close(by_head[0].positive, torch.diagonal(taus[0]))
    assert by_head[0].negative == model.config.temperature  # positive-only mode: off-diagonal constant
    too_few, reason = pair_temperatures_by_head(model, _features(model, n=5), torch.arange(5).roll(1))
    assert too_few is None and "need 8 images" in reason


# --------------------------------------------------------------------------- the command end to end


def _pretrain(tmp_path_factory, name: str, **options) -> Path:
    out = tmp_path_factory.mktemp(name)
    pretrain(PretrainConfig(out=str(out), **{**TINY, **options}))
    return out / "last.ckpt"


@pytest.fixture(scope="module")
def simclr_amcl(tmp_path_factory) -> Path:
    return _pretrain(tmp_path_factory, "simclr-amcl", **AMCL)


@pytest.fixture(scope="module")
def simclr_baseline(tmp_path_factory) -> Path:
    return _pretrain(tmp_path_factory, "simclr-baseline")


def _check_panel(panel: dict, pairs: int, bins: int = 40) -> None:
    for kind in ("positive", "negative"):
        values = np.asarray(panel[kind]["values"])
        assert values.shape == (pairs,) and (values >= -1).all() and (values <= 1).all()
        assert panel[kind]["mean"] == pytest.approx(values.mean()) and panel[kind]["std"] == pytest.approx(values.std())
        assert sum(panel["histogram"][kind]) == pairs
    assert len(panel["histogram"]["edges"]) == bins + 1
    assert 0 <= panel["overlap"] <= 1 and 0 <= panel["auc"] <= 1
    edges = panel["histogram"]["edges"]
    assert panel["overlap"] == pytest.approx(distribution_overlap(panel["positive"]["values"],
                                                                  panel["negative"]["values"], bins,
                                                                  (edges[0], edges[-1])))
    assert panel["auc"] == pytest.approx(separation_auc(panel["positive"]["values"], panel["negative"]["values"]))


def _check_outputs(checkpoint: Path, capsys, *extra: str, pairs: int = 100) -> dict:
    assert main(["analyze", "--checkpoint", str(checkpoint), "--pairs", str(pairs), *extra]) == 0
    printed = capsys.readouterr().out
    assert "backbone overlap" in printed and "analysis.json" in printed
    folder = checkpoint.parent / "analysis"
    result = json.loads((folder / "analysis.json").read_text())
    for name in result["figures"].values():
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.size[0] > 200
    heads = _saved_config(checkpoint)["heads"]
    assert result["num_heads"] == len(result["heads"]) == heads
    _check_panel(result["backbone"], result["pairs"], result["bins"])
    for head in result["heads"]:
        _check_panel(head, result["pairs"], result["bins"])
    return result


def _saved_config(checkpoint: Path) -> dict:
    import yaml

    return yaml.safe_load((checkpoint.parent / "config.yaml").read_text())


def _check_temperatures(result: dict, tau_min: float = 0.01, tau_max: float = 1.5) -> None:
    assert result["temperature"]["learned"] and "temperature" in result["figures"]
    for head in result["heads"]:
        temps = head["temperature"]
        # binned over the head's own range (both sides), not over the whole bounds
        low = min(temps[side]["min"] for side in ("positive", "negative"))
        high = max(temps[side]["max"] for side in ("positive", "negative"))
        if high - low > 1e-6 * high:
            assert temps["edges"][0] == pytest.approx(low) and temps["edges"][-1] == pytest.approx(high)
        else:  # one value: a narrow bin around it
            assert temps["edges"][0] <= low <= high <= temps["edges"][-1] <= high * 1.0011
        spacing = np.diff(temps["edges"])
        assert np.allclose(spacing, spacing[0]) or high / low > 10  # equal-width unless it spans a decade
        for side in ("positive", "negative"):
            info = temps[side]
            assert info["adaptive"] and tau_min <= info["min"] <= info["mean"] <= info["max"] <= tau_max
            assert 0 <= info["share_at_min"] <= 1 and 0 <= info["share_at_max"] <= 1
            assert sum(info["counts"]) == info["count"]


@pytest.mark.slow
def test_amcl_simclr_analysis_writes_sane_figures_and_json(simclr_amcl, capsys) -> None:
    result = _check_outputs(simclr_amcl, capsys)
    assert result["method"] == "simclr" and result["amcl"] and result["pairs"] == 100 and result["notes"] == []
    assert result["policy"] == "acde" and result["temperature"]["kind"] == "pair"
    _check_temperatures(result)
    for head in result["heads"]:
        assert head["temperature"]["positive"]["count"] == 100 and len(head["temperature"]["positive"]["values"]) == 100
    folder = simclr_amcl.parent / "analysis"
    assert sorted(p.name for p in folder.iterdir()) == ["analysis.json", "overlap.png", "similarity-histograms.png",
                                                        "temperature-histograms.png"]


@pytest.mark.slow
def test_baseline_analysis_has_no_temperature_figure_and_is_seeded(simclr_baseline, tmp_path, capsys) -> None:
    result = _check_outputs(simclr_baseline, capsys, "--augs", "e")
    assert result["num_heads"] == 1 and not result["temperature"]["learned"]
    assert result["temperature"]["constant"] == 0.5 and result["heads"][0]["temperature"] is None
    assert "temperature" not in result["figures"]
    assert not (simclr_baseline.parent / "analysis" / "temperature-histograms.png").exists()
    # two views of one image (a flip at most) are more alike than views of two different images
    assert result["backbone"]["positive"]["mean"] > result["backbone"]["negative"]["mean"]
    assert result["backbone"]["auc"] > 0.6
    again = analyze_checkpoint(simclr_baseline, tmp_path / "again", pairs=100, augs="e", device="cpu")
    assert again["files"] == [str(tmp_path / "again" / n) for n in
                              ("similarity-histograms.png", "overlap.png", "analysis.json")]
    saved = json.loads((tmp_path / "again" / "analysis.json").read_text())
    assert saved == result  # the same numbers, to the last bit
    other = analyze_checkpoint(simclr_baseline, tmp_path / "other", pairs=100, augs="e", seed=1, device="cpu")
    assert other["backbone"]["positive"]["values"] != result["backbone"]["positive"]["values"]


@pytest.mark.slow
def test_fewer_held_out_images_than_pairs_uses_them_all_and_says_so(simclr_baseline, tmp_path) -> None:
    with pytest.warns(Warning, match="359 positive and 359 negative pairs instead of 500"):  # on the console too
        result = analyze_checkpoint(simclr_baseline, tmp_path, pairs=500, bins=10, device="cpu")
    assert result["pairs"] == result["held_out_images"] == 359 and result["pairs_requested"] == 500
    assert "359 positive and 359 negative pairs instead of 500" in result["notes"][0]
    _check_panel(result["heads"][0], 359, bins=10)


@pytest.mark.slow
def test_simsiam_and_barlow_twins_amcl_analyses(tmp_path_factory, capsys) -> None:
    simsiam = _pretrain(tmp_path_factory, "simsiam", method="simsiam", predictor_hidden=32, **AMCL, **SMALL_HEADS)
    result = _check_outputs(simsiam, capsys)
    _check_temperatures(result)
    assert "SimSiam" in result["temperature"]["note"]
    barlow = _pretrain(tmp_path_factory, "barlow", method="barlow_twins", **AMCL, **SMALL_HEADS)
    result = _check_outputs(barlow, capsys, "--bins", "12", pairs=80)  # 80 pairs, 64 (its batch) for tau_lm
    _check_temperatures(result)
    temps = result["heads"][0]["temperature"]
    assert result["temperature"]["kind"] == "channel" and temps["positive"]["count"] == 32
    assert temps["negative"]["count"] == 32 * 31 and len(temps["edges"]) == 13


def _folder_without_held_out(root: Path) -> Path:
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (60 * i, 90, 30)).save(root / "train" / c / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--pairs", "1"], "--pairs must be at least 2"),
        (["--bins", "1"], "--bins must be at least 2"),
        (["--augs", "axz"], "--augs: unknown augmentation code(s) 'x', 'z'"),
        (["--dataset", "folder", "--data-root", "{folder}"], "analyze needs held-out images: "),
        (["--checkpoint", "{missing}"], "checkpoint "),
    ],
)
@pytest.mark.slow
def test_bad_inputs_are_one_line_errors(simclr_baseline, tmp_path, capsys, args, fragment) -> None:
    folder = _folder_without_held_out(tmp_path / "data")
    args = [a.format(folder=folder, missing=tmp_path / "no.ckpt") for a in args]
    assert main(["analyze", "--checkpoint", str(simclr_baseline), *args]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("amcl: warning:")]
    assert len(lines) == 1 and lines[0].startswith(f"amcl analyze: error: {fragment}"), lines


@pytest.mark.slow
def test_image_folder_held_out_files_are_decoded_and_unreadable_ones_left_out(simclr_baseline, tmp_path) -> None:
    root = _folder_without_held_out(tmp_path / "data")
    (root / "val" / "a").mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (12, 12), (40 * i, 255 - 40 * i, 90)).save(root / "val" / "a" / f"{i}.png")
    (root / "val" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.warns(Warning):
        result = analyze_checkpoint(simclr_baseline, tmp_path / "out", pairs=10, bins=5, dataset="folder",
                                    data_root=str(root), workers=0, device="cpu")
    assert result["dataset"] == "data" and result["held_out_images"] == 6 and result["pairs"] == 6
    _check_panel(result["backbone"], 6, bins=5)


def test_temperature_bins_cover_each_heads_own_range():
    from amcl.eval.separation import temperature_edges

    narrow = temperature_edges([torch.tensor([0.41, 0.45, 0.5]), torch.tensor([0.44, 0.47])], 1e-5, 2.0, 4)
    assert narrow.tolist() == pytest.approx([0.41, 0.4325, 0.455, 0.4775, 0.5])  # equal-width within a decade
    wide = temperature_edges([torch.tensor([0.001, 0.1]), 0.5], 1e-5, 2.0, 2)  # a constant side is left out
    assert wide.tolist() == pytest.approx([0.001, 0.01, 0.1])  # log-spaced over two decades
    at_floor = temperature_edges([torch.full((5,), 0.05)], 0.05, 2.0, 2)
    assert at_floor[0] == pytest.approx(0.05) and 0.05 < at_floor[-1] <= 0.05 * 1.0011  # one value: a narrow bin
