"""Forward + backward time and peak memory of the AMCL loss (Eq. 2.1, with the temperature net)
against C plain NT-Xent losses on the same tensors.

    .venv/bin/python benchmarks/loss_speed.py [--batch-sizes 256 512 1024] [--heads 3] [--dim 128]

Prints one row per batch size: median milliseconds, peak extra memory (RSS high-water mark
during the step, Linux) and the largest tensor created, then AMCL's ratio to the baseline.
Target: AMCL at most 3x the plain losses' time at B = 512, and no tensor of B x B x d elements.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import statistics
import subprocess
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from amcl.losses import amcl_nt_xent_loss, nt_xent_loss
from amcl.nn import TemperatureNet


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def peak_extra_mib(step) -> float:
    """Peak resident memory above the level before ``step`` (resets the high-water mark first)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_kib("VmRSS:")
    step()
    return (_rss_kib("VmHWM:") - before) / 1024


def median_ms(step, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def steps(b: int, args: argparse.Namespace):
    """The two forward + backward steps on the same random projections ``[C, B, d]``."""
    phi = TemperatureNet(args.dim)
    z1 = torch.randn(args.heads, b, args.dim, requires_grad=True)
    z2 = torch.randn(args.heads, b, args.dim, requires_grad=True)

    def baseline() -> None:
        nt_xent_loss(z1, z2, 0.5).backward()

    def amcl() -> None:
        taus = phi.pair_temperatures(torch.cat([z1, z2], dim=1))
        amcl_nt_xent_loss(z1, z2, taus, beta=1e-4, topk=args.topk).backward()

    return baseline, amcl


def memory_child(args: argparse.Namespace) -> None:
    result = {}
    for b in args.batch_sizes:
        baseline, amcl = steps(b, args)
        baseline(), amcl()  # warm-up
        result[b] = (peak_extra_mib(baseline), peak_extra_mib(amcl))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--topk", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
          f"C={args.heads}, d={args.dim}, top-k={args.topk}")
    print("| B | NT-Xent x C (ms) | AMCL (ms) | time ratio | NT-Xent peak (MiB) | AMCL peak (MiB) | "
          "largest AMCL tensor | B*B*d |")
    print("|---|---|---|---|---|---|---|---|")
    # Memory is measured in a child process with a fixed mmap threshold: glibc then returns every
    # large tensor to the OS when it is freed, so the RSS high-water mark is each step's own peak.
    child = subprocess.run(
        [sys.executable, __file__, "--memory-child", *sys.argv[1:]], capture_output=True, text=True, check=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
    )
    memory = json.loads(child.stdout)
    for b in args.batch_sizes:
        baseline, amcl = steps(b, args)
        t_base, t_amcl = median_ms(baseline, args.repeats), median_ms(amcl, args.repeats)
        m_base, m_amcl = memory[str(b)]
        with LargestTensor() as largest:
            amcl()
        print(f"| {b} | {t_base:.1f} | {t_amcl:.1f} | {t_amcl / t_base:.2f}x | {m_base:.0f} | {m_amcl:.0f} | "
              f"{largest.numel:,} | {b * b * args.dim:,} |", flush=True)


if __name__ == "__main__":
    main()
