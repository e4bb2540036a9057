"""Training-step speed and peak memory of every method, baseline against AMCL: the method's own step,
driven outside a Lightning fit.

    .venv/bin/python benchmarks/train_speed.py [--device auto|cpu|cuda]
        [--methods simclr moco simsiam barlow_twins] [--backbone resnet18] [--image-size 32]
        [--batch-size B] [--pool N] [--precision auto|bf16|fp32] [--channels-last | --no-channels-last]
        [--compile] [--cudnn-benchmark] [--aug-rng host|device] [--optimizer sgd|lars|adamw] [--grad-clip G]
        [--on-nonfinite stop|skip] [--warmup N] [--steps N] [--rounds N] [--threads N]
        [--memory | --no-memory] [--check-sync | --no-check-sync] [--quick] [--json PATH]
    .venv/bin/python benchmarks/train_speed.py --quick      # smoke test, ~1 min on 2 idle CPU cores, half of it
                                                            # the memory child (--no-memory skips it)
    .venv/bin/python benchmarks/train_speed.py              # CPU: batch 64, ~5 min on 2 cores
    .venv/bin/python benchmarks/train_speed.py --device cuda --json gpu.json   # batch 512, bf16

What is timed, per method and mode (baseline: one head, the constant temperature; AMCL: the
method's defaults, 3 heads and the adaptive pair temperature), both built from
``PretrainConfig(method, amcl, backbone, batch_size=B, image_size=S, optimizer, grad_clip, on_nonfinite,
precision).resolved()`` (so Barlow Twins' AMCL temperature net reads channel vectors of length B, the
batch every step has):

* **full step**, as training runs it: a pool of --pool random uint8 ``[N, 3, S, S]`` images lies on
  the device (the in-memory data module keeps a dataset there); B random indices drawn on the
  device, ``pool[index]``, two views by ``TwoViews(ViewAugmentation(augs, S, 0.5, mean, std))``,
  channels-last views on CUDA (as the data module sends them). As in ``ContrastiveDataModule``, whose
  ``TwoViews`` is never moved to the training device, kornia draws the augmentation parameters on
  the host and copies them to the device (--aug-rng host, the default); --aug-rng device moves
  ``TwoViews`` to the device first, so they are drawn there. Then the method's own training step
  (:class:`MethodStep`), in the order of Lightning's automatic optimisation: ``on_train_batch_start``;
  ``model.optimizer_step(epoch, batch_idx, optimizer, closure)``, whose closure runs
  ``model.training_step`` (the loss, the heads' reduction, the diagnostics) under the precision
  plugin's autocast (bf16-mixed on CUDA, 32-true on CPU; --precision), zeroes the gradients
  (``optimizer_zero_grad``) and runs ``backward``; ``optimizer_step`` itself checks the loss and
  gradients for non-finite values as ``config.on_nonfinite`` says (``skip`` reads the verdict back to
  the host every step and takes no optimiser step on a bad one), and the optimiser's ``step()`` clips
  the global gradient norm with Lightning's precision plugin when --grad-clip is given; the optimiser
  and its per-step warm-up/cosine schedule are those of ``model.configure_optimizers()``
  (``amcl.optim.build_optimizer``: --optimizer, the method's learning rate), the schedule as long as
  an 800-epoch CIFAR-10 run at batch B; then ``on_train_batch_end`` (MoCo's queue push) and the
  schedule's step. ``model.on_fit_start()`` prepares the model as Lightning would: the backbone
  channels-last on CUDA, ``backbone.compile()`` with --compile.
* **views pre-made**: the same step on two fixed pre-made views (identical tensors for baseline
  and AMCL), so that the share of the augmentation in the step is visible: the table's
  "augmentation share" is 1 - pre-made / full. The input half alone (gather and both views) is
  also timed once and printed above the table, for comparison.

Not included, because no fit runs: Lightning's loop bookkeeping and its ``self.log`` (no Trainer is
attached during the steps, so the method's ``self.log`` calls return at once; in a fit each logged value
adds a few small device operations per step), the callbacks (``NonFiniteGuard`` reads the non-finite
record back every 50 steps, metrics, checkpoints, progress bar), the DataLoader that draws the batch
indices on the host, and the kNN monitor. The table is followed by the number of optimiser steps taken
against the steps run per configuration (fewer only where --on-nonfinite skip skipped a step).

Nothing in the timed loop reads a value back to the host (except --on-nonfinite skip's check); on
CUDA the device is synchronised only before and after each timed block of --steps steps. Each figure
is the median over --rounds rounds after --warmup untimed full steps; within a round the four
measurements (baseline and AMCL, full and pre-made) run in turns, in reversed order every other
round (ABBA), and the random generator is seeded alike before the baseline's and AMCL's full-step
blocks, so both see the same indices and augmentations and background load slows both alike. The
ratio is AMCL's median time per step over its baseline's, computed in this process.

Memory of one full step after the warm-up, with all gradients freed first: "step extra" is the peak
the step allocates above the resting state (activations, gradients, temporaries, the views);
"peak" adds what the configuration keeps between steps (parameters, buffers such as MoCo's queue,
SGD momentum), so the other configurations alive in the process do not count. CUDA:
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU: the resident-set
high-water mark (VmHWM, reset through /proc/self/clear_refs) above VmRSS before the step, measured
in a child process whose allocator returns freed tensors to the OS at once (MALLOC_MMAP_THRESHOLD_),
configurations one at a time; --no-memory prints "n/a". On CUDA --check-sync (default) runs one more
step per configuration under ``torch.cuda.set_sync_debug_mode("warn")`` and counts the host
synchronisations of the augmentation and of the model step, naming where they happen.

Prints the device, torch version, threads, batch and image size, precision; one table with
images/s (source images, two views each), ms per step (full and views pre-made), the augmentation's
share, peak memory and, for AMCL, its time ratio to the baseline; then the estimated seconds of a
50,000-image (CIFAR-10) epoch of SimCLR, baseline and AMCL (floor(50,000 / B) steps, drop_last as in
training; the kNN monitor is not included). --json writes every figure.

Targets (from the issue): AMCL's full step at most 1.15x its baseline's, checked per method; on a GPU
of the H100/H200 class, a 50,000-image epoch of SimCLR ResNet-18 at batch 512 in at most 5 s
(checked on CUDA only).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import Tensor

from amcl.config import METHODS, PretrainConfig
from amcl.data.augment import TwoViews, ViewAugmentation
from amcl.methods import METHOD_CLASSES, PretrainMethod
from amcl.nn.backbones import BACKBONES
from timing import (
    MiB,
    block_seconds,
    can_reset_peak_rss,
    cuda_peak_mib,
    device_name,
    format_mib,
    load_average,
    memory_child_output,
    peak_rss_mib,
    synchronize,
    verdict,
)

TARGET_RATIO = 1.15
TARGET_EPOCH_S = 5.0
EPOCH_IMAGES = 50_000
#: Normalisation statistics of CIFAR-10, roughly; any values cost the same.
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
MODES = ("baseline", "amcl")
VARIANTS = ("full", "premade")
#: The schedule's length: the epochs of ``PretrainConfig``'s default run over CIFAR-10's 50,000 images.
SCHEDULE_EPOCHS = PretrainConfig().epochs


# --------------------------------------------------------------------------- the method's own step


class FitOptimizer:
    """The optimiser as the method's ``optimizer_step`` gets it in a fit (Lightning's ``LightningOptimizer``):
    ``step()`` runs the module's ``on_before_optimizer_step`` and clips the global gradient norm to
    ``config.grad_clip`` with Lightning's precision plugin (``gradient_clip_val``, algorithm norm, as training
    sets them), then takes the real optimiser's step."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: PretrainMethod, trainer: L.Trainer) -> None:
        self.optimizer = optimizer
        self.model = model
        self.precision = trainer.precision_plugin
        self.grad_clip = model.config.grad_clip

    def step(self, closure: Callable[[], object] | None = None) -> object:
        result = closure() if closure is not None else None
        self.model.on_before_optimizer_step(self.optimizer)
        if self.grad_clip is not None:
            self.precision.clip_gradients(self.optimizer, self.grad_clip, GradClipAlgorithmType.NORM)
        self.optimizer.step()
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name: str):  # param_groups, state, ...
        return getattr(self.optimizer, name)


