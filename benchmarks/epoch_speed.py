"""Whole training epochs through ``amcl pretrain``'s own path (Lightning fit, data module, on-device
augmentation, checkpoint at every epoch end): SimCLR baseline against AMCL, with and without
``torch.compile``.

    .venv/bin/python benchmarks/epoch_speed.py [--device auto|cpu|cuda] [--images 50000] [--image-size 32]
        [--batch-size 512] [--backbone resnet18] [--epochs 3] [--precision auto] [--compile both|on|off]
        [--modes baseline amcl] [--quick] [--json PATH]
    .venv/bin/python benchmarks/epoch_speed.py --quick     # CPU smoke test: 1,024 16 px images, small CNN
    .venv/bin/python benchmarks/epoch_speed.py --device cuda --json epochs.json   # 50,000 32 px, batch 512, bf16

The images are :func:`amcl.data.synthetic.make_synthetic`'s class-structured uint8 images, kept in
memory as a dataset is. Each configuration trains ``--epochs`` epochs with the kNN monitor off
(``knn_every`` past the last epoch; the monitor of the final state is not timed) into a temporary
folder. The first epoch pays for start-up (cuDNN's search, compilation) and is reported apart; the
others are timed from ``run.json``'s ``epoch_seconds`` (the recorder's clock: every training step of
the epoch, not the checkpoint written after it). Prints a markdown table: seconds of the first
epoch, median seconds of the others, images per second, and AMCL against the baseline of the same
compile setting.
Target on an H200 (issue 17): a 50,000-image SimCLR-ResNet-18 epoch in at most 5 s, AMCL at most 1.1x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from amcl.config import PretrainConfig
from amcl.data.synthetic import make_synthetic
from amcl.train import pretrain_once

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import device_name  # noqa: E402

TARGET_SECONDS, TARGET_RATIO = 5.0, 1.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if available")
    parser.add_argument("--images", type=int, help="training images (default: 50,000; --quick 1,024)")
    parser.add_argument("--image-size", type=int, help="default: 32 (--quick 16)")
    parser.add_argument("--batch-size", type=int, help="default: 512 (--quick 128)")
    parser.add_argument("--backbone", help="default: resnet18 (--quick small_cnn)")
    parser.add_argument("--epochs", type=int, default=3, help="the first is start-up, the rest are timed")
    parser.add_argument("--precision", default="auto", help="Lightning precision (auto: bf16-mixed on CUDA)")
    parser.add_argument("--compile", choices=("both", "on", "off"), help="default: both on CUDA, off on CPU")
    parser.add_argument("--modes", nargs="+", choices=("baseline", "amcl"), default=["baseline", "amcl"])
    parser.add_argument("--quick", action="store_true", help="a CPU smoke test of a few seconds per configuration")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    args.accelerator = "gpu" if cuda else "cpu"
    quick = args.quick
    args.images = args.images or (1024 if quick else 50_000)
    args.image_size = args.image_size or (16 if quick else 32)
    args.batch_size = args.batch_size or (128 if quick else 512)
    args.backbone = args.backbone or ("small_cnn" if quick else "resnet18")
    args.compile = args.compile or ("both" if cuda and not quick else "off")
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is start-up, the others are timed")
    return args


def run(mode: str, compiled: bool, args: argparse.Namespace, folder: Path) -> dict:
    """One configuration's epochs: start-up and timed seconds, images per second."""
    config = PretrainConfig(
        method="simclr", amcl=mode == "amcl", dataset="synthetic", backbone=args.backbone,
        image_size=args.image_size, batch_size=args.batch_size, epochs=args.epochs, knn_every=args.epochs + 1,
        knn_k=20, accelerator=args.accelerator, precision=args.precision, compile=compiled, progress=False,
        out=str(folder / f"{mode}-{'compiled' if compiled else 'eager'}"),
    ).resolved()
    splits = make_synthetic(num_train=args.images, num_test=256, image_size=args.image_size)
    pretrain_once(config, splits=splits)
    seconds = json.loads((Path(config.out) / "run.json").read_text())["epoch_seconds"]
    timed = statistics.median(seconds[1:])
    images = args.images // args.batch_size * args.batch_size  # drop_last
    return {"mode": mode, "compile": compiled, "first_epoch_s": seconds[0], "epoch_s": timed,
            "images_per_s": images / timed, "precision": config.precision}


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    print(f"# {device_name(device)}, torch {torch.__version__}: SimCLR {args.backbone}, {args.images:,} images of "
          f"{args.image_size} px, batch {args.batch_size}, {args.epochs} epochs (the first is start-up)", flush=True)
    settings = {"both": (False, True), "on": (True,), "off": (False,)}[args.compile]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for compiled in settings:
            for mode in args.modes:
                rows.append(run(mode, compiled, args, Path(tmp)))
    baseline = {r["compile"]: r["epoch_s"] for r in rows if r["mode"] == "baseline"}
    print("\n| mode | compile | precision | first epoch (s) | epoch (s) | images/s | vs baseline |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["epoch_s"] / baseline[r["compile"]] if r["compile"] in baseline else None
        r["ratio"] = ratio
        print(f"| {r['mode']} | {'on' if r['compile'] else 'off'} | {r['precision']} | {r['first_epoch_s']:.2f} | "
              f"{r['epoch_s']:.2f} | {r['images_per_s']:,.0f} | {'' if ratio is None else f'{ratio:.2f}x'} |")
    if args.images == 50_000 and device.type == "cuda":
        best = min(r["epoch_s"] for r in rows if r["mode"] == "baseline") if baseline else None
        ratios = [r["ratio"] for r in rows if r["mode"] == "amcl" and r["ratio"] is not None]
        print(f"\nTarget epoch <= {TARGET_SECONDS:g} s: {'met' if best and best <= TARGET_SECONDS else 'NOT met'}; "
              f"AMCL <= {TARGET_RATIO:g}x: {'met' if ratios and max(ratios) <= TARGET_RATIO else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name(device), "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
