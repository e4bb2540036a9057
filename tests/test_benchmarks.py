"""The benchmarks run and measure what they say: the training-step benchmark drives the method's own step
(its optimiser steps, non-finite skips, gradient clipping and schedule are the ones training has), the GPU
script runs every step on the CPU with --quick, and the scaling benchmark runs every sweep (behaviour
only, no timings)."""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import train_speed  # noqa: E402
from timing import block_seconds, median_seconds, medians_in_turns  # noqa: E402

#: the method's self.log outside a fit (a no-op there; the benchmark's main silences it)
pytestmark = pytest.mark.filterwarnings("ignore:.*self.log.*:UserWarning")
TINY = ["--device", "cpu", "--backbone", "small_cnn", "--image-size", "16", "--batch-size", "8", "--no-memory"]


def tiny_setup(method: str, mode: str, *options: str) -> train_speed.Setup:
    args = train_speed.parse_args(["--quick", *TINY, *options])
    device = torch.device("cpu")
    torch.manual_seed(0)
    return train_speed.build(method, mode, args, device, train_speed.make_pool(args, device))


def parameters(setup: train_speed.Setup) -> list[torch.Tensor]:
    return [p.detach().clone() for p in setup.model.parameters() if p.requires_grad]


@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_every_step_takes_one_optimiser_step_and_one_schedule_step(method):
    setup = tiny_setup(method, "amcl")
    lr = setup.optimizer.param_groups[0]["lr"]
    before = parameters(setup)
    for _ in range(3):
        setup.full_step()
    assert setup.train.steps_run == setup.train.optimizer_steps == 3
    assert setup.train.scheduler.last_epoch == 3  # configure_optimizers' per-step schedule advances
    assert setup.optimizer.param_groups[0]["lr"] < lr  # the cosine decay, from the method's learning rate
    assert any(not torch.equal(a, b) for a, b in zip(before, parameters(setup)))


def test_a_non_finite_step_is_skipped_as_config_on_nonfinite_says():
    setup = tiny_setup("simclr", "amcl", "--on-nonfinite", "skip")
    before = parameters(setup)
    nan = torch.full((8, 3, 16, 16), float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the method's one-time "skipped a step" warning
        setup.train(nan, nan)
    assert (setup.train.steps_run, setup.train.optimizer_steps) == (1, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, parameters(setup)))
    setup.full_step()
    assert (setup.train.steps_run, setup.train.optimizer_steps) == (2, 1)


def test_gradients_are_clipped_when_grad_clip_is_set():
    def gradient_norm(setup: train_speed.Setup) -> float:
        grads = [p.grad for group in setup.optimizer.param_groups for p in group["params"] if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    clip = 1e-3
    unclipped, clipped = tiny_setup("simclr", "baseline"), tiny_setup("simclr", "baseline", "--grad-clip", str(clip))
    unclipped.full_step(), clipped.full_step()
    assert gradient_norm(unclipped) > 10 * clip  # the clip has something to do
    assert gradient_norm(clipped) <= clip * (1 + 1e-4)


def test_the_report_counts_optimiser_steps_of_every_configuration(tmp_path, monkeypatch, capsys):
    out = tmp_path / "figures.json"
    monkeypatch.setattr(sys, "argv", ["train_speed.py", "--quick", *TINY, "--methods", "simclr", "--json", str(out)])
    train_speed.main()
    result = json.loads(out.read_text())
    # warm-up, then full and pre-made steps in every round
    steps = result["warmup"] + 2 * result["rounds"] * result["steps"]
    assert [(r["mode"], r["steps_run"], r["optimizer_steps"]) for r in result["rows"]] == [
        ("baseline", steps, steps), ("amcl", steps, steps)]
    assert "ratio" in result["rows"][1] and result["rows"][1]["ratio"] > 0
    printed = capsys.readouterr().out
    assert f"# optimiser steps taken / steps run: simclr baseline {steps} / {steps}, simclr AMCL {steps} / {steps}" \
        in printed
    assert "| simclr | AMCL | 3 |" in printed


def test_timers_run_each_step_as_often_as_asked():
    calls = {"a": 0, "b": 0}

    def step(name):
        return lambda: calls.__setitem__(name, calls[name] + 1)

    device = torch.device("cpu")
    assert block_seconds(step("a"), 4, device) >= 0 and calls["a"] == 4
    assert median_seconds(step("a"), device, warmup=2, repeats=3) >= 0 and calls["a"] == 9
    assert len(medians_in_turns((step("a"), step("b")), repeats=5, device=device)) == 2
    assert calls == {"a": 15, "b": 6}


@pytest.mark.slow
def test_the_gpu_script_runs_every_step_on_the_cpu_with_quick(tmp_path):
    """`bash benchmarks/gpu.sh --quick`: the device line, then each benchmark's table, and the JSON figures
    (the epoch benchmark's through amcl pretrain's own training path)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(["bash", str(root / "benchmarks" / "gpu.sh"), "--quick"], capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    for section in ("## device", "## train_speed.py", "## input_pipeline.py", "## loss_speed.py", "## epoch_speed.py"):
        assert section in done.stdout, section
    assert "no CUDA device: CPU only" in done.stdout or "GPU 0:" in done.stdout
    rows = json.loads((tmp_path / "epoch_speed.json").read_text())["rows"]
    assert [(r["mode"], r["compile"]) for r in rows] == [("baseline", False), ("amcl", False)]
    assert all(r["images_per_s"] > 0 and r["epoch_s"] > 0 for r in rows) and rows[1]["ratio"] > 0
    assert {"train_speed.json", "input_pipeline.json"} <= {p.name for p in tmp_path.iterdir()}
    wrong = subprocess.run(["bash", str(root / "benchmarks" / "gpu.sh"), "--fast"], capture_output=True, text=True,
                           env=env, timeout=60)
    assert wrong.returncode == 2 and "usage: bash benchmarks/gpu.sh [--quick]" in wrong.stderr


def test_growth_exponents_read_linear_and_quadratic_costs():
    import scaling

    sizes = [1, 2, 4, 8, 16]
    assert abs(scaling.growth_exponent(sizes, [3.0 * s for s in sizes]) - 1) < 1e-12
    assert abs(scaling.growth_exponent(sizes, [0.5 * s * s for s in sizes]) - 2) < 1e-12
    # size 1 is left out of the fit: a fixed cost there does not bend the slope
    assert abs(scaling.growth_exponent(sizes, [100.0, *[s * 1.0 for s in sizes[1:]]]) - 1) < 1e-12


@pytest.mark.slow
def test_the_scaling_benchmark_runs_every_sweep_and_the_real_two_process_run():
    """`scaling.py --quick`: the simulated world sizes (SimCLR's local anchors and global loss, Barlow Twins'
    local rows and gathered views), the queue sweep, their growth exponents, the memory verdicts and a real
    2-process gloo run."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "scaling.py"), "--quick", "--threads", "1"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for heading in ("### local:", "### global:", "### queue:", "### barlow_local:", "### barlow_gathered:",
                    "### real: 2 gloo processes"):
        assert heading in out, out
    assert out.count("Growth exponent in") == 5
    assert "SimCLR at W = 2: local / gathered per-process peak memory" in out
    assert "Barlow Twins at W = 2: local / gathered per-process peak memory" in out
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| (\d+) \|$", out, flags=re.M)
    assert [int(size) for size, _, _ in rows] == [1, 2, 1, 2, 256, 1024, 1, 2, 1, 2]
    assert all(float(ms) > 0 for _, ms, _ in rows)