class MethodStep:
    """One training step through the method's own hooks, in the order of Lightning's automatic optimisation.

    ``configure_optimizers`` runs once with a real ``lightning.Trainer`` attached (one device, the config's
    precision and gradient clipping, ``max_steps`` = ``schedule_steps``), which is detached again before the
    steps. A step: ``on_train_batch_start``; ``optimizer_step(epoch, batch_idx, optimizer, closure)``, whose
    closure runs ``training_step`` under the precision plugin's autocast, ``on_before_zero_grad``,
    ``optimizer_zero_grad``, ``on_before_backward``, ``backward``, ``on_after_backward``; then
    ``on_train_batch_end`` (MoCo's queue push) and the per-step learning-rate schedule. ``optimizer_steps``
    counts the steps the real optimiser took (a skipped non-finite step takes none).
    """

    def __init__(self, model: PretrainMethod, device: torch.device, schedule_steps: int) -> None:
        config = model.config
        self.trainer = L.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu", devices=[device.index or 0] if device.type == "cuda"
            else 1, precision=config.precision, max_epochs=-1, max_steps=schedule_steps,
            gradient_clip_val=config.grad_clip, gradient_clip_algorithm="norm", logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )
        model.trainer = self.trainer  # configure_optimizers reads world_size and estimated_stepping_batches
        try:
            optimizers = model.configure_optimizers()
        finally:
            model.trainer = None  # outside a fit self.log is a no-op (see the module docstring)
        if isinstance(optimizers, dict):
            self.optimizer = optimizers["optimizer"]
            schedule = optimizers.get("lr_scheduler")
            self.scheduler = schedule["scheduler"] if isinstance(schedule, dict) else schedule
        else:
            self.optimizer, self.scheduler = optimizers, None
        self.model = model
        self.fit_optimizer = FitOptimizer(self.optimizer, model, self.trainer)
        self.steps_run = 0
        self.optimizer_steps = 0
        self.optimizer.register_step_post_hook(self._count_step)

    def _count_step(self, optimizer, args, kwargs) -> None:
        self.optimizer_steps += 1

    def __call__(self, view1: Tensor, view2: Tensor) -> None:
        model, optimizer, batch_idx = self.model, self.fit_optimizer, self.steps_run
        batch = (view1, view2)
        outputs: dict[str, Tensor] = {}

        def closure() -> Tensor:
            with self.trainer.precision_plugin.train_step_context():
                loss = model.training_step(batch, batch_idx)
            model.on_before_zero_grad(optimizer)
            model.optimizer_zero_grad(0, batch_idx, optimizer)
            model.on_before_backward(loss)
            model.backward(loss)
            model.on_after_backward()
            outputs["loss"] = loss.detach()
            return outputs["loss"]

        model.on_train_batch_start(batch, batch_idx)
        model.optimizer_step(0, batch_idx, optimizer, closure)
        model.on_train_batch_end(outputs, batch, batch_idx)
        if self.scheduler is not None:
            self.scheduler.step()
        self.steps_run += 1


