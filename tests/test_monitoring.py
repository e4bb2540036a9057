"""Monitoring what AMCL learns: per-head temperature statistics, metrics.csv, curves.png, bound warnings."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from PIL import Image

from amcl.config import PretrainConfig
from amcl.errors import AmclWarning
from amcl.methods.barlow_twins import channel_statistics
from amcl.monitoring import EpochStatistics, temperature_statistics
from amcl.train import pretrain
from builders import tiny_config


def test_temperature_statistics_on_crafted_tensors():
    positive = torch.tensor([[0.1, 0.5, 2.0, 1.0], [0.3, 0.3, 0.3, 0.3]])  # [C=2, N=4]
    negative = torch.tensor([[[0.1, 0.2], [0.4, 0.4], [2.0, 1.0], [0.5, 0.5]],
                             [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])  # [C=2, N=4, k=2]
    sims = torch.tensor([[0.9, 0.7, 0.5, 0.3], [1.0, 1.0, 0.0, 0.0]])
    negative_sims = -sims.unsqueeze(-1).expand(2, 4, 2)  # each anchor's 2 negatives, shaped like their temperatures
    stats = {k: float(v) for k, v in temperature_statistics(0.1, 2.0, positive, negative, sims, negative_sims).items()}
    assert stats["head1/tau_pos_mean"] == pytest.approx(3.6 / 4)
    assert (stats["head1/tau_pos_min"], stats["head1/tau_pos_max"]) == pytest.approx((0.1, 2.0))
    assert stats["head1/tau_neg_mean"] == pytest.approx(5.1 / 8)
    assert stats["head2/tau_neg_min"] == stats["head2/tau_neg_max"] == 1.0
    # head 1: 12 temperatures, 2 at tau_min (0.1, 0.1) and 2 at tau_max (2.0, 2.0); head 2: none
    assert stats["head1/share_at_tau_min"] == pytest.approx(2 / 12)
    assert stats["head1/share_at_tau_max"] == pytest.approx(2 / 12)
    assert stats["head2/share_at_tau_min"] == stats["head2/share_at_tau_max"] == 0.0
    assert stats["head1/sim_pos_mean"] == pytest.approx(0.6) and stats["head2/sim_neg_mean"] == pytest.approx(-0.5)


def test_statistics_of_full_matrices_keep_only_the_masked_negatives():
    """The softmax form passes whole [C, N, M] matrices and a mask of the negatives."""
    negative = torch.tensor([[[9.0, 0.2, 0.4], [0.6, 9.0, 0.8]]])  # [C=1, N=2, M=3]; 9 marks non-negatives
    mask = torch.tensor([[False, True, True], [True, False, True]])
    sims = torch.tensor([[[1.0, 0.5, -0.5], [0.1, 1.0, 0.3]]])
    positive = torch.tensor([[0.3, 0.5]])
    stats = {k: float(v) for k, v in temperature_statistics(
        0.2, 2.0, positive, negative, torch.tensor([[0.9, 0.7]]), sims, mask).items()}
    assert stats["head1/tau_neg_mean"] == pytest.approx((0.2 + 0.4 + 0.6 + 0.8) / 4)
    assert (stats["head1/tau_neg_min"], stats["head1/tau_neg_max"]) == pytest.approx((0.2, 0.8))
    assert stats["head1/sim_neg_mean"] == pytest.approx((0.5 - 0.5 + 0.1 + 0.3) / 4)
    assert stats["head1/share_at_tau_min"] == pytest.approx(1 / 6)  # 0.2 among 2 positives + 4 negatives
    taus = [0.3, 0.5, 0.2, 0.4, 0.6, 0.8]
    similarities = [0.9, 0.7, 0.5, -0.5, 0.1, 0.3]
    mean = sum(taus) / 6
    std = math.sqrt(sum((t - mean) ** 2 for t in taus) / 6)
    assert stats["head1/tau_spread"] == pytest.approx(std / mean, rel=1e-5)
    s_mean = sum(similarities) / 6
    s_std = math.sqrt(sum((s - s_mean) ** 2 for s in similarities) / 6)
    covariance = sum((t - mean) * (s - s_mean) for t, s in zip(taus, similarities)) / 6
    assert stats["head1/tau_sim_corr"] == pytest.approx(covariance / (std * s_std), rel=1e-5)


def test_one_temperature_for_every_pair_has_no_spread_and_no_correlation():
    positive = torch.full((2, 4), 0.7)
    negative = torch.full((2, 4, 3), 0.7)
    sims = torch.randn(2, 4), torch.randn(2, 4, 3)
    stats = temperature_statistics(1e-5, 2.0, positive, negative, *sims)
    assert stats["head1/tau_spread"].item() == pytest.approx(0.0, abs=1e-6)
    assert stats["head2/tau_sim_corr"].item() == 0.0
    # temperatures that fall as similarity rises: correlation -1
    sims = torch.linspace(-1, 1, 8).view(1, 8)
    stats = temperature_statistics(1e-5, 2.0, 1.0 - 0.4 * sims, positive_similarities=sims)
    assert stats["head1/tau_sim_corr"].item() == pytest.approx(-1.0, abs=1e-5)
    assert stats["head1/tau_spread"].item() > 0.2


def test_epoch_statistics_reduce_means_mins_and_maxes():
    running = EpochStatistics()
    running.update({"head1/tau_pos_mean": torch.tensor(1.0), "head1/tau_pos_min": torch.tensor(0.5),
                    "head1/tau_pos_max": torch.tensor(1.5)})
    running.update({"head1/tau_pos_mean": torch.tensor(3.0), "head1/tau_pos_min": torch.tensor(0.2),
                    "head1/tau_pos_max": torch.tensor(1.2)})
    assert running.compute() == {"head1/tau_pos_mean": 2.0, "head1/tau_pos_min": pytest.approx(0.2),
                                 "head1/tau_pos_max": 1.5}
    running.reset()
    assert running.compute() == {}


def test_barlow_channel_statistics_split_diagonal_and_off_diagonal():
    taus = torch.tensor([[[0.1, 0.5, 0.7], [0.2, 0.4, 2.0], [0.9, 0.3, 0.6]]])  # [C=1, d=3, d=3]
    stats = {k: float(v) for k, v in channel_statistics(taus, 0.1, 2.0).items()}
    assert stats["head1/tau_pos_mean"] == pytest.approx((0.1 + 0.4 + 0.6) / 3)
    assert stats["head1/tau_neg_mean"] == pytest.approx((0.5 + 0.7 + 0.2 + 2.0 + 0.9 + 0.3) / 6)
    assert (stats["head1/tau_neg_min"], stats["head1/tau_neg_max"]) == pytest.approx((0.2, 2.0))
    assert (stats["head1/tau_pos_min"], stats["head1/tau_pos_max"]) == pytest.approx((0.1, 0.6))
    assert stats["head1/share_at_tau_min"] == pytest.approx(1 / 9)
    assert stats["head1/share_at_tau_max"] == pytest.approx(1 / 9)


@pytest.fixture
def amcl_run(digits_amcl_run):  # conftest.py: 3 heads, tau in [1e-3, 1.5], 4 epochs, trained once per session
    return digits_amcl_run


@pytest.mark.slow
def test_epochs_hold_per_head_statistics_and_the_learning_rate(amcl_run):
    out, summary = amcl_run
    for record in summary["epochs"]:
        for head in ("head1", "head2", "head3"):
            low, mean, high = (record[f"{head}/tau_pos_{k}"] for k in ("min", "mean", "max"))
            assert 1e-3 <= low <= mean <= high <= 1.5
            assert 0 <= record[f"{head}/share_at_tau_min"] <= 1 and -1 <= record[f"{head}/sim_neg_mean"] <= 1
        assert "head4/tau_pos_mean" not in record
    total = 4 * (1438 // 128)
    for record in summary["epochs"]:  # the learning rate after the epoch's last step, per-step cosine
        assert record["lr"] == pytest.approx(0.06 * 0.5 * (1 + math.cos(math.pi * record["step"] / total)), abs=1e-9)


@pytest.mark.slow
def test_csv_and_curves_hold_the_logged_values(amcl_run):
    out, summary = amcl_run
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    assert len(rows) == len(epochs) == 4
    for row, record in zip(rows, epochs):
        assert {k: float(v) for k, v in row.items() if v != ""} == pytest.approx(record)
    with Image.open(out / "curves.png") as image:
        assert image.width > 800 and image.height > 300


@pytest.mark.slow
def test_most_temperatures_on_a_bound_warns_once(tmp_path):
    """Adaptive positive temperatures only (the paper's ablation) collapse onto tau_min within a few dozen
    steps on digits: the run warns, once."""
    config = tiny_config(epochs=3, knn_k=10, amcl=True, amcl_form="hardest", heads=1, temperature_mode="positive",
                         temperature=0.2, out=str(tmp_path))
    with pytest.warns(AmclWarning, match=r"of head1's temperatures sit at tau_min = 1e-05 in epoch") as record:
        summary = pretrain(config)
    assert len([w for w in record if "sit at tau_min" in str(w.message)]) == 1
    assert summary["epochs"][-1]["head1/share_at_tau_min"] > 0.5


def test_siamese_temperatures_resting_on_a_bound_do_not_warn(tmp_path):
    """SimSiam's and Barlow Twins' temperatures run to a bound by construction (Eq. 2.2 / 2.3), whatever the
    bounds, so that is no warning sign for them (their collapse shows in the similarities); for SimCLR and
    MoCo both bounds are."""
    import warnings

    from amcl.callbacks import MetricsRecorder

    def warnings_for(method, bound, **options):
        config = PretrainConfig(method=method, amcl=True, **options).resolved()
        record = {"epoch": 4, f"head1/share_at_tau_{bound}": 0.9}  # records count epochs from 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            MetricsRecorder(tmp_path / "metrics.json")._warn_about_bounds(record, config)
        return [str(w.message) for w in caught if "sit at tau_" in str(w.message)]

    for method in ("simsiam", "barlow_twins"):  # whatever the bounds (--tau-min 0.1 is a documented setting)
        for options in ({}, {"tau_min": 0.1}, {"tau_min": 1e-5}):
            assert warnings_for(method, "min", **options) == [] and warnings_for(method, "max", **options) == []
    assert "90% of head1's temperatures sit at tau_min = 0.05 in epoch 4" in warnings_for("simclr", "min")[0]
    assert warnings_for("moco", "max")


def test_similar_positives_and_negatives_warn_of_collapse_once_for_all_heads(tmp_path):
    import warnings

    from amcl.callbacks import MetricsRecorder

    recorder = MetricsRecorder(tmp_path / "metrics.json")
    collapsed = {"epoch": 1, "head1/sim_pos_mean": 0.95, "head1/sim_neg_mean": 0.97,
                 "head2/sim_pos_mean": 0.99, "head2/sim_neg_mean": 0.93,
                 "head3/sim_pos_mean": 0.97, "head3/sim_neg_mean": 0.20}  # head3 separates: no collapse
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recorder._warn_about_collapse(collapsed)
        recorder._warn_about_collapse({**collapsed, "epoch": 2})  # said once
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert messages[0].startswith("projections are collapsing in epoch 1: mean similarity of positive and negative "
                                  "pairs head1 0.950 and 0.970; head2 0.990 and 0.930, so all images map")
    assert "head3" not in messages[0]


def test_curves_name_the_methods_pairs_use_whole_epochs_and_stay_readable_with_many_heads(tmp_path):
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    from amcl.monitoring import MAX_PLOTTED_HEADS, plot_curves

    heads = {f"head{c}/{key}": 0.5 for c in range(1, 201) for key in ("tau_pos_mean", "tau_neg_mean",
                                                                        "sim_pos_mean", "sim_neg_mean")}
    epochs = [{"epoch": 0, "loss": 5.0, "knn_acc": 0.9, "lr": 0.1, **heads}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. matplotlib's "constrained_layout not applied"
        plot_curves(tmp_path / "curves.png", epochs, "barlow_twins AMCL, 200 heads",
                    ("diagonal channel pairs", "off-diagonal channel pairs"))
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert MAX_PLOTTED_HEADS == 8


def test_simsiam_curves_have_no_negative_panel(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from amcl.monitoring import plot_curves

    titles: list[str] = []
    real_savefig = Figure.savefig

    def record_titles(fig, *args, **kwargs):
        titles.extend(ax.get_title() for ax in fig.axes if ax.get_visible())
        ticks = [tick for ax in fig.axes if ax.get_visible() for tick in ax.get_xticks()]
        assert ticks and all(float(t).is_integer() for t in ticks)  # whole epochs on every x axis
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record_titles)
    epochs = [{"epoch": 0, "loss": 1.0, "head1/tau_pos_mean": 1.0, "head1/sim_pos_mean": 0.5}]
    plot_curves(tmp_path / "curves.png", epochs, "simsiam", ("positive pairs", None))
    assert "temperature of positive pairs" in titles and "similarity of positive pairs" in titles
    assert not [t for t in titles if "negative" in t]
