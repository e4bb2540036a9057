"""Reliability: killed runs resume to the same metrics, checkpoints survive a kill during their write, the
same seed gives the same metrics.json, and a non-finite loss stops the run (or is skipped) with a report."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
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

# ~44 steps per epoch on digits: long enough to be killed in the middle of an epoch; two epochs, so that a run
# killed after its first checkpoint has one left to resume
RUN = tiny_argv(batch_size=32, epochs=2, knn_k=10)
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
    assert "pretrain --dataset digits" in run["command"] and len(run["epoch_seconds"]) == 2
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
    assert not metrics.get("complete") and len(metrics["epochs"]) < 2, "the run ended before it could be killed"
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
    again = amcl("pretrain", "--resume", str(out))
    assert again.returncode == 0 and (out / "last.ckpt").stat().st_mtime == before
    assert f"{out}: the run finished earlier (2 epochs); nothing to resume" in again.stdout  # and it says so


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


# --------------------------------------------------------------------------- signals (SIGTERM, SIGINT)


def _default_signals() -> None:
    """In the child: SIGINT and SIGTERM as a terminal gives them, even when the tests run as a background job
    (which starts with SIGINT ignored, and a run leaves an ignored signal ignored)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "amcl.cli", "pretrain", *RUN, "--method", "moco", "--queue-size",
                             "256", *extra, "--out", str(out)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be interrupted"


def _last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    return stderr.strip().splitlines()[-1]