# --------------------------------------------------------------------------- one configuration


@dataclass
class Setup:
    """One method in one mode on the device: model, its training step and the input half of a step."""

    method: str
    mode: str
    config: PretrainConfig
    model: PretrainMethod
    train: MethodStep  # the method's own step on two views
    augment: Callable[[], tuple[Tensor, Tensor]]  # gather a batch from the pool and make both views

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.train.optimizer

    def full_step(self) -> None:
        self.train(*self.augment())

    def resident_bytes(self) -> int:
        """Bytes kept between steps: parameters, buffers and optimiser state (each storage once)."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        for state in self.optimizer.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return sum(storages.values())


def method_config(method: str, mode: str, args: argparse.Namespace, device: torch.device) -> PretrainConfig:
    """The config of one benchmarked configuration, resolved as training resolves it."""
    return PretrainConfig(
        method=method, amcl=mode == "amcl", backbone=args.backbone, batch_size=args.batch_size,
        image_size=args.image_size, devices="1", accelerator="gpu" if device.type == "cuda" else "cpu",
        precision="bf16-mixed" if args.precision == "bf16" else "32-true", channels_last=args.channels_last,
        compile=args.compile, optimizer=args.optimizer, grad_clip=args.grad_clip, on_nonfinite=args.on_nonfinite,
    ).resolved()


def build(method: str, mode: str, args: argparse.Namespace, device: torch.device, pool: Tensor) -> Setup:
    config = method_config(method, mode, args, device)
    model = METHOD_CLASSES[method](config, num_classes=10).to(device).train()
    model.on_fit_start()  # as Lightning: channels-last backbone on CUDA, backbone.compile() with --compile
    train = MethodStep(model, device, schedule_steps=SCHEDULE_EPOCHS * (EPOCH_IMAGES // args.batch_size))
    return Setup(method, mode, config, model, train, make_augment(config, args, device, pool))


def make_augment(config: PretrainConfig, args: argparse.Namespace, device: torch.device,
                 pool: Tensor) -> Callable[[], tuple[Tensor, Tensor]]:
    """The input half of a training step: draw a batch from the pool, make both views."""
    two_views = TwoViews(ViewAugmentation(config.augs, config.image_size, config.color_strength, MEAN, STD))
    if args.aug_rng == "device":
        two_views.to(device)  # kornia then draws the random parameters on the device
    channels_last = args.channels_last and device.type == "cuda"
    b = args.batch_size

    def augment() -> tuple[Tensor, Tensor]:
        index = torch.randint(0, pool.shape[0], (b,), device=device)
        views = two_views(pool[index])
        if channels_last:  # as ContrastiveDataModule.on_after_batch_transfer
            views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
        return views

    return augment


def augmentation_ms(args: argparse.Namespace, device: torch.device, pool: Tensor) -> float:
    """Median ms of the input half alone (gather and both views), for comparison with the step."""
    config = PretrainConfig(batch_size=args.batch_size, image_size=args.image_size).resolved()
    augment = make_augment(config, args, device, pool)
    for _ in range(max(1, args.warmup)):
        augment()
    times = []
    for r in range(args.rounds):
        torch.manual_seed(args.seed + 1 + r)
        times.append(block_seconds(augment, args.steps, device))
    return statistics.median(times) * 1000


def premade_views(args: argparse.Namespace, device: torch.device, pool: Tensor) -> tuple[Tensor, Tensor]:
    """Two fixed views of the pool's first batch, shared by every configuration's pre-made step."""
    torch.manual_seed(args.seed)
    augmentation = ViewAugmentation("default", args.image_size, 0.5, MEAN, STD).to(device)
    views = TwoViews(augmentation)(pool[: args.batch_size])
    if args.channels_last and device.type == "cuda":
        views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
    return views


def make_pool(args: argparse.Namespace, device: torch.device) -> Tensor:
    generator = torch.Generator(device=device).manual_seed(args.seed)
    shape = (args.pool, 3, args.image_size, args.image_size)
    return torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=generator)


# --------------------------------------------------------------------------- timing


def time_method(setups: dict[str, Setup], views: tuple[Tensor, Tensor], args: argparse.Namespace,
                device: torch.device) -> dict[str, dict[str, list[float]]]:
    """Per mode and variant, the seconds per step of each round (baseline and AMCL in turns, ABBA)."""
    for setup in setups.values():
        for _ in range(args.warmup):
            setup.full_step()
    synchronize(device)
    steps: dict[tuple[str, str], Callable[[], None]] = {}
    for mode, setup in setups.items():
        steps[mode, "full"] = setup.full_step
        steps[mode, "premade"] = lambda s=setup: s.train(*views)
    order = [(mode, variant) for variant in VARIANTS for mode in MODES]  # baseline, AMCL; then pre-made
    times: dict[str, dict[str, list[float]]] = {mode: {v: [] for v in VARIANTS} for mode in MODES}
    for r in range(args.rounds):
        for mode, variant in order if r % 2 == 0 else order[::-1]:
            torch.manual_seed(args.seed + 1 + r)  # same indices and augmentations for baseline and AMCL
            times[mode][variant].append(block_seconds(steps[mode, variant], args.steps, device))
    return times


# --------------------------------------------------------------------------- memory


def free_gradients(setups: list[Setup]) -> None:
    for setup in setups:
        setup.optimizer.zero_grad(set_to_none=True)


def cuda_memory(setup: Setup, others: list[Setup], device: torch.device) -> dict[str, float]:
    """Peak allocation of one full step above the resting state, and with the configuration's own state."""
    free_gradients([setup, *others])
    extra, peak = cuda_peak_mib(setup.full_step, device)
    resident = setup.resident_bytes() / MiB
    return {"step_extra_mib": extra, "resident_mib": resident, "peak_mib": resident + extra,
            "process_peak_allocated_mib": peak}


