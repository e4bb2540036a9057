"""Input pipeline throughput: on-device augmentation per policy and folder decoding, against the
training step throughput of ResNet-18 (SimCLR baseline) on the same device.

    .venv/bin/python benchmarks/input_pipeline.py [--device auto|cpu|cuda]
        [--policies a b c d e default abcde color] [--sizes 32 96] [--batch-size B] [--pool N]
        [--step-batch-size B] [--precision auto|fp32|bf16] [--amcl] [--decode-files 256]
        [--decode-image 400x300] [--png] [--workers W ...] [--decode-batch-size 32]
        [--warmup N] [--repeats N] [--step-warmup N] [--step-repeats N] [--threads N]
        [--quick] [--json PATH]
    .venv/bin/python benchmarks/input_pipeline.py --quick     # smoke test, ~15 s on 2 CPU cores
    .venv/bin/python benchmarks/input_pipeline.py --png       # ~3 min on 2 CPU cores (the 96 px step
                                                              # takes ~35 s at batch 64)

What is timed (each figure the median of --repeats timed runs after --warmup untimed ones;
on CUDA the device is synchronised before every timer read):

* augmentation: a pool of --pool random uint8 ``[N, 3, S, S]`` images lies on the device, as the
  in-memory data module keeps a dataset there; one step draws --batch-size random indices on the
  device, gathers ``pool[index]`` and makes both views with ``TwoViews(ViewAugmentation(policy, S,
  0.5, mean, std))`` (normalisation included, as in training). Images/s counts source images, one
  per pair of views.
* training step: the SimCLR method's own step outside a fit, as ``train_speed.py`` drives it
  (``training_step`` and ``optimizer_step`` with the optimiser and schedule of
  ``configure_optimizers``; see ``train_speed.MethodStep``), on pre-made float views of
  --step-batch-size images at each size (halved until it fits if the device runs out of memory;
  the batch used is printed). The backbone is the one the config resolves to for that
  image size (ResNet-18 with the CIFAR stem below 128 px). bf16-mixed on CUDA, 32-true on CPU
  (--precision). Images/s counts source images (two views each).
* decoding: a temporary folder of --decode-files JPEG files (--decode-image, smooth random
  content with mild noise, quality 90; with --png as many PNG files as well) is decoded by
  ``DecodedImages`` through ``file_batches(..., workers=W)`` at each size, for each W in
  --workers. Workers are persistent and a warm-up epoch runs first, so process start-up is not
  counted; the files sit in the page cache. The folder is deleted afterwards.

Prints the machine, torch version and threads, then a table per policy and size: augmentation
images/s, ResNet-18 step images/s at that size, their ratio and whether the target is met; then
the decoding table with its ratio to the step throughput. --json writes every figure.

Target: the input pipeline is never the bottleneck: augmentation at least 5x the training step's
images/s (checked at every size; the issue's bar is 32 px on CPU). On a CPU, augmentation,
decoding and the step share the same cores, so a ratio r costs the step a fraction 1 / (1 + r)
of its time; decoding workers compete with the step for cores too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from amcl.config import PretrainConfig
from amcl.data.augment import TwoViews, ViewAugmentation, parse_policy
from amcl.data.folders import DecodedImages, ImageFiles, default_workers, file_batches
from amcl.methods.simclr import SimCLR
from timing import device_name, median_seconds
from train_speed import EPOCH_IMAGES, MethodStep, quiet_lightning

TARGET_RATIO = 5.0
POLICIES = ("a", "b", "c", "d", "e", "default", "abcde", "color")
#: Normalisation statistics of CIFAR-10, roughly; any values cost the same.
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


# --------------------------------------------------------------------------- augmentation


def augmentation_rate(policy: str, size: int, args: argparse.Namespace, device: torch.device) -> float:
    """Source images/s of index gather + two views, uint8 pool on ``device``."""
    generator = torch.Generator(device=device).manual_seed(0)
    pool = torch.randint(0, 256, (args.pool, 3, size, size), dtype=torch.uint8, device=device, generator=generator)
    two_views = TwoViews(ViewAugmentation(policy, size, 0.5, MEAN, STD)).to(device)

    def step() -> None:
        index = torch.randint(0, args.pool, (args.batch_size,), device=device)
        view1, view2 = two_views(pool[index])
        assert view1.shape == view2.shape == (args.batch_size, 3, size, size)

    return args.batch_size / median_seconds(step, device, args.warmup, args.repeats)


# --------------------------------------------------------------------------- training step


def step_config(size: int, batch_size: int, args: argparse.Namespace, device: torch.device) -> PretrainConfig:
    return PretrainConfig(method="simclr", amcl=args.amcl, dataset="synthetic", image_size=size, batch_size=batch_size,
                          accelerator="gpu" if device.type == "cuda" else "cpu",
                          precision="bf16-mixed" if args.precision == "bf16" else "32-true").resolved()


def step_rate(size: int, args: argparse.Namespace, device: torch.device) -> tuple[float, str, int]:
    """Source images/s of one SimCLR training step (the method's own, as train_speed.py times it), the
    backbone and the batch used: --step-batch-size, halved until it fits when the device runs out of memory."""
    b = args.step_batch_size
    while True:
        try:
            rate, backbone = _step_rate(size, b, args, device)
            return rate, backbone, b
        except torch.OutOfMemoryError:
            if b == 1:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"# step at {size} px: out of memory with batch {b}, trying {b // 2}", flush=True)
            b //= 2


def _step_rate(size: int, b: int, args: argparse.Namespace, device: torch.device) -> tuple[float, str]:
    config = step_config(size, b, args, device)
    model = SimCLR(config, num_classes=10).to(device).train()
    model.on_fit_start()
    train = MethodStep(model, device, schedule_steps=config.epochs * (EPOCH_IMAGES // b))
    views = tuple(torch.randn(b, 3, size, size, device=device) for _ in range(2))
    return b / median_seconds(lambda: train(*views), device, args.step_warmup, args.step_repeats), config.backbone


# --------------------------------------------------------------------------- decoding


def write_images(folder: Path, count: int, width: int, height: int, fmt: str) -> list[str]:
    """``count`` photo-sized files of smooth random content with mild noise (JPEG quality 90 or PNG)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, (max(2, height // 40), max(2, width // 40), 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
        pixels = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.{'jpg' if fmt == 'jpeg' else 'png'}"
        Image.fromarray(pixels).save(path, **({"quality": 90} if fmt == "jpeg" else {}))
        paths.append(str(path))
    return paths


def decode_rate(paths: list[str], size: int, workers: int, args: argparse.Namespace) -> float:
    """Images/s of ``DecodedImages`` through ``file_batches`` with ``workers`` (persistent) processes."""
    files = ImageFiles(tuple(paths), torch.full((len(paths),), -1, dtype=torch.int64))
    loader = file_batches(DecodedImages(files, size), workers, args.decode_batch_size,
                          persistent_workers=workers > 0)

    def epoch() -> None:
        count = sum(len(batch[0]) for batch in loader)
        assert count == len(paths)

    seconds = median_seconds(epoch, torch.device("cpu"), 1, args.decode_repeats)
    loader = None  # shuts the workers down
    return len(paths) / seconds


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda if available")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES))
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 96])
    parser.add_argument("--batch-size", type=int, help="augmentation batch (default: 256 on CPU, 512 on CUDA)")
    parser.add_argument("--pool", type=int, help="uint8 images on the device to gather from (default: 8 batches)")
    parser.add_argument("--step-batch-size", type=int,
                        help="training step batch (default: 64 on CPU, --batch-size on CUDA)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="training step: auto = bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--amcl", action="store_true",
                        help="time the AMCL SimCLR step (3 heads) instead of the baseline")
    parser.add_argument("--decode-files", type=int, default=256)
    parser.add_argument("--decode-image", default="400x300", help="WIDTHxHEIGHT of the files written")
    parser.add_argument("--png", action="store_true", help="also time as many PNG files")
    parser.add_argument("--workers", type=int, nargs="+", help=f"decoding processes (default: 0 {default_workers()})")
    parser.add_argument("--decode-batch-size", type=int, default=32,
                        help="files per loader batch (small enough that every worker gets batches)")
    parser.add_argument("--warmup", type=int, help="untimed augmentation batches (default: 1 on CPU, 5 on CUDA)")
    parser.add_argument("--repeats", type=int, help="timed augmentation batches (default: 5 on CPU, 20 on CUDA)")
    parser.add_argument("--step-warmup", type=int, help="untimed training steps (default: 1 on CPU, 5 on CUDA)")
    parser.add_argument("--step-repeats", type=int, help="timed training steps (default: 3 on CPU, 20 on CUDA)")
    parser.add_argument("--decode-repeats", type=int, default=3, help="timed decoding epochs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: small batches and pools, one timed run each, 32 decoded files")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    for policy in args.policies:
        try:
            parse_policy(policy)
        except ValueError as exc:
            parser.error(str(exc))
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    cuda = args.device == "cuda"
    defaults = {
        "batch_size": 512 if cuda else 256, "warmup": 5 if cuda else 1, "repeats": 20 if cuda else 5,
        "step_warmup": 5 if cuda else 1, "step_repeats": 20 if cuda else 3,
    }
    if args.quick:
        defaults.update(batch_size=64, warmup=1, repeats=2, step_warmup=1, step_repeats=1)
        args.decode_files = min(args.decode_files, 32)
        args.decode_batch_size = min(args.decode_batch_size, 8)
        args.decode_repeats = 1
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.step_batch_size is None:
        args.step_batch_size = 8 if args.quick else (args.batch_size if cuda else 64)
    if args.pool is None:
        args.pool = 8 * args.batch_size
    if args.precision == "auto":
        args.precision = "bf16" if cuda else "fp32"
    if args.workers is None:
        args.workers = sorted({0, default_workers()})
    try:
        args.decode_width, args.decode_height = (int(v) for v in args.decode_image.lower().split("x"))
    except ValueError:
        parser.error(f"--decode-image must be WIDTHxHEIGHT, e.g. 400x300, not {args.decode_image!r}")
    return args


def verdict(ratio: float) -> str:
    return "met" if ratio >= TARGET_RATIO else "NOT met"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    quiet_lightning()
    device = torch.device(args.device)
    name = device_name(device)
    print(f"# device {args.device} ({name}), torch {torch.__version__}, {args.threads} CPU threads "
          f"({os.cpu_count()} cores), default workers {default_workers()}", flush=True)
    print(f"# augmentation: batch {args.batch_size} from a pool of {args.pool}, median of {args.repeats} after "
          f"{args.warmup} warm-up; step: batch {args.step_batch_size}, {args.precision}, median of "
          f"{args.step_repeats} after {args.step_warmup} warm-up", flush=True)
    started = time.perf_counter()
    result: dict = {
        "device": args.device, "device_name": name, "torch": torch.__version__, "threads": args.threads,
        "cpu_count": os.cpu_count(), "batch_size": args.batch_size, "pool": args.pool,
        "step_batch_size": args.step_batch_size, "precision": args.precision, "amcl": args.amcl,
        "target_ratio": TARGET_RATIO, "step": {}, "augmentation": [], "decoding": [],
    }

    steps = {}
    for size in args.sizes:
        rate, backbone, batch = step_rate(size, args, device)
        steps[size] = rate
        result["step"][str(size)] = {"images_per_s": rate, "backbone": backbone, "batch_size": batch}
        print(f"# step at {size} px ({backbone}, {'AMCL' if args.amcl else 'baseline'} SimCLR, batch {batch}): "
              f"{rate:,.1f} images/s", flush=True)

    print(f"\n| policy | size | augmentation (images/s) | step (images/s) | ratio | >= {TARGET_RATIO:g}x |")
    print("|---|---|---|---|---|---|")
    for policy in args.policies:
        for size in args.sizes:
            rate = augmentation_rate(policy, size, args, device)
            ratio = rate / steps[size]
            result["augmentation"].append({"policy": policy, "canonical": parse_policy(policy), "size": size,
                                           "images_per_s": rate, "step_images_per_s": steps[size], "ratio": ratio,
                                           "met": ratio >= TARGET_RATIO})
            print(f"| {policy} | {size} | {rate:,.0f} | {steps[size]:,.1f} | {ratio:,.1f}x | {verdict(ratio)} |",
                  flush=True)
    ratios = [row["ratio"] for row in result["augmentation"]]
    if ratios:
        print(f"\nTarget augmentation >= {TARGET_RATIO:g}x step: {verdict(min(ratios))} (worst {min(ratios):.1f}x)")

    formats = ["jpeg"] + (["png"] if args.png else [])
    if args.decode_files > 0:
        print(f"\n# decoding {args.decode_files} files of {args.decode_width}x{args.decode_height} per format, "
              f"loader batch {args.decode_batch_size}, median of {args.decode_repeats} epochs after a warm-up\n")
        print("| format | size | workers | decoding (images/s) | step (images/s) | ratio |")
        print("|---|---|---|---|---|---|")
        folder = Path(tempfile.mkdtemp(prefix="amcl-decode-"))
        try:
            for fmt in formats:
                paths = write_images(folder, args.decode_files, args.decode_width, args.decode_height, fmt)
                for size in args.sizes:
                    for workers in args.workers:
                        rate = decode_rate(paths, size, workers, args)
                        ratio = rate / steps[size]
                        result["decoding"].append({"format": fmt, "size": size, "workers": workers,
                                                   "images_per_s": rate, "step_images_per_s": steps[size],
                                                   "ratio": ratio})
                        print(f"| {fmt} | {size} | {workers} | {rate:,.0f} | {steps[size]:,.1f} | {ratio:,.1f}x |",
                              flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    result["seconds"] = time.perf_counter() - started
    print(f"\n# total {result['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
