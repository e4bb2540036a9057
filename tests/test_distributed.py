"""Multi-process training on CPU (gloo, 2 real processes): the losses and gradients equal those of one
process on the same global batch (SimCLR's processes each compute only their own anchors' rows of the
global loss), and a Lightning DDP run monitors exactly what one process would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from amcl.config import PretrainConfig
from amcl.distributed import gather_rows, gather_views, gather_with_grad, sum_with_grad
from amcl.losses import amcl_nt_xent_terms, amcl_softmax_nt_xent_terms, nt_xent_loss, process_anchors
from amcl.methods import METHOD_CLASSES
from amcl.nn import AMCLBarlowTwinsLoss, AMCLNTXentLoss, BarlowTwinsLoss, NTXentLoss, TemperatureNet
from builders import tiny_argv

pytestmark = pytest.mark.slow  # every test runs two processes

WORLD, LOCAL_BATCH = 2, 4
SMALL = dict(backbone="small_cnn", image_size=8, proj_hidden=16, proj_dim=8, proj_layers=2, temperature_hidden=8,
             queue_size=16, tau_min=0.05, tau_max=1.5, predictor_hidden=8)
CASES = {
    "simclr": dict(method="simclr"),
    "simclr-amcl": dict(method="simclr", amcl=True, heads=2, topk=2, amcl_form="hardest"),
    "simclr-amcl-softmax": dict(method="simclr", amcl=True, heads=2),
    "simclr-amcl-hardest-with-positive": dict(method="simclr", amcl=True, heads=2, topk=1,
                                              amcl_form="hardest_with_positive"),
    "simclr-amcl-negative-only": dict(method="simclr", amcl=True, heads=2, topk=3, amcl_form="hardest",
                                      temperature_mode="negative"),
    # proj_dim 8 > temperature_hidden 4 + 1: phi's last layer folded into the factors (r W^T W, r)
    "simclr-amcl-folded-phi": dict(method="simclr", amcl=True, heads=2, topk=2, amcl_form="hardest",
                                   temperature_hidden=4),
    "moco": dict(method="moco"),
    "moco-amcl": dict(method="moco", amcl=True, heads=2),
    "barlow_twins": dict(method="barlow_twins", proj_layers=3),
    "barlow_twins-amcl": dict(method="barlow_twins", amcl=True, heads=2, proj_layers=3),
    # phi reads channel vectors of the global batch (8 entries, 4 per process) with its last layer folded (8 > 4 + 1)
    "barlow_twins-amcl-folded-phi": dict(method="barlow_twins", amcl=True, heads=2, proj_layers=3,
                                         temperature_hidden=4),
    "barlow_twins-amcl-positive-only": dict(method="barlow_twins", amcl=True, heads=2, proj_layers=3,
                                            temperature_mode="positive"),
    "simsiam-amcl": dict(method="simsiam", amcl=True, heads=2, proj_layers=3),
}


def _config(case: str, world: int) -> PretrainConfig:
    return PretrainConfig(**{**SMALL, **CASES[case]}, batch_size=LOCAL_BATCH * (WORLD // world),
                          devices=str(world)).resolved()


def _views(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (WORLD * LOCAL_BATCH, 3, 8, 8)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _step(case: str, world: int, rank: int, state: dict) -> dict:
    """One loss + backward of ``case`` on this process's share of the global batch, in float64 so that
    summing in another order changes only the last digits. BatchNorm is in eval mode, so per-process batch
    statistics (a separate question: --sync-batchnorm) play no part."""
    model = METHOD_CLASSES[CASES[case]["method"]](_config(case, world), num_classes=10)
    model.load_state_dict(state)
    model.double().eval()
    v1, v2 = (v.double() for v in _views())
    share = slice(rank * LOCAL_BATCH * (WORLD // world), (rank + 1) * LOCAL_BATCH * (WORLD // world))
    loss, _ = model.loss(v1[share], v2[share])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    if world > 1:  # what DDP does to the gradients, and the epoch mean of the logged loss
        for g in grads.values():
            dist.all_reduce(g)
            g /= world
        loss = loss.detach().clone()
        dist.all_reduce(loss)
        loss /= world
    out = {"loss": loss.detach(), "grads": grads}
    if hasattr(model, "queue"):
        model.on_train_batch_end(None, None, 0)
        out["queue"] = model.queue.features.clone()
    return out


PURE_LOSSES = ("nt_xent", "nt_xent_decoupled", "hardest", "infonce", "softmax", "nt_xent_criterion",
               "hardest_criterion", "softmax_criterion", "barlow_criterion", "amcl_barlow_criterion")
#: The losses that use no temperature net (phi's gradient stays zero).
WITHOUT_PHI = ("nt_xent", "nt_xent_decoupled", "nt_xent_criterion", "barlow_criterion")


def _criteria_losses(z: torch.Tensor, phi: TemperatureNet) -> dict[str, torch.Tensor]:
    """The loss modules with ``gather_distributed=True``, fed as a user's DDP loop feeds them: this process's two
    views only; their temperature net is ``phi`` (8 inputs: the feature size, and the global batch of 8 images)."""
    z1, z2 = z.chunk(2, dim=1)
    modules = {"nt_xent_criterion": NTXentLoss(0.3, gather_distributed=True),
               "hardest_criterion": AMCLNTXentLoss(8, "hardest", beta=0.1, topk=3, head_reduction="sum",
                                                  gather_distributed=True),
               "softmax_criterion": AMCLNTXentLoss(8, "softmax", beta=0.1, head_reduction="sum",
                                                  gather_distributed=True),
               "barlow_criterion": BarlowTwinsLoss(gather_distributed=True),
               "amcl_barlow_criterion": AMCLBarlowTwinsLoss(WORLD * LOCAL_BATCH, beta=0.1, head_reduction="sum",
                                                            gather_distributed=True)}
    losses = {}
    for name, module in modules.items():
        if hasattr(module, "temperature_net"):
            module.temperature_net = phi
        losses[name] = module.double()(z1, z2)
    return losses


def _pure_losses(z: torch.Tensor, phi: TemperatureNet, anchors: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The SimCLR losses of the library, called as a user's own loop would: ``z`` is [C, 2B, d] as
    [view 1; view 2] of this process, gathered into the global batch, with this process's anchors."""
    batch = z.shape[1] // 2
    z1, z2 = gather_views(z, batch).chunk(2, dim=1)
    factors = phi.pair_factors(z)
    taus = factors._replace(right=gather_views(factors.right, batch))
    hardest = amcl_nt_xent_terms(z1, z2, taus, beta=0.1, topk=3, anchors=anchors)
    rows = 2 * batch  # each process computes its own anchors' rows [C, 2B, 2BW], not the global matrix
    assert hardest.positive_temperatures.shape == (z.shape[0], rows) and hardest.negative_similarities.shape[1] == rows
    return {"nt_xent": nt_xent_loss(z1, z2, 0.3, anchors=anchors),
            "nt_xent_decoupled": nt_xent_loss(z1, z2, 0.3, decoupled=True, anchors=anchors),
            "hardest": hardest.loss(),
            "infonce": amcl_nt_xent_terms(z1, z2, taus, beta=0.1, include_positive=True, anchors=anchors).loss(),
            "softmax": amcl_softmax_nt_xent_terms(z1, z2, taus, beta=0.1, anchors=anchors).loss(),
            **_criteria_losses(z, phi)}