def cpu_memory(setup: Setup) -> dict[str, float]:
    """As :func:`cuda_memory` from the resident set (meant for a child with MALLOC_MMAP_THRESHOLD_ set)."""
    free_gradients([setup])
    gc.collect()
    extra, hwm = peak_rss_mib(setup.full_step)
    resident = setup.resident_bytes() / MiB
    return {"step_extra_mib": extra, "resident_mib": resident, "peak_mib": resident + extra,
            "process_peak_rss_mib": hwm}


def memory_child(args: argparse.Namespace) -> None:
    """Runs in the child process: one configuration at a time, JSON of its memory figures on stdout."""
    device = torch.device("cpu")
    pool = make_pool(args, device)
    result: dict[str, dict[str, dict[str, float]]] = {}
    for method in args.methods:
        result[method] = {}
        for mode in MODES:
            setup = build(method, mode, args, device, pool)
            for _ in range(max(1, args.warmup)):
                setup.full_step()
            result[method][mode] = cpu_memory(setup)
            del setup
            gc.collect()
    print(json.dumps(result))


def measure_cpu_memory() -> dict | None:
    """Every configuration's memory figures from a child process, or None where that is impossible."""
    if not can_reset_peak_rss():
        return None
    try:
        return memory_child_output(__file__, sys.argv[1:])
    except RuntimeError as err:
        print(f"# {err}", flush=True)
        return None


