"""Real, short pre-training runs on the bundled digits: loss falls, kNN beats chance, outputs parse."""

import json
import math

import pytest
import torch
import yaml

from amcl.config import PretrainConfig
from amcl.train import pretrain
from builders import tiny_config


def read_metrics(path):
    return json.loads((path / "metrics.json").read_text())


@pytest.fixture
def baseline_run(digits_baseline_run):  # conftest.py: trained once per session
    return digits_baseline_run


@pytest.fixture
def amcl_run(digits_amcl_run):
    return digits_amcl_run


@pytest.mark.slow
def test_baseline_loss_falls_and_knn_beats_chance(baseline_run):
    out, summary = baseline_run
    epochs = summary["epochs"]
    assert len(epochs) == 5
    assert epochs[-1]["loss"] < epochs[0]["loss"] - 0.05
    assert summary["best_knn_acc"] > 0.6  # chance is 0.1 on 10 classes
    assert summary["best_knn_acc"] == max(e["knn_acc"] for e in epochs)


@pytest.mark.slow
def test_outputs_exist_and_parse(baseline_run):
    out, summary = baseline_run
    assert read_metrics(out) == json.loads(json.dumps({k: v for k, v in summary.items() if k != "time_s"}))
    run = json.loads((out / "run.json").read_text())  # clock times and versions beside the metrics
    assert run["time_s"] == summary["time_s"] > 0 and len(run["epoch_seconds"]) == 5
    assert run["versions"]["torch"] == torch.__version__.split("+")[0] or run["versions"]["torch"] == torch.__version__
    assert run["versions"]["amcl"] and run["versions"]["lightning"] and run["resumed"] is False
    config = PretrainConfig(**yaml.safe_load((out / "config.yaml").read_text()))
    assert config.epochs == 5 and config.heads == 1 and config.lr == 0.06 and config.temperature == 0.5
    checkpoint = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 5 * (1438 // 128)  # drop_last batches of 128 from 1438 images
    assert any(k.startswith("backbone.") for k in checkpoint["state_dict"])
    assert checkpoint["hyper_parameters"]["config"]["method"] == "simclr"


@pytest.mark.slow
def test_amcl_run_learns_temperatures_within_bounds(amcl_run):
    out, summary = amcl_run
    epochs = summary["epochs"]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert summary["best_knn_acc"] > 0.6
    for e in epochs:
        assert 1e-3 <= e["tau_pos_mean"] <= 1.5 and 1e-3 <= e["tau_neg_mean"] <= 1.5
    state = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert "temperature_net.phi.0.weight" in state
    assert state["projector.first.weight"].shape[0] == 3 * 512  # three heads in one batched layer


@pytest.mark.slow
def test_max_steps_and_repeated_runs_summary(tmp_path):
    summary = pretrain(tiny_config(epochs=3, max_steps=4, runs=2, seed=5, out=str(tmp_path)))
    runs = [read_metrics(tmp_path / f"seed-{seed}") for seed in (5, 6)]
    assert all(r["epochs"][-1]["step"] == 4 for r in runs)
    assert summary["seeds"] == [5, 6]
    finals = [r["final_loss"] for r in runs]
    assert summary["final_loss"]["values"] == finals
    assert summary["final_loss"]["mean"] == pytest.approx(sum(finals) / 2)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_summarize_runs_mean_and_sample_std():
    from amcl.runs import summarize_runs

    runs = [
        {"final_loss": 1.0, "final_knn_acc": 0.5, "best_knn_acc": 0.6, "time_s": 2.0,
         "epochs": [{"epoch": 0, "loss": 1.0, "tau_pos_mean": 0.2}]},
        {"final_loss": 3.0, "final_knn_acc": 0.7, "best_knn_acc": 0.9, "time_s": 4.0,
         "epochs": [{"epoch": 0, "loss": 3.0, "tau_pos_mean": 0.4}]},
        {"final_loss": 5.0, "final_knn_acc": None, "best_knn_acc": 0.6, "time_s": 6.0,
         "epochs": [{"epoch": 0, "loss": 5.0}]},
    ]
    summary = summarize_runs(runs)
    assert summary["final_loss"] == {"mean": 3.0, "std": 2.0, "values": [1.0, 3.0, 5.0]}  # sqrt((4+0+4)/2)
    assert summary["best_knn_acc"]["mean"] == pytest.approx(0.7)
    assert summary["best_knn_acc"]["std"] == pytest.approx((2 * 0.1**2 + 0.2**2) ** 0.5 / 2**0.5)
    assert summary["final_knn_acc"]["values"] == [0.5, 0.7]  # the run without kNN is left out
    assert summary["final_tau_pos_mean"]["mean"] == pytest.approx(0.3)
    assert summary["final_tau_pos_mean"]["std"] == pytest.approx(0.1 * 2**0.5)
    assert "final_epoch" not in summary and "final_knn_acc" in summary
    assert summarize_runs(runs[:1])["final_loss"]["std"] == 0.0
    # a diverged run's nan loss (kept by --on-nonfinite skip) makes mean and std nan, and nothing raises
    diverged = summarize_runs([runs[0], {**runs[1], "final_loss": float("nan")}])
    assert math.isnan(diverged["final_loss"]["mean"]) and math.isnan(diverged["final_loss"]["std"])
    assert diverged["best_knn_acc"]["mean"] == pytest.approx(0.75)


@pytest.mark.slow
def test_constant_temperature_ablation_has_no_temperature_net(tmp_path):
    config = tiny_config(epochs=1, max_steps=2, amcl=True, temperature_mode="constant", out=str(tmp_path))
    summary = pretrain(config)
    state = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert not any(k.startswith("temperature_net") for k in state)
    assert summary["epochs"][-1]["tau_pos_mean"] == pytest.approx(0.5)


@pytest.mark.slow
def test_amcl_trains_under_bfloat16_mixed_precision(tmp_path):
    summary = pretrain(tiny_config(epochs=1, max_steps=3, amcl=True, precision="bf16-mixed", out=str(tmp_path)))
    record = summary["epochs"][-1]
    assert record["step"] == 3 and 0.0 <= record["knn_acc"] <= 1.0
    assert all(map(lambda v: v == v, record.values()))  # no NaN anywhere


@pytest.mark.slow
def test_rerun_with_overwrite_into_the_same_folder_replaces_the_checkpoint(tmp_path):
    for steps in (1, 2):  # without --overwrite the second run is refused (tests/test_runs.py)
        pretrain(tiny_config(epochs=1, max_steps=steps, out=str(tmp_path)), overwrite=True)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 2


def test_split_seed_fixes_the_split_and_seed_varies_only_the_training():
    from amcl.data.datasets import load_configured_dataset

    base = tiny_config(epochs=1).resolved()
    same_split = [load_configured_dataset(PretrainConfig(**{**base.__dict__, "seed": s})) for s in (0, 7)]
    assert torch.equal(same_split[0].test_labels, same_split[1].test_labels)
    assert torch.equal(same_split[0].train_images, same_split[1].train_images)
    other = load_configured_dataset(PretrainConfig(**{**base.__dict__, "split_seed": 1}))
    assert not torch.equal(other.test_labels, same_split[0].test_labels)
    assert len(other.test_labels) == len(same_split[0].test_labels)


@pytest.mark.slow
def test_grad_clip_limits_every_update(tmp_path):
    """--grad-clip N clips the global gradient norm before each optimiser step: with a tiny N the weights move
    by (almost) only weight decay, without it they move by the gradients."""

    def movement(clip):
        weights = []
        for steps in (1, 2):
            out = tmp_path / f"{clip}-{steps}"
            pretrain(tiny_config(epochs=1, max_steps=steps, grad_clip=clip, weight_decay=0.0, out=str(out)))
            state = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
            weights.append(torch.cat([v.flatten() for k, v in state.items() if k.startswith("backbone.") and
                                      v.is_floating_point() and "running_" not in k]))  # parameters, not BN stats
        return float((weights[1] - weights[0]).norm())  # what the second step changed

    clip = 1e-6
    clipped, free = movement(clip), movement(None)
    assert free > 1e-3
    # SGD with momentum 0.9: the second step moves by lr * (0.9 * g1 + g2), each |g| <= clip
    assert clipped <= 0.06 * 1.9 * clip * 1.01 and clipped > 0


# --------------------------------------------------------------------------- what a run prints


def test_outside_a_terminal_a_run_prints_one_line_per_epoch_and_the_knn_k(tmp_path, capfd):
    """Under pytest stderr is no terminal, so the default (progress None) is the per-epoch lines: no
    carriage-return redraws, one line per epoch with the figures the README shows."""
    from amcl.cli import main

    assert main(["pretrain", "--dataset", "digits", "--backbone", "small_cnn", "--image-size", "16",
                 "--batch-size", "256", "--epochs", "3", "--out", str(tmp_path / "run")]) == 0
    out, err = capfd.readouterr()
    assert "\r" not in out + err
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    for line in lines:
        assert all(part in line for part in ("loss ", "kNN ", "lr ", " s/epoch", " left")), line
    assert lines[-1].endswith("0:00 left")
    # no --knn-k: one neighbour per 70 of the 1438 labelled training images
    assert "(kNN monitor with k = 20 neighbours)" in out
    assert read_metrics(tmp_path / "run")["knn_k"] == 20


def test_the_bar_is_chosen_by_the_option_or_the_terminal(monkeypatch):
    import sys

    from amcl.callbacks import shows_bar

    assert shows_bar(PretrainConfig(progress=True)) and not shows_bar(PretrainConfig(progress=False))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert shows_bar(PretrainConfig())
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not shows_bar(PretrainConfig())


@pytest.mark.parametrize("labelled,k", [(1, 1), (69, 1), (140, 2), (1438, 20), (14_000, 200), (50_000, 200)])
def test_default_knn_k_grows_with_the_bank(labelled, k):
    from amcl.knn import default_k

    assert default_k(labelled) == k
