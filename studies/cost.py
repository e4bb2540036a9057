"""What one Fashion-MNIST run costs on one CPU core, to size the study of docs/results.md (section "Cost").

    .venv/bin/python studies/cost.py --out runs/cost

For the small CNN at 16 and 28 px on a 10,000- and a 60,000-image training subset it runs `amcl pretrain`
(SimCLR baseline and the recommended AMCL form, batch 256, policy abcde, a 10% validation split) in a
subprocess with one thread, for a few epochs, and prints per setting: the seconds of a training epoch (the
median after the first), of the kNN monitor's pass (bank = labelled training images, queries = the 10,000
test and the validation images), and the epochs that fit in 5 minutes with one kNN pass at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run(out: Path, size: int, subset: int, amcl: bool, epochs: int) -> dict[str, float]:
    folder = out / f"{'amcl' if amcl else 'baseline'}-{size}px-{subset}"
    command = [sys.executable, "-m", "amcl.cli", "pretrain", "--dataset", "fashion_mnist", "--backbone", "small_cnn",
               "--image-size", str(size), "--train-subset", str(subset), "--val-fraction", "0.1", "--batch-size",
               "256", "--augs", "abcde", "--epochs", str(epochs), "--knn-every", str(epochs + 1), "--no-progress",
               "--workers", "0", "--out", str(folder), "--overwrite", *(["--amcl"] if amcl else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    seconds = json.loads((folder / "run.json").read_text())["epoch_seconds"]
    epoch = statistics.median(seconds[1:])
    return {"epoch_s": epoch, "wall_s": wall, "rest_s": wall - sum(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/cost"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 28])
    parser.add_argument("--subsets", type=int, nargs="+", default=[10_000, 60_000])
    args = parser.parse_args()
    print("| setting | mode | s / epoch | start-up, data and final kNN (s) | epochs in 5 min |")
    print("|---|---|---:|---:|---:|")
    for size in args.sizes:
        for subset in args.subsets:
            for amcl in (False, True):
                cost = run(args.out, size, subset, amcl, args.epochs)
                fit = max(0, int((300 - cost["rest_s"]) // cost["epoch_s"]))
                print(f"| {size} px, {subset} images | {'AMCL softmax' if amcl else 'baseline'} | "
                      f"{cost['epoch_s']:.1f} | {cost['rest_s']:.0f} | {fit} |", flush=True)


if __name__ == "__main__":
    main()