# --------------------------------------------------------------------------- host synchronisations


def count_syncs(fn: Callable[[], object]) -> list[str]:
    """Where ``fn`` synchronises the host with the CUDA device ('file:line' of each warning)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower()]


def check_syncs(setup: Setup) -> dict[str, list[str]]:
    views: list[tuple[Tensor, Tensor]] = []
    augmentation = count_syncs(lambda: views.append(setup.augment()))
    step = count_syncs(lambda: setup.train(*views[0]))
    return {"augmentation": augmentation, "step": step}


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available")
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="default: all four (--quick: simclr moco)")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int,
                        help="images per step (default: 512 on CUDA, 64 on CPU, 16 with --quick)")
    parser.add_argument("--pool", type=int, help="uint8 images on the device to draw batches from (default: 4 batches)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 autocast on a CUDA GPU that supports it, else fp32")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="CUDA: channels-last views and backbone, as training's default (ignored on CPU)")
    parser.add_argument("--compile", action="store_true", help="backbone.compile(), as --compile in training")
    parser.add_argument("--optimizer", choices=("sgd", "lars", "adamw"), default=PretrainConfig.optimizer,
                        help="as --optimizer in training (configure_optimizers builds it)")
    parser.add_argument("--grad-clip", type=float, help="as --grad-clip in training (default: no clipping)")
    parser.add_argument("--on-nonfinite", choices=("stop", "skip"), default=PretrainConfig.on_nonfinite,
                        help="as --on-nonfinite in training (skip reads one value back to the host per step)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="set torch.backends.cudnn.benchmark (training leaves it off)")
    parser.add_argument("--aug-rng", choices=("host", "device"), default="host",
                        help="where kornia draws the augmentation parameters: host, as ContrastiveDataModule (its "
                             "TwoViews stays on the CPU), or device (TwoViews moved to the device)")
    parser.add_argument("--warmup", type=int,
                        help="untimed full steps per configuration (default: 2 on CUDA, 1 on CPU)")
    parser.add_argument("--steps", type=int, help="steps per timed block (default: 5 on CUDA, 1 on CPU)")
    parser.add_argument("--rounds", type=int, help="timed blocks per configuration, in turns (default: 3)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                        help="measure peak memory (CPU: in a child process)")
    parser.add_argument("--check-sync", action=argparse.BooleanOptionalAction, default=True,
                        help="CUDA: count host synchronisations of one step per configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: batch 16, simclr and moco, 1 warm-up step, 2 rounds of 1 step")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.memory_child:
        args.device = "cpu"
    cuda = args.device == "cuda"
    defaults = {"batch_size": 512 if cuda else 64, "warmup": 2 if cuda else 1, "steps": 5 if cuda else 1,
                "rounds": 3, "methods": list(METHODS)}
    if args.quick:
        defaults.update(batch_size=16, warmup=1, steps=1, rounds=2, methods=["simclr", "moco"])
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.pool is None:
        args.pool = 4 * args.batch_size
    if args.precision == "auto":
        args.precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    for name in ("batch_size", "pool", "image_size", "steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.batch_size < 2:
        parser.error("--batch-size must be at least 2 (the contrastive losses need negatives)")
    return args


def h100_class(name: str) -> bool:
    return any(tag in name.upper() for tag in ("H100", "H200", "H800"))


def optimizer_steps_line(rows: list[dict]) -> str:
    """How many of the steps run (warm-up, timed and memory steps) took an optimiser step, per configuration."""
    counts = ", ".join(f"{r['method']} {'AMCL' if r['mode'] == 'amcl' else 'baseline'} {r['optimizer_steps']} / "
                       f"{r['steps_run']}" for r in rows)
    skipped = sum(r["steps_run"] - r["optimizer_steps"] for r in rows)
    note = f"; {skipped} step(s) skipped as non-finite (--on-nonfinite skip)" if skipped else ""
    return f"# optimiser steps taken / steps run: {counts}{note}"


def quiet_lightning() -> None:
    """No Trainer banners, and no warning for the method's ``self.log`` outside a fit (a no-op there)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*self.log.*trainer.*reference is not registered.*")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    quiet_lightning()
    if args.memory_child:
        return memory_child(args)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    name = device_name(device)
    channels_last = args.channels_last and cuda
    print(f"# device {args.device} ({name}), torch {torch.__version__}, {args.threads} CPU threads "
          f"({os.cpu_count()} cores), load average {load_average()}", flush=True)
    print(f"# {args.backbone}, batch {args.batch_size}, {args.image_size} px, {args.precision}, channels-last "
          f"{'on' if channels_last else 'off'}, compile {'on' if args.compile else 'off'}"
          f"{', cudnn.benchmark' if cuda and args.cudnn_benchmark else ''}, augmentation parameters drawn on the "
          f"{'device' if cuda and args.aug_rng == 'device' else 'host'}; pool of {args.pool} uint8 images on the "
          f"device; median of {args.rounds} rounds of {args.steps} step(s) after {args.warmup} warm-up step(s), "
          f"baseline and AMCL in turns", flush=True)
    clipping = "no gradient clipping" if args.grad_clip is None else f"grad_clip {args.grad_clip:g}"
    print(f"# step: the method's training_step and optimizer_step (optimizer {args.optimizer}, on_nonfinite "
          f"{args.on_nonfinite}, {clipping}), its per-step learning-rate schedule, on_train_batch_end", flush=True)
    started = time.perf_counter()
    result: dict = {
        "device": args.device, "device_name": name, "torch": torch.__version__, "threads": args.threads,
        "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg()[0], "backbone": args.backbone,
        "batch_size": args.batch_size, "image_size": args.image_size, "pool": args.pool, "precision": args.precision,
        "channels_last": channels_last, "compile": args.compile, "aug_rng": args.aug_rng,
        "cudnn_benchmark": cuda and args.cudnn_benchmark, "warmup": args.warmup, "steps": args.steps,
        "rounds": args.rounds, "optimizer": args.optimizer, "grad_clip": args.grad_clip,
        "on_nonfinite": args.on_nonfinite, "target_ratio": TARGET_RATIO, "target_epoch_s": TARGET_EPOCH_S, "rows": [],
    }

    cpu_mem = None
    if args.memory and not cuda:
        cpu_mem = measure_cpu_memory()
        print(f"# memory measured in a child process ({time.perf_counter() - started:.0f} s)"
              if cpu_mem is not None else "# memory: n/a (no /proc/self/clear_refs or the child failed)", flush=True)

    pool = make_pool(args, device)
    views = premade_views(args, device, pool)
    result["augmentation_ms"] = augmentation_ms(args, device, pool)
    print(f"# augmentation alone (gather + two views of {args.batch_size} images): "
          f"{result['augmentation_ms']:,.1f} ms per batch", flush=True)
    header = ("| method | mode | heads | images/s | ms/step | ms/step, views pre-made | augmentation share | "
              "peak (MiB) | step extra (MiB) | AMCL / baseline | pre-made AMCL / baseline | "
              f"<= {TARGET_RATIO:g}x |")
    if cuda and args.check_sync:
        header += " host syncs (aug. / step) |"
    rows_out: list[str] = []
    syncs_seen: dict[str, set[str]] = {}
    for method in args.methods:
        t0 = time.perf_counter()
        setups = {mode: build(method, mode, args, device, pool) for mode in MODES}
        times = time_method(setups, views, args, device)
        base: dict[str, float] = {}
        for mode, setup in setups.items():
            full, premade = (statistics.median(times[mode][v]) for v in VARIANTS)
            row = {
                "method": method, "mode": mode, "heads": setup.config.heads,
                "ms_per_step": full * 1000, "images_per_s": args.batch_size / full,
                "ms_per_step_premade": premade * 1000, "images_per_s_premade": args.batch_size / premade,
                "augmentation_share": max(0.0, 1 - premade / full),
                "augmentation_alone_share": result["augmentation_ms"] / (full * 1000),
                "rounds_ms": {v: [t * 1000 for t in times[mode][v]] for v in VARIANTS},
            }
            if mode == "baseline":
                base = {"full": full, "premade": premade}
            else:
                row["ratio"] = full / base["full"]
                row["ratio_premade"] = premade / base["premade"]
                row["met"] = row["ratio"] <= TARGET_RATIO
            if cuda and args.memory:
                row.update(cuda_memory(setup, [s for s in setups.values() if s is not setup], device))
            elif cpu_mem is not None:
                row.update(cpu_mem[method][mode])
            if cuda and args.check_sync:
                row["host_syncs"] = check_syncs(setup)
                for phase, places in row["host_syncs"].items():
                    syncs_seen.setdefault(f"{method} {mode} {phase}", set()).update(places)
            row["steps_run"], row["optimizer_steps"] = setup.train.steps_run, setup.train.optimizer_steps
            result["rows"].append(row)
            ratio = f"{row['ratio']:.3f}x" if "ratio" in row else "-"
            ratio_premade = f"{row['ratio_premade']:.3f}x" if "ratio_premade" in row else "-"
            line = (f"| {method} | {'AMCL' if mode == 'amcl' else 'baseline'} | {row['heads']} | "
                    f"{row['images_per_s']:,.1f} | {row['ms_per_step']:,.1f} | {row['ms_per_step_premade']:,.1f} | "
                    f"{row['augmentation_share']:.0%} | {format_mib(row.get('peak_mib'))} | "
                    f"{format_mib(row.get('step_extra_mib'))} | {ratio} | {ratio_premade} | "
                    f"{verdict(row['met']) if 'met' in row else '-'} |")
            if "host_syncs" in row:
                line += f" {len(row['host_syncs']['augmentation'])} / {len(row['host_syncs']['step'])} |"
            rows_out.append(line)
        print(f"# {method}: {time.perf_counter() - t0:.0f} s", flush=True)
        del setups
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

    print(f"\n{header}\n|{'---|' * (header.count('|') - 1)}")
    print("\n".join(rows_out))
    ratios = [row["ratio"] for row in result["rows"] if "ratio" in row]
    if ratios:
        worst = max(ratios)
        print(f"\nTarget AMCL step <= {TARGET_RATIO:g}x its baseline's: {verdict(worst <= TARGET_RATIO)} "
              f"(worst {worst:.3f}x; per method: "
              + ", ".join(f"{r['method']} {verdict(r['met'])}" for r in result["rows"] if "ratio" in r) + ")")
    print(optimizer_steps_line(result["rows"]))
    for place, seen in syncs_seen.items():
        if seen:
            print(f"# host synchronisations, {place}: {', '.join(sorted(seen))}")

    simclr = {r["mode"]: r for r in result["rows"] if r["method"] == "simclr"}
    if simclr:
        steps = EPOCH_IMAGES // args.batch_size
        epoch = {mode: steps * r["ms_per_step"] / 1000 for mode, r in simclr.items()}
        result["epoch_s"] = {"steps": steps, **epoch}
        print(f"\nSimCLR {args.backbone}, one {EPOCH_IMAGES:,}-image epoch ({steps} steps of {args.batch_size}, kNN "
              f"monitor not included): baseline {epoch['baseline']:,.1f} s, AMCL {epoch['amcl']:,.1f} s")
        if cuda:
            notes = []
            if not h100_class(name):
                notes.append(f"the target is for H100/H200-class GPUs, this is {name}")
            if args.batch_size != 512 or args.backbone != "resnet18" or args.image_size != 32:
                notes.append("the target is for ResNet-18 at 32 px, batch 512")
            worst = max(epoch.values())
            result["epoch_met"] = worst <= TARGET_EPOCH_S
            print(f"Target epoch <= {TARGET_EPOCH_S:g} s: baseline {verdict(epoch['baseline'] <= TARGET_EPOCH_S)}, "
                  f"AMCL {verdict(epoch['amcl'] <= TARGET_EPOCH_S)}" + (f" ({'; '.join(notes)})" if notes else ""))

    result["seconds"] = time.perf_counter() - started
    result["load_average_end"] = os.getloadavg()[0]
    print(f"\n# total {result['seconds']:.0f} s; load average {load_average()} (CPU figures taken beside other busy "
          f"processes are unreliable)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