def _pure_step(world: int, rank: int) -> dict[str, dict[str, torch.Tensor]]:
    """Per loss: this process's loss (averaged over processes, as logged) and the gradient of its own
    features, divided by W (the gather's backward sums the W processes' gradients, which DDP then
    averages), and phi's gradient averaged as DDP would. Must equal the single-process values."""
    torch.manual_seed(3)
    phi = TemperatureNet(8, hidden=8, tau_min=0.05, tau_max=1.5).double()
    features = torch.randn(2, 2 * WORLD * LOCAL_BATCH, 8, dtype=torch.float64)  # [C, 2N, d], [view 1; view 2]
    n, local = WORLD * LOCAL_BATCH, LOCAL_BATCH * (WORLD // world)
    rows = process_anchors(local, rank, world) if world > 1 else torch.arange(2 * n)
    results = {}
    for name in PURE_LOSSES:
        z = features[:, rows].clone().requires_grad_(True)
        phi.zero_grad()
        loss = _pure_losses(z, phi, process_anchors(local, rank, world) if world > 1 else None)[name]
        loss.backward()
        grads = {"z": z.grad / world, **{n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                         for n, p in phi.named_parameters()}}  # NT-Xent leaves phi unused
        loss = loss.detach().clone()
        if world > 1:
            for key, grad in grads.items():
                if key != "z":
                    dist.all_reduce(grad)
                    grad /= world
            dist.all_reduce(loss)
            loss /= world
            grads["z"] = gather_views(grads["z"], local)  # every process's rows, in the order of ``features``
        results[name] = {"loss": loss, **grads}
    return results


def _worker(rank: int, init_file: str, result_file: str, states: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {case: _step(case, WORLD, rank, states[case]) for case in CASES}
        results["pure"] = _pure_step(WORLD, rank)
        x = torch.arange(3.0 * (rank + 1)).reshape(rank + 1, 3)  # uneven rows
        results["rows"] = gather_rows(x)
        y = torch.full((2, 3), float(rank + 1), requires_grad=True)
        (gather_with_grad(y, 0) * torch.arange(1.0, 5.0)[:, None]).sum().backward()
        results["gather_grad"] = y.grad
        x = torch.full((2,), float(rank + 1), requires_grad=True)
        total = sum_with_grad(x)
        (total * (rank + 1) * torch.tensor([1.0, 10.0])).sum().backward()
        results["sum"], results["sum_grad"] = total.detach(), x.grad
        if rank == 0:
            torch.save(results, result_file)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gloo")
    torch.manual_seed(0)
    states = {case: METHOD_CLASSES[CASES[case]["method"]](_config(case, 1), 10).state_dict() for case in CASES}
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp / "results.pt"), states), nprocs=WORLD, join=True)
    single = {case: _step(case, 1, 0, states[case]) for case in CASES}
    single["pure"] = _pure_step(1, 0)
    return torch.load(tmp / "results.pt", weights_only=False), single


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one_process_on_the_global_batch(two_process_results, case):
    distributed, single = two_process_results[0][case], two_process_results[1][case]
    torch.testing.assert_close(distributed["loss"], single["loss"], rtol=1e-10, atol=1e-12)
    assert distributed["grads"].keys() == single["grads"].keys() and len(single["grads"]) > 4
    # float64 sums in another order: compare against the scale of the whole gradient, since some entries are
    # exactly zero in exact arithmetic (e.g. Barlow Twins' last bias, cancelled by the batch standardisation)
    scale = max(float(g.abs().max()) for g in single["grads"].values())
    for name, grad in single["grads"].items():
        error = float((distributed["grads"][name] - grad).abs().max())
        assert error <= 1e-10 * scale + 1e-9 * float(grad.abs().max()), (name, error, scale)
    if "queue" in single:  # both views' keys of the whole batch, in the same order
        torch.testing.assert_close(distributed["queue"], single["queue"])


