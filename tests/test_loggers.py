"""What a run writes for the tools users already have: Lightning's loggers with one x-axis (the epoch, from 1),
epoch checkpoints to evaluate along training, and the lines a person reads (header, temperatures, 1-based epochs)."""

import csv
import importlib.util
import json
import re

import pytest

from amcl.cli import main
from amcl.errors import AmclError
from amcl.train import pretrain
from builders import cli_args, tiny_options

tensorboard = pytest.importorskip("tensorboard")  # in the test extra: the events are read back with its reader


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("logged")
    argv = ["pretrain", *cli_args(tiny_options(epochs=2, amcl=True, out=str(out))), "--logger", "tensorboard", "csv",
            "--save-every", "1"]
    return out, argv


@pytest.mark.slow
def test_loggers_get_every_metric_once_per_epoch_at_the_epoch(logged_run, capsys):
    out, argv = logged_run
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    header = printed[0]
    assert header.startswith("amcl pretrain: simclr + AMCL (softmax form, 3 heads, adaptive tau in [0.05, 2], beta ")
    assert "on digits (1438 training images, 16 px" in header and f"-> {out}" in header
    epoch_lines = [line for line in printed if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("tau positive " in line and ", negative " in line for line in epoch_lines)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss", "knn_acc", "lr", "head1/tau_pos_mean", "head3/sim_neg_mean", "global_step"} <= set(tags)
    for tag in tags:  # one axis: every metric at epochs 1 and 2, none at a global step
        assert [event.step for event in events.Scalars(tag)] == [1, 2], tag

    with open(out / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["step"] for row in rows] == ["1", "2"]
    for column in rows[0]:
        assert all(row[column] != "" for row in rows), column  # every metric has the same x values

    with open(out / "metrics.csv", newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]  # counted from 1, as the lines count
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]


@pytest.mark.slow
def test_save_every_keeps_epoch_checkpoints_that_evaluate_on_their_own(logged_run, capsys):
    out, argv = logged_run
    if not (out / "last.ckpt").is_file():
        assert main(argv) == 0
    assert (out / "epoch-1.ckpt").is_file() and (out / "epoch-2.ckpt").is_file()
    assert main(["eval", "--checkpoint", str(out / "epoch-1.ckpt"), "--device", "cpu"]) == 0
    assert main(["eval", "--checkpoint", str(out / "epoch-2.ckpt"), "--device", "cpu"]) == 0
    assert main(["eval", "--checkpoint", str(out), "--device", "cpu"]) == 0
    first = json.loads((out / "eval-knn-epoch-1.json").read_text())
    last = json.loads((out / "eval-knn.json").read_text())
    assert json.loads((out / "eval-knn-epoch-2.json").read_text())["top1"] == last["top1"]  # the same weights
    metrics = json.loads((out / "metrics.json").read_text())
    assert first["top1"] == pytest.approx(metrics["epochs"][0]["knn_acc"], abs=1e-6)  # epoch 1's own monitor


def test_a_logger_whose_package_is_missing_is_one_clear_error_before_anything_is_written(tmp_path, monkeypatch):
    import amcl.loggers

    if importlib.util.find_spec("mlflow") is not None:  # installed here: stand for a machine without it
        monkeypatch.setitem(amcl.loggers.LOGGER_PACKAGES, "mlflow", ("mlflow_not_installed",))
    with pytest.raises(AmclError, match=r"--logger mlflow needs the mlflow(_not_installed)? package, which is not "
                                        r"installed: pip install 'amcl\[mlflow\]' \(or drop mlflow from --logger\)"):
        pretrain(tiny_options_config(tmp_path, logger="csv,mlflow"))
    assert not (tmp_path / "run").exists()


def tiny_options_config(tmp_path, **options):
    from amcl.config import PretrainConfig

    return PretrainConfig(**tiny_options(epochs=1, out=str(tmp_path / "run"), **options))


@pytest.mark.slow
def test_a_cpu_run_that_would_take_hours_says_so_after_its_first_epoch(tmp_path, capsys):
    """The CIFAR recipe started on digits without a config runs 800 epochs: here 100,000 epochs stopped after the
    first (--max-steps: digits' 11 steps), whose pace says the rest would take hours."""
    argv = ["pretrain", *cli_args(tiny_options(epochs=100_000, max_steps=11, out=str(tmp_path / "run")))]
    assert main(argv) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "at this pace" in line]
    assert len(notes) == 1 and re.fullmatch(
        r"amcl: warning: at this pace \(\d+ s per epoch on the CPU\) the 100000 epochs take about \d+:\d\d:\d\d "
        r"\(h:mm:ss\); for a first try stop it \(Ctrl\+C\) and start a small run: --config configs/demo-digits.yaml"
        r", or fewer --epochs and a smaller --backbone \(README, 'Quick start'\)", notes[0]), notes
    assert main(["pretrain", *cli_args(tiny_options(epochs=2, max_steps=11, out=str(tmp_path / "short")))]) == 0
    assert "at this pace" not in capsys.readouterr().err  # a short run says nothing


@pytest.mark.slow
@pytest.mark.skipif(not all(importlib.util.find_spec(p) for p in ("wandb", "mlflow")),
                    reason="wandb and mlflow are optional extras (amcl[wandb], amcl[mlflow])")
def test_wandb_and_mlflow_log_offline_into_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert main(["pretrain", *cli_args(tiny_options(epochs=2, amcl=True, out=str(out))), "--logger", "wandb",
                 "mlflow"]) == 0
    assert list((out / "wandb").glob("offline-run-*"))  # W&B's offline mode: nothing leaves the machine
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out.resolve()}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("amcl").experiment_id])[0]
    for metric in ("loss", "knn_acc", "head1/tau_pos_mean"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2], metric
