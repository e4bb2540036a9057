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
