"""The run folder (amcl.runs): atomic writes with the umask's permissions, one rule for "the same settings",
and the keys older versions did not record."""

from __future__ import annotations

import dataclasses
import json
import os
import stat

import pytest

from amcl.config import PretrainConfig
from amcl.errors import AmclError
from amcl.files import write_atomic, write_json
from amcl.runs import config_differences, read_config, upgrade_config, write_config


@pytest.mark.parametrize("content", ["text\n", b"\x00bytes", lambda path: path.write_text("by a function")],
                         ids=["str", "bytes", "function"])
def test_write_atomic_writes_with_the_umask_and_leaves_no_temporary_file(tmp_path, content):
    previous = os.umask(0o027)
    try:
        write_atomic(tmp_path / "out", content)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o640  # 0666 & ~027, not mkstemp's 0600
    expected = content if isinstance(content, (str, bytes)) else "by a function"
    read = (tmp_path / "out").read_bytes() if isinstance(expected, bytes) else (tmp_path / "out").read_text()
    assert read == expected and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary_file(tmp_path):
    write_json(tmp_path / "metrics.json", {"epoch": 1})

    def broken(path):
        path.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(AmclError, match=r"cannot write .*metrics.json: No space left on device"):
        write_atomic(tmp_path / "metrics.json", broken)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_write_config_names_the_folder_it_cannot_write(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(AmclError, match=r"cannot write outputs to --out .*file/run.*choose a writable folder"):
        write_config(tmp_path / "file" / "run", PretrainConfig())
    write_config(tmp_path / "run", PretrainConfig(epochs=3))
    assert read_config(tmp_path / "run" / "config.yaml")["epochs"] == 3


def _saved(config: PretrainConfig, **changes) -> dict:
    return {**dataclasses.asdict(config), **changes}


def test_config_differences_one_rule_for_resume_and_compare():
    config = PretrainConfig(augs="acde", epochs=2, amcl=True).resolved()
    assert config_differences(_saved(config), config) == []
    assert config_differences(_saved(config, augs="default"), config) == []  # one policy, two spellings
    assert config_differences(_saved(config, epochs=2.0), config) == []  # 2 == 2.0
    assert config_differences(_saved(config, amcl=1), config) == ["--amcl 1 in the run, True now"]  # not a bool
    assert config_differences(_saved(config, epochs=1), config) == ["--epochs 1 in the run, 2 now"]
    allowed = dict(out="elsewhere", progress=False, workers=3, cache_images="never", on_nonfinite="skip")
    assert config_differences(_saved(config, **allowed), config) == []  # how it runs, not what it computes
    older = {k: v for k, v in _saved(config).items() if k != "temperature_input"}  # written before the option
    assert config_differences(older, config) == []
    assert config_differences(_saved(config, global_batch=256), config) == [
        f"global_batch 256 in the run, {config.global_batch} now"]  # recorded, so not named as a flag


def test_older_configs_get_what_their_version_did():
    upgraded = upgrade_config({"seed": 3, "batch_size": 32, "devices": "2"})
    assert upgraded["split_seed"] == 3  # before --split-seed, --seed drew the split
    assert upgraded["global_batch"] == 64  # batch size x the processes devices named
    assert "global_batch" not in upgrade_config({"batch_size": 32, "devices": "auto"})  # unknown: from weights
    assert upgrade_config({"seed": 3, "split_seed": 0, "global_batch": 8})["split_seed"] == 0
    assert (upgraded["logger"], upgraded["save_every"]) == ("none", 0)  # before --logger and --save-every


def test_a_run_of_the_version_before_the_loggers_resumes_before_its_first_checkpoint(tmp_path):
    from amcl.runs import read_resumed_config

    text = PretrainConfig().resolved().to_yaml()
    older = "".join(line for line in text.splitlines(keepends=True)
                    if not line.startswith(("logger:", "save_every:")))  # written before those options existed
    path = tmp_path / "config.yaml"
    path.write_text(older)
    values = read_resumed_config(path, None)
    assert (values["logger"], values["save_every"]) == ("none", 0)


_HOLD_LOCK = """
import sys, time
from amcl.runs import locked_folder
with locked_folder(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_a_second_process_is_refused_while_a_run_holds_the_folder_and_a_killed_holder_blocks_nothing(tmp_path):
    import signal
    import subprocess
    import sys

    from builders import tiny_argv

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for command in (["pretrain", "--out", str(out)], ["compare", "--augs", "a", "--seeds", "0", "--out", str(out)]):
            done = subprocess.run([sys.executable, "-m", "amcl.cli", *command, *tiny_argv(epochs=1, max_steps=2)],
                                  capture_output=True, text=True, env=env, timeout=300)
            assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
            assert f"is in use by amcl process {holder.pid}" in done.stderr and "choose another --out" in done.stderr
        assert not (out / "config.yaml").exists()  # the refused run wrote nothing there
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / ".amcl.lock").exists()  # left behind by the killed holder: the kernel released its lock
    done = subprocess.run([sys.executable, "-m", "amcl.cli", "pretrain", "--out", str(out),
                           *tiny_argv(epochs=1, max_steps=2)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["complete"] and not (out / ".amcl.lock").exists()


@pytest.mark.slow
def test_a_folder_holding_a_run_is_refused_unless_overwrite_clears_it(tmp_path):
    from amcl.train import pretrain
    from builders import tiny_config

    out = tmp_path / "run"
    pretrain(tiny_config(epochs=1, max_steps=2, out=str(out)))
    (out / "eval-knn.json").write_text("{}")  # evaluates the model that is there now
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(AmclError) as refused:
        pretrain(tiny_config(method="moco", queue_size=256, epochs=1, max_steps=2, out=str(out)))
    message = str(refused.value)
    assert "holds a finished simclr baseline run" in message and "\n" not in message
    assert f"--resume {out}" in message and "--out" in message and "--overwrite" in message
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing lost
    pretrain(tiny_config(method="moco", queue_size=256, epochs=1, max_steps=2, out=str(out)), overwrite=True)
    assert not (out / "eval-knn.json").exists()  # the whole folder was cleared first
    assert read_config(out / "config.yaml")["method"] == "moco"


def test_resume_refuses_a_folder_whose_config_is_empty_instead_of_starting_a_default_run(tmp_path, capsys):
    from amcl.cli import main

    (tmp_path / "config.yaml").write_text("")  # what a start cut off by a full disk left before writes were atomic
    assert main(["pretrain", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no run's settings" in err and "--overwrite" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # nothing trained, nothing written


# --------------------------------------------------------------------------- which folders a run may write into


def _marked(folder, kind: str = "run") -> None:
    from amcl.runs import write_marker

    folder.mkdir(parents=True, exist_ok=True)
    write_marker(folder, kind)


def test_claim_refuses_a_folder_that_is_not_amcls_even_with_overwrite_and_deletes_nothing(tmp_path):
    from amcl.runs import claim_folder

    claim_folder(tmp_path / "new")  # a missing folder
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".amcl.lock").write_text("")  # a killed run's lock file does not count
    claim_folder(tmp_path / "empty", overwrite=True, clear=True)
    other = tmp_path / "thesis"
    (other / "src").mkdir(parents=True)
    (other / "config.yaml").write_text("title: mine\n")
    (other / "src" / "thesis.tex").write_text("\\documentclass{article}\n")
    for overwrite in (False, True):
        with pytest.raises(AmclError) as refused:
            claim_folder(other, overwrite=overwrite, clear=True)
        assert "is not an amcl run (it holds config.yaml, src)" in str(refused.value)
        assert ("--overwrite replaces only amcl runs" in str(refused.value)) == overwrite
    assert (other / "src" / "thesis.tex").read_text() and (other / "config.yaml").read_text() == "title: mine\n"


def test_overwrite_clears_an_amcl_run_without_following_its_links(tmp_path):
    from amcl.runs import MARKER, claim_folder, held_run

    run, outside = tmp_path / "run", tmp_path / "outside"
    _marked(run)
    (run / "last.ckpt").write_bytes(b"weights")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events").write_text("x")
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (run / "data").symlink_to(outside)
    assert held_run(run) == "an unfinished amcl run"
    with pytest.raises(AmclError, match="holds an unfinished amcl run; continue it with"):
        claim_folder(run, clear=True)
    claim_folder(run, overwrite=True, clear=False)  # the early check clears nothing
    assert (run / MARKER).exists()
    claim_folder(run, overwrite=True, clear=True)
    assert os.listdir(run) == [] and (outside / "keep.txt").read_text() == "mine"


def test_runs_of_versions_before_the_marker_are_recognised_by_what_only_amcl_writes(tmp_path):
    from amcl.runs import held_run

    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "config.yaml").write_text("method: moco\namcl: true\n")
    (finished / "run.json").write_text(json.dumps({"versions": {"amcl": "0.1.0"}, "time_s": 1.0}))
    (finished / "metrics.json").write_text(json.dumps({"complete": True, "epochs": []}))
    assert held_run(finished) == "a finished moco AMCL run"
    series = tmp_path / "series"
    series.mkdir()
    (series / "summary.json").write_text(json.dumps({"runs": 2, "seeds": [0, 1]}))
    assert held_run(series) == "a finished amcl --runs series"
    grid = tmp_path / "grid"
    grid.mkdir()
    (grid / "results.json").write_text(json.dumps({"cells": []}))
    assert held_run(grid) == "an amcl compare grid"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("method: simclr\n")  # a config.yaml alone is no run
    (foreign / "run.json").write_text(json.dumps({"versions": {"othertool": "1"}}))
    (foreign / "last.ckpt").write_bytes(b"not a checkpoint")
    (foreign / "amcl-run.json").write_text(json.dumps({"written_by": "someone else", "kind": "run"}))
    assert held_run(foreign) is None


@pytest.mark.parametrize("out,why", [
    ("", "--out is empty"),
    (" ", "--out is empty"),
    (".", "is the current folder"),
    ("{cwd}", "is the current folder"),
    ("..", "is a folder above the current one"),
    ("/", "is a folder above the current one"),
    ("~", "is the home folder"),
    ("{cwd}/project", "is a git work tree"),
])
def test_outs_no_run_may_write_into_are_refused(tmp_path, monkeypatch, out, why):
    from amcl.runs import refuse_unsafe_out

    work = tmp_path / "work"
    (work / "project" / ".git").mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    with pytest.raises(AmclError, match=why):
        refuse_unsafe_out(out.format(cwd=work))
    for fine in ("runs/a", "project/runs/a", str(tmp_path / "home" / "runs")):  # a run inside a repository is fine
        refuse_unsafe_out(fine)


def test_a_resumed_config_must_be_whole_and_is_never_filled_with_defaults(tmp_path):
    from amcl.runs import read_resumed_config

    whole = PretrainConfig().resolved()
    path = tmp_path / "config.yaml"
    path.write_text(whole.to_yaml())
    assert read_resumed_config(path, None)["epochs"] == whole.epochs
    text = whole.to_yaml()
    path.write_text(text[: text.index("backbone:") + len("backbone:")])  # cut off mid-file
    with pytest.raises(AmclError, match=r"config.yaml lacks --epochs and \d+ more option\(s\)"):
        read_resumed_config(path, None)
    trained = {"method": "simclr", "epochs": 3, "seed": 0, "lr": 0.1}  # an older version's checkpoint config
    path.write_text("method: simclr\nepochs: 3\nseed: 0\n")
    with pytest.raises(AmclError, match="lacks --lr "):
        read_resumed_config(path, trained)
    path.write_text("method: simclr\nepochs: 3\nseed: 0\nlr: 0.1\n")
    assert read_resumed_config(path, trained)["lr"] == 0.1  # what the older version recorded is enough


def test_a_read_only_folder_is_not_said_to_be_full(tmp_path):
    import errno

    from amcl.files import write_failure

    for number in (errno.EROFS, errno.EACCES, errno.EPERM):
        message = str(write_failure(tmp_path / "last.ckpt", OSError(number, os.strerror(number))))
        assert "is read-only or not writable: make it writable" in message and "free some space" not in message
    message = str(write_failure(tmp_path / "last.ckpt", OSError(errno.ENOSPC, "No space left on device")))
    assert "free some space" in message


def test_a_signal_after_the_last_epoch_says_nothing_is_repeated():
    import signal
    from pathlib import Path
    from types import SimpleNamespace

    from amcl.checkpointing import StopOnSignal
    from amcl.train import _interruption

    stop = StopOnSignal()
    stop.signal_number = signal.SIGTERM
    trainer = SimpleNamespace(current_epoch=3, max_epochs=3, global_step=33, is_global_zero=True)
    message = str(_interruption(stop, trainer, Path("runs/a")))
    assert "after its last epoch (3/3, step 33)" in message and "holds all 3 epochs" in message
    assert "repeats" not in message
    trainer = SimpleNamespace(current_epoch=1, max_epochs=3, global_step=15, is_global_zero=True)
    message = str(_interruption(stop, trainer, Path("runs/a")))
    assert "in epoch 2/3 at step 15" in message and "holds its 1 finished epoch, and the resumed run repeats " \
        "epoch 2 from its start" in message


@pytest.mark.slow
def test_overwrite_cannot_clear_a_folder_a_live_run_is_writing(tmp_path):
    """The issue's case: `--overwrite` into the folder of a run still training. The folder is cleared only under
    its lock, so the second run is refused and the first ends with its own files, unmixed."""
    import subprocess
    import sys
    import time

    from builders import tiny_argv

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "amcl.cli", "pretrain", *tiny_argv(batch_size=32, epochs=4),
                              "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 200
        while not (out / "last.ckpt").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second started"
        second = subprocess.run([sys.executable, "-m", "amcl.cli", "pretrain", *tiny_argv(epochs=1, max_steps=2),
                                 "--seed", "7", "--overwrite", "--out", str(out)], capture_output=True, text=True,
                                env=env, timeout=300)
        assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert f"is in use by amcl process {first.pid}" in second.stderr
    finally:
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert read_config(out / "config.yaml")["seed"] == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and len(metrics["epochs"]) == 4