@pytest.mark.parametrize("loss", PURE_LOSSES)
def test_local_anchor_losses_give_the_single_process_gradients(two_process_results, loss):
    """The pure SimCLR losses with ``anchors=process_anchors(...)`` on gathered views and factored temperatures:
    each process's rows [C, 2B, 2BW] only, yet the loss (averaged over processes) and the gradients of every
    feature and of phi are those of one process computing the whole [C, 2N, 2N] loss. The same for the loss
    modules with ``gather_distributed=True`` (SimCLR and Barlow Twins, baseline and AMCL), given local views."""
    distributed, single = two_process_results[0]["pure"][loss], two_process_results[1]["pure"][loss]
    assert distributed.keys() == single.keys() and len(single) == 6  # loss, z and phi's 4 tensors
    for key in single:
        torch.testing.assert_close(distributed[key], single[key], rtol=1e-10, atol=1e-12, msg=f"{loss}: {key}")
    assert float(single["z"].abs().max()) > 0
    assert (float(single["phi.0.weight"].abs().max()) > 0) == (loss not in WITHOUT_PHI)


def test_gather_helpers(two_process_results):
    results = two_process_results[0]
    assert results["rows"].tolist() == [[0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    # every process computed sum(w * gathered); rank 0's rows carry weights 1, 2: summed over 2 processes
    assert results["gather_grad"].tolist() == [[2.0] * 3, [4.0] * 3]
    # 1 + 2 on both processes; each process's loss weighs the total by rank + 1: the gradient sums 1 + 2
    assert results["sum"].tolist() == [3.0, 3.0] and results["sum_grad"].tolist() == [3.0, 30.0]


@pytest.mark.parametrize("amcl", [False, True])
def test_lightning_ddp_run_monitors_like_one_process(tmp_path, amcl):
    """A real `amcl pretrain --devices 2` (Lightning DDP, gloo): it trains, writes its outputs once, and its
    final kNN accuracy (bank gathered from both processes, queries split between them) equals a
    single-process evaluation of the checkpoint."""
    out = tmp_path / "run"
    args = ["pretrain", *tiny_argv(batch_size=64, epochs=1, max_steps=3, knn_k=10), "--accelerator", "cpu",
            "--devices", "2", "--strategy", "ddp", "--out", str(out)] + (["--amcl"] if amcl else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "amcl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and metrics["epochs"][-1]["step"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["amcl-run.json", "config.yaml", "curves.png", "last.ckpt",
                                                     "metrics.csv", "metrics.json", "run.json"]
    assert done.stdout.count("best kNN accuracy") == 1  # printed by one process only
    from amcl.eval import evaluate_checkpoint

    single = evaluate_checkpoint(out / "last.ckpt", "knn", device="cpu", out=tmp_path / "eval.json")
    # the bank arrives in another order, so near-tied votes may sum differently: allow one query either way
    # (a bank or query split gone wrong would be off by far more)
    assert abs(single["top1"] - metrics["final_knn_acc"]) <= 1 / single["test_images"] + 1e-6, (single, metrics)


TWO_PROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _two_processes_past_their_first_epoch(out: Path) -> subprocess.Popen:
    """A real 2-process run (Lightning DDP, gloo) of 2 epochs, once its first checkpoint is written."""
    import time

    args = ["pretrain", *tiny_argv(batch_size=32, epochs=2, knn_k=10), "--accelerator", "cpu", "--devices", "2",
            "--strategy", "ddp", "--out", str(out)]
    process = subprocess.Popen([sys.executable, "-m", "amcl.cli", *args], env=TWO_PROCESS_ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 200
    while not (out / "last.ckpt").is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before its second epoch"
    return process


def test_sigterm_stops_both_processes_after_the_same_step(tmp_path):
    """SIGTERM to rank 0 of a real 2-process run: the processes agree to stop after the same step (no
    process waits in a collective for one that has gone) and rank 0 reports once. (A single-process run
    resumed after SIGTERM is tested in test_resume.py.)"""
    import signal

    out = tmp_path / "run"
    process = _two_processes_past_their_first_epoch(out)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=200)
    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.count("interrupted by SIGTERM") == 1, stderr[-3000:]
    # 22 steps per epoch on each process, and the processes agree every 10 steps: epoch 1 ends at step 44
    assert re.search(r"interrupted by SIGTERM in epoch 2/2 at step (30|40) ", stderr), stderr[-3000:]
    assert torch.load(out / "last.ckpt", weights_only=True)["epoch"] == 0
    assert "complete" not in json.loads((out / "metrics.json").read_text())


def test_a_lost_process_is_one_line_on_the_survivor_and_the_run_resumes(tmp_path):
    """SIGKILL to rank 1 of a real 2-process run: rank 0's next collective fails. It says so in one line (which
    process it is, what the checkpoint holds, how to resume) instead of gloo's 80-line trace, and the run resumes."""
    import signal

    out = tmp_path / "run"
    process = _two_processes_past_their_first_epoch(out)
    children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 1, children  # Lightning's launcher starts rank 1 as a child of rank 0
    os.kill(int(children[0]), signal.SIGKILL)
    _, stderr = process.communicate(timeout=200)
    assert process.returncode == 2, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("amcl: warning:")]
    assert "Traceback" not in stderr and len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("amcl pretrain: error: process 0 of this 2-process run lost another process in "
                               "epoch 2"), lines[0]
    assert f"holds its 1 finished epoch; continue with `amcl pretrain --resume {out}`" in lines[0]
    done = subprocess.run([sys.executable, "-m", "amcl.cli", "pretrain", "--resume", str(out), "--accelerator", "cpu",
                           "--devices", "2", "--strategy", "ddp"], capture_output=True, text=True, env=TWO_PROCESS_ENV,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["complete"]


@pytest.fixture(scope="module")
def two_process_barlow_run(tmp_path_factory):
    """A real AMCL Barlow Twins run on 2 processes: phi reads channel vectors of the global batch (2 x 32)."""
    out = tmp_path_factory.mktemp("barlow-ddp") / "run"
    args = ["pretrain", "--method", "barlow_twins", "--amcl",
            *tiny_argv(batch_size=32, proj_hidden=32, proj_dim=32, proj_layers=2, temperature_hidden=16, epochs=1,
                       max_steps=2, knn_k=10),
            "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "amcl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_analyze_reads_the_global_batch_of_a_two_process_barlow_twins_run(two_process_barlow_run, tmp_path):
    """Regression: analyze fed --batch-size images to a temperature net that reads batch-size x processes."""
    import yaml

    from amcl.eval.analysis import analyze_checkpoint

    result = analyze_checkpoint(two_process_barlow_run / "last.ckpt", tmp_path / "analysis", pairs=100, device="cpu")
    assert yaml.safe_load((two_process_barlow_run / "config.yaml").read_text())["global_batch"] == 64
    temperature = result["temperature"]
    assert temperature["learned"] and temperature["kind"] == "channel"
    assert "first 64 positive pairs" in temperature["note"]
    positive = result["heads"][0]["temperature"]["positive"]
    assert positive["count"] == 32  # tau_ll of the 32 channels, from 64 images


def _rewritten_checkpoint(source: Path, target: Path, **config_changes) -> Path:
    checkpoint = torch.load(source, weights_only=True)
    config = checkpoint["hyper_parameters"]["config"]
    for key, value in config_changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    torch.save(checkpoint, target)
    return target


@pytest.mark.parametrize("recorded", [True, False], ids=["this-version", "before-global-batch-was-recorded"])
def test_a_devices_auto_checkpoint_loads_on_a_machine_with_other_devices(two_process_barlow_run, tmp_path, recorded):
    """Regression: ``--devices auto`` on a 2-GPU machine writes the config of a ``--devices 2`` run with
    ``devices: auto``; phi's width came from the loading machine's GPU count (none here), so the checkpoint
    "did not match this version". Now it comes from the recorded global batch, or (older checkpoints)
    from phi's weights."""
    from amcl.eval.checkpoint import load_pretrained

    changes = {"devices": "auto"} if recorded else {"devices": "auto", "global_batch": None}
    path = _rewritten_checkpoint(two_process_barlow_run / "last.ckpt", tmp_path / "auto.ckpt", **changes)
    pretrained = load_pretrained(path)
    assert pretrained.config.global_batch == 64 and pretrained.model.temperature_net.phi[0].in_features == 64