def test_sigterm_mid_epoch_stops_at_a_step_then_resume_ends_like_an_uninterrupted_run(reference, tmp_path):
    out = tmp_path / "run"
    process = _start(out)
    _wait_for(out / "last.ckpt", process)  # epoch 0 is done
    time.sleep(0.2)  # into epoch 1
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    line = _last_line(stderr)
    assert line.startswith("amcl pretrain: interrupted by SIGTERM in epoch 2/2 at step "), line
    assert "holds its 1 finished epoch" in line and f"continue with `amcl pretrain --resume {out}`" in line
    step = int(line.split(" step ")[1].split()[0])
    assert 44 < step < 88  # in epoch 1: the run stopped at a step boundary, not at the end of the epoch
    assert torch.load(out / "last.ckpt", weights_only=True)["global_step"] == 44  # epoch 0's, no half epoch
    metrics = json.loads((out / "metrics.json").read_text())
    assert "complete" not in metrics and len(metrics["epochs"]) == 1
    assert not (out / "run.json").exists() and not list(out.glob(".*"))  # no lock or temporary file left
    done = amcl("pretrain", "--resume", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()


def test_sigint_in_the_first_epoch_writes_nothing_and_the_resume_starts_again(reference, tmp_path):
    out = tmp_path / "run"
    process = _start(out)
    _wait_for(out / "config.yaml", process)
    time.sleep(0.3)  # in epoch 0 (an epoch takes about a second)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    line = _last_line(stderr)
    assert "interrupted by SIGINT in epoch 1/2 at step" in line and "no checkpoint was written" in line, line
    assert not (out / "last.ckpt").exists() and not (out / "metrics.json").exists()
    done = amcl("pretrain", "--resume", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()


def test_a_series_interrupted_by_sigterm_is_continued_as_a_whole(tmp_path):
    out = tmp_path / "series"
    process = subprocess.Popen([sys.executable, "-m", "amcl.cli", "pretrain", *RUN, "--runs", "2", "--out",
                                str(out)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "seed-0" / "last.ckpt", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and f"continue with `amcl pretrain --resume {out}`" in _last_line(stderr)
    assert not (out / "summary.json").exists()
    done = amcl("pretrain", "--resume", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["runs"] == 2


def test_a_second_signal_ends_the_process_at_once():
    script = ("import os, signal, time\nfrom amcl.checkpointing import StopOnSignal\n"
              "with StopOnSignal() as stop:\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    print(stop.signal_number, flush=True)  # the first is noted: the run stops at its next step\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    time.sleep(30)\n"
              "print('not stopped')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=60)
    assert done.stdout.split() == [str(int(signal.SIGTERM))] and done.returncode == -signal.SIGTERM


def _catches(pid: int, number: int) -> bool:
    """Whether process ``pid`` has a handler of its own for signal ``number`` (its SigCgt mask)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (number - 1) & 1)
    return False


def test_sigterm_outside_training_ends_the_command_with_one_line(reference, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "amcl.cli", "eval", "--checkpoint",
                                str(reference / "last.ckpt"), "--out", str(tmp_path / "eval.json")], env=ENV,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not _catches(process.pid, signal.SIGTERM) and time.time() < deadline:  # the CLI is up, eval not done
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-2000:]
    assert _last_line(stderr) == "amcl eval: interrupted by SIGTERM; nothing was completed"
    assert not (tmp_path / "eval.json").exists()


def test_lightning_requeue_is_off_under_slurm(monkeypatch):
    from amcl.trainer import cluster_plugins

    assert cluster_plugins() == []
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "pretrain")
    (environment,) = cluster_plugins()
    assert environment.auto_requeue is False


def test_a_run_cut_off_while_writing_its_final_files_is_finished_by_resume(reference, tmp_path):
    """metrics.json is marked complete last: a run killed before that (here: its run.json and curves.png not yet
    written) is unfinished, and --resume writes its final files without training again."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "run.json").unlink()
    (out / "curves.png").unlink()
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("complete")
    (out / "metrics.json").write_text(json.dumps(metrics))
    refused = amcl("pretrain", *RUN, "--method", "moco", "--queue-size", "256", "--out", str(out))
    assert refused.returncode == 2 and "holds an unfinished moco baseline run" in _last_line(refused.stderr)
    done = amcl("pretrain", "--resume", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    assert (out / "curves.png").is_file() and json.loads((out / "run.json").read_text())["resumed"] is True
    assert torch.load(out / "last.ckpt", weights_only=True)["global_step"] == 2 * 44  # no step was added


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs: a real file system that fills up (skipped where mounting is not allowed; the
    file-size-limit test below makes the writers fail without one)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (it needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(disk: Path, leave: int = 0) -> Path:
    """Take all but ``leave`` bytes of the disk's free space."""
    filler = disk / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        f.write(b"\0" * max(0, shutil.disk_usage(disk).free - leave))
    return filler


def test_a_full_disk_mid_training_keeps_the_previous_checkpoint_and_the_run_resumes(reference, small_disk):
    out = small_disk / "run"
    process = _start(out)
    _wait_for(out / "last.ckpt", process)  # epoch 0 is done
    process.send_signal(signal.SIGSTOP)  # the disk fills up while epoch 1 trains
    filler = _fill(small_disk, leave=64_000)  # room for metrics.json, not for a checkpoint
    process.send_signal(signal.SIGCONT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr[-2000:]
    line = _last_line(stderr)
    assert line.startswith(f"amcl pretrain: error: cannot write {out / 'last.ckpt'}: No space left on device "
                           "(it needs about "), line
    assert "the previous last.ckpt is kept" in line and f"continue it with `amcl pretrain --resume {out}`" in line
    assert torch.load(out / "last.ckpt", weights_only=True)["global_step"] == 44  # epoch 0's, intact
    assert not list(out.glob(".*")) and "complete" not in json.loads((out / "metrics.json").read_text())
    filler.unlink()
    done = amcl("pretrain", "--resume", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()


def test_a_run_started_on_a_full_disk_writes_nothing_and_cannot_be_resumed(small_disk):
    out = small_disk / "run"
    _fill(small_disk)
    done = amcl("pretrain", *RUN, "--out", str(out))
    assert done.returncode == 2
    line = _last_line(done.stderr)
    assert "No space left on device" in line and "config.yaml" in line and "it needs " in line, line
    assert not out.exists()  # the folder the run made is removed again: no lock file, no empty folder
    again = amcl("pretrain", "--resume", str(out))
    assert again.returncode == 2 and "does not exist" in _last_line(again.stderr)


@pytest.mark.parametrize("command,target", [
    (["export", "--out", "{disk}/export"], "export/encoder.safetensors"),
    (["eval", "--protocol", "knn", "--knn-k", "10", "--out", "{disk}/eval.json"], "eval.json"),
    (["analyze", "--pairs", "50", "--out", "{disk}/analysis"], "analysis/"),
])
def test_evaluation_outputs_on_a_full_disk_fail_with_one_line(reference, small_disk, command, target):
    _fill(small_disk)
    args = [a.format(disk=small_disk) for a in command]
    done = amcl(args[0], "--checkpoint", str(reference / "last.ckpt"), *args[1:])
    assert done.returncode == 2, done.stderr[-2000:]
    line = _last_line(done.stderr)
    assert f"cannot write {small_disk / target}" in line and "No space left on device" in line, line
    assert not [p for p in small_disk.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".export-")]
    assert not (small_disk / "export" / "encoder.safetensors").exists()  # no half export


def test_resume_in_a_read_only_folder_is_one_line(reference, small_disk):
    """The lock file cannot be made in a read-only folder: one line (it was a traceback after the right one)."""
    out = small_disk / "run"
    shutil.copytree(reference, out)
    (out / "run.json").unlink()  # unfinished: the resume must write
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True).returncode == 0
    try:
        done = amcl("pretrain", "--resume", str(out))
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], capture_output=True)
    assert done.returncode == 2, done.stderr[-2000:]
    line = _last_line(done.stderr)
    assert len([x for x in done.stderr.splitlines() if "warning" not in x]) == 1, done.stderr
    assert f"cannot lock {out}" in line and "read-only or not writable" in line, line


def test_a_folder_made_immutable_mid_run_stops_with_one_line(tmp_path):
    """chattr +i on the run's folder while it trains: the next write fails with EPERM; the lock file cannot be
    removed either. One line, naming the folder as not writable (not "free some space")."""
    out = tmp_path / "run"
    process = _start(out)
    _wait_for(out / "last.ckpt", process)
    made = subprocess.run(["chattr", "+i", str(out)], capture_output=True, text=True)
    if made.returncode != 0:
        process.kill()
        process.wait()
        pytest.skip(f"cannot make a folder immutable here ({made.stderr.strip() or 'no chattr'})")
    try:
        _, stderr = process.communicate(timeout=200)
    finally:
        subprocess.run(["chattr", "-i", str(out)], capture_output=True)
    assert process.returncode == 2, stderr[-2000:]
    line = _last_line(stderr)
    assert "is read-only or not writable" in line and "free some space" not in line, line
    assert "continue it with `amcl pretrain --resume" in line, line


_WRITE_UNDER_A_SIZE_LIMIT = """
import resource, signal, sys, torch
from amcl.errors import WriteError
from amcl.files import write_torch
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
try:
    write_torch(sys.argv[1], torch.zeros(100_000))
except WriteError as exc:
    print(exc)
"""


def test_a_writer_that_fails_is_one_line_and_keeps_the_previous_file(tmp_path):
    """Without a small disk: a file-size limit makes torch's zip writer fail as a full disk does."""
    target = tmp_path / "encoder.pt"
    target.write_bytes(b"previous")
    done = subprocess.run([sys.executable, "-c", _WRITE_UNDER_A_SIZE_LIMIT, str(target)], capture_output=True,
                          text=True, env=ENV, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"cannot write {target}: File too large (it needs at least "), done.stdout
    assert "the previous encoder.pt is kept" in done.stdout
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["encoder.pt"]


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
    (tmp_path / "seed-4" / "metrics.json").unlink()  # seed 4 "was killed"
    (tmp_path / "summary.json").unlink()
    again = pretrain(config, resume=True)
    assert again["best_knn_acc"]["values"] == first["best_knn_acc"]["values"]
    assert json.loads((tmp_path / "seed-4" / "metrics.json").read_text())["complete"]


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
    assert [e["epoch"] for e in metrics["epochs"]] == [1] and not metrics.get("complete")  # epochs from 1


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
