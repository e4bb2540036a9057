"""Reliability: killed runs resume to the same metrics, checkpoints survive a kill during their write, the
same seed gives the same metrics.json, and a non-finite loss stops the run (or is skipped) with a report."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from amcl.cli import main
from amcl.config import PretrainConfig
from amcl.errors import AmclError
from amcl.methods import METHOD_CLASSES
from amcl.train import pretrain
from builders import tiny_argv, tiny_options

pytestmark = pytest.mark.slow  # real runs throughout: `amcl` in subprocesses, killed and resumed

# ~44 steps per epoch on digits: long enough to be killed in the middle of an epoch
RUN = tiny_argv(batch_size=32, epochs=3, knn_k=10)
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "0"}


def amcl(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amcl.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=300, **kwargs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted MoCo run (queue, momentum encoder and augmentations all carry state)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = amcl("pretrain", *RUN, "--method", "moco", "--queue-size", "256", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_same_seed_same_metrics_and_versions_recorded(reference, tmp_path):
    again = tmp_path / "again"
    assert amcl("pretrain", *RUN, "--method", "moco", "--queue-size", "256", "--out", str(again)).returncode == 0
    assert (again / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    run = json.loads((again / "run.json").read_text())
    assert {"python", "amcl", "torch", "lightning", "kornia", "numpy"} <= run["versions"].keys()
    assert "pretrain --dataset digits" in run["command"] and len(run["epoch_seconds"]) == 3
    assert "method: moco" in (again / "config.yaml").read_text()


def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(reference, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "amcl.cli", "pretrain", *RUN, "--method", "moco",
                                "--queue-size", "256", "--out", str(out)], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "last.ckpt").is_file() and time.time() < deadline:  # epoch 0 is done
        time.sleep(0.02)
    time.sleep(0.2)  # into epoch 1
    process.send_signal(signal.SIGKILL)
    process.wait()
    metrics = json.loads((out / "metrics.json").read_text())
    assert not metrics.get("complete") and len(metrics["epochs"]) < 3, "the run ended before it could be killed"
    done = amcl("pretrain", "--resume", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    assert json.loads((out / "run.json").read_text())["resumed"] is True
    resumed = torch.load(out / "last.ckpt", weights_only=True)["state_dict"]
    uninterrupted = torch.load(reference / "last.ckpt", weights_only=True)["state_dict"]
    for name in ("queue.features", "queue.pointer", "momentum_backbone.features.0.0.weight"):
        assert torch.equal(resumed[name], uninterrupted[name]), name
    # a finished run is left as it is
    before = (out / "last.ckpt").stat().st_mtime
    assert amcl("pretrain", "--resume", str(out)).returncode == 0
    assert (out / "last.ckpt").stat().st_mtime == before


_KILL_DURING_SECOND_SAVE = """
import os, signal, sys, torch
import amcl.checkpointing as c
saves, real_save = [], torch.save
def save(obj, f, *args, **kwargs):
    saves.append(1)
    if len(saves) == 2:  # the checkpoint of epoch 1: write half of it, then die
        import io
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
c.torch.save = save
from amcl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint(reference, tmp_path):
    out = tmp_path / "run"
    args = ["pretrain", *RUN, "--method", "moco", "--queue-size", "256", "--out", str(out)]
    done = subprocess.run([sys.executable, "-c", _KILL_DURING_SECOND_SAVE, *args], env=ENV, capture_output=True,
                          timeout=300)
    assert done.returncode == -signal.SIGKILL
    assert list(out.glob(".last.ckpt.*.tmp"))  # the half-written file is beside, not over, the checkpoint
    assert torch.load(out / "last.ckpt", weights_only=True)["global_step"] == 44  # epoch 0's, intact
    resumed = amcl("pretrain", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list(out.glob(".*.tmp"))
    assert (out / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()


@pytest.mark.parametrize(
    "change,fragment",
    [(["--method", "simclr"], "--method 'moco' in the run, 'simclr' now"),
     (["--batch-size", "64"], "--batch-size 32 in the run, 64 now"),
     (["--config", "x.yaml"], "drop --config")],
)
def test_resume_with_other_settings_is_refused(reference, tmp_path, capsys, change, fragment):
    assert main(["pretrain", "--resume", str(reference), *change]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err


def test_resume_bad_folders_and_checkpoints(reference, tmp_path, capsys):
    assert main(["pretrain", "--resume", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((reference / "config.yaml").read_text().replace(str(reference), str(broken)))
    (broken / "last.ckpt").write_bytes((reference / "last.ckpt").read_bytes()[:5000])  # truncated
    assert main(["pretrain", "--resume", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and "truncated" in err and len(err.strip().splitlines()) == 1
    torch.save({"weights": torch.zeros(2)}, broken / "last.ckpt")  # a torch file, but not ours
    assert main(["pretrain", "--resume", str(broken)]) == 2
    assert "not an amcl pretrain checkpoint" in capsys.readouterr().err


def test_runs_series_resumes_each_seed(tmp_path):
    config = PretrainConfig(dataset="digits", backbone="small_cnn", image_size=16, batch_size=128, epochs=1,
                            max_steps=2, knn_k=10, progress=False, runs=2, seed=3, out=str(tmp_path))
    first = pretrain(config)
    (tmp_path / "run-4" / "metrics.json").unlink()  # seed 4 "was killed"
    (tmp_path / "summary.json").unlink()
    again = pretrain(config, resume=True)
    assert again["best_knn_acc"]["values"] == first["best_knn_acc"]["values"]
    assert json.loads((tmp_path / "run-4" / "metrics.json").read_text())["complete"]


# --------------------------------------------------------------------------- non-finite values


def _nan_after(step: int):
    """A SimCLR whose loss turns NaN from optimisation step ``step`` on (a fault injected for the test)."""

    class FaultySimCLR(METHOD_CLASSES["simclr"]):
        def loss(self, view1, view2):
            loss, extras = super().loss(view1, view2)
            if self.global_step >= step:
                loss = loss * float("nan")
            return loss, extras

    return FaultySimCLR


TINY = tiny_options(epochs=3, knn_k=10)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(METHOD_CLASSES, "simclr", _nan_after(13))  # 11 steps per epoch: NaN in epoch 1
    with pytest.raises(AmclError) as info:
        pretrain(PretrainConfig(out=str(tmp_path), amcl=True, tau_min=0.01, **TINY))
    message = str(info.value)
    assert "non-finite at step 13" in message and "loss nan" in message and "\n" not in message
    assert "temperatures in that step ranged" in message and "--tau-min 0.01" in message
    assert "last good checkpoint" in message and "--resume" in message
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 11  # the end of epoch 0, before the fault
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [0] and not metrics.get("complete")


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setitem(METHOD_CLASSES, "simclr", _nan_after(30))
    with pytest.warns(Warning, match="skipped a step with non-finite values"):
        summary = pretrain(PretrainConfig(out=str(tmp_path), on_nonfinite="skip", **TINY))
    assert [e["skipped_steps"] for e in summary["epochs"]] == [0, 0, 3]  # steps 30, 31, 32 of 33
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert math.isnan(summary["epochs"][-1]["loss"])  # the logged loss still shows what happened


def test_a_real_overflow_is_reported_through_the_cli(tmp_path, capsys):
    """A temperature so small that sim / tau overflows float32: the command stops with one line."""
    code = main(["pretrain", *tiny_argv(epochs=1, max_steps=3, knn_k=None), "--temperature", "1e-39",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "non-finite at step 0" in err and "no checkpoint had been written yet" in err


def test_a_run_whose_every_step_was_skipped_is_an_error_not_complete(tmp_path, monkeypatch):
    monkeypatch.setitem(METHOD_CLASSES, "simclr", _nan_after(0))
    with pytest.warns(Warning, match="skipped a step"), pytest.raises(AmclError, match="made no optimisation step"):
        pretrain(PretrainConfig(out=str(tmp_path), on_nonfinite="skip", **{**TINY, "epochs": 1}))
    assert not json.loads((tmp_path / "metrics.json").read_text()).get("complete")


def test_a_run_that_skipped_many_steps_says_so_and_metrics_json_stays_json(tmp_path, monkeypatch):
    monkeypatch.setitem(METHOD_CLASSES, "simclr", _nan_after(30))  # the last 3 of 33 steps: 9%
    with pytest.warns(Warning, match=r"3 of the run's steps \(9\.1%\) had non-finite values"):
        pretrain(PretrainConfig(out=str(tmp_path), on_nonfinite="skip", **TINY))
    text = (tmp_path / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in metrics.json"))
    assert metrics["skipped_steps"] == 3 and metrics["skipped_share"] == pytest.approx(3 / 33)
    assert metrics["epochs"][-1]["loss"] is None and metrics["complete"]  # NaN is written as null
