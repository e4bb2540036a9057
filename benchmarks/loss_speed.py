"""Forward + backward time and peak memory of every method's AMCL loss (with its temperature net)
against the method's plain loss on the same tensors.

    .venv/bin/python benchmarks/loss_speed.py [--methods simclr simclr_softmax moco moco_softmax simsiam barlow_twins]
        [--batch-sizes B ...] [--heads 3] [--dim 128] [--siamese-dim 2048] [--queue-size 4096]
        [--topk 1] [--repeats 10] [--threads N] [--device cpu|cuda] [--quick]

--device cuda builds every tensor on the GPU (``torch.set_default_device``) and measures the peak of
CUDA memory each step allocates instead of the process's RSS; --quick is a smoke test (simclr,
simclr_softmax and moco at B = 64, 2 repeats).

The pairs timed, on random features of C heads:

* simclr: ``nt_xent_loss`` against ``amcl_nt_xent_loss`` with the factored temperatures the SimCLR
  method passes (``TemperatureNet.pair_factors``: only the positive and top-k pairs are computed);
  d = --dim, B = 256, 512, 1024. Also timed: ``reference_nt_xent`` below, NT-Xent as the widely used
  SSL libraries write it (cross-entropy over the masked logit matrix), once per head.
* simclr_softmax: ``nt_xent_loss`` against ``amcl_softmax_nt_xent_loss``, the softmax form over the
  [C, 2B, 2B] similarity and temperature matrices (beta 0.01, the form's default), and the reference.
* moco: ``moco_infonce_loss`` against ``amcl_moco_loss`` for queries and keys [C, 2B, d] (both
  view directions) and a [C, K, d] queue (the queue's temperatures as factors, as the MoCo method
  passes them); d = --dim, K = --queue-size, B = 256, 512, 1024.
* moco_softmax: ``moco_infonce_loss`` against ``amcl_softmax_moco_loss`` over the same queue.
* simsiam: ``simsiam_loss`` against ``amcl_simsiam_loss`` (temperatures of the 2 x [C, B]
  prediction-projection pairs); d = --siamese-dim, B = 256, 512.
* barlow_twins: ``barlow_twins_loss`` against ``amcl_barlow_twins_loss``, whose temperature net
  reads the batch-wise channel vectors (input size B) and gives a [C, d, d] temperature matrix;
  d = --siamese-dim, B = 256, 512.

--batch-sizes replaces every method's default batch sizes. Prints a line naming the machine,
then per method a line with the sizes used (for barlow_twins also the MiB of the temperature
matrix) and a markdown table with one row per batch size: median milliseconds of the baseline and
the AMCL step (timed in turns, so that background load slows both alike) and their ratio, peak
extra memory (RSS high-water mark during the step, Linux, measured in a child process), and the
element count of the largest tensor any op of the AMCL step created against a reference size
(B*B*d for simclr, 2B*K*d for moco: no per-pair feature vectors are built).
Targets: every AMCL loss at most 3x its baseline's time; for simclr (Eq. 2.1) the AMCL loss at most
1.3x the reference NT-Xent of C heads, and ``nt_xent_loss``'s peak memory at most 1.2x the reference's.
Each table is followed by whether they were met.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from amcl.losses import (
    PairTemperatures,
    amcl_barlow_twins_loss,
    amcl_moco_loss,
    amcl_nt_xent_loss,
    amcl_simsiam_loss,
    amcl_softmax_moco_loss,
    amcl_softmax_nt_xent_loss,
    barlow_twins_loss,
    batch_standardise,
    moco_infonce_loss,
    nt_xent_loss,
    paired_temperatures,
    simsiam_loss,
)
from amcl.nn import TemperatureNet
from amcl.profiling import LargestTensor
from timing import cuda_peak_mib, device_name, medians_in_turns, memory_child_output, peak_rss_mib

TARGET_RATIO = 3.0
REFERENCE_TIME_TARGET = 1.3  # the AMCL SimCLR loss (Eq. 2.1) against the reference NT-Xent of C heads
REFERENCE_MEMORY_TARGET = 1.2  # nt_xent_loss's peak memory against the reference's
Step = Callable[[], None]


def _leaves(n: int, *shape: int) -> list[torch.Tensor]:
    """``n`` random features of ``shape`` that take gradients (the outputs of a network being trained)."""
    return [torch.randn(*shape, requires_grad=True) for _ in range(n)]


def reference_nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent of one head as the widely used SSL libraries write it: the [2B, 2B] logit matrix, the
    self-similarities removed with a boolean mask, cross-entropy with each view's positive as the label."""
    views = F.normalize(torch.cat([z0, z1]), dim=1)
    n, batch = views.shape[0], z0.shape[0]
    logits = views @ views.T / temperature
    logits = logits[~torch.eye(n, dtype=torch.bool, device=views.device)].view(n, n - 1)
    # row i < B has its positive at column i + B, one to the left once the diagonal entry i is gone
    labels = torch.cat([torch.arange(batch) + batch - 1, torch.arange(batch)]).to(views.device)
    return F.cross_entropy(logits, labels)


# One builder per method: the (baseline, AMCL) forward + backward steps for batch size b.


def simclr_reference_step(b: int, args: argparse.Namespace) -> Step:
    z1, z2 = _leaves(2, args.heads, b, args.dim)

    def reference() -> None:
        sum(reference_nt_xent(z1[c], z2[c], 0.5) for c in range(args.heads)).backward()

    return reference


def simclr_steps(b: int, args: argparse.Namespace, softmax: bool = False) -> tuple[Step, Step]:
    phi = TemperatureNet(args.dim)
    z1, z2 = _leaves(2, args.heads, b, args.dim)

    def baseline() -> None:
        nt_xent_loss(z1, z2, 0.5).backward()

    def amcl() -> None:
        taus = phi.pair_factors(torch.cat([z1, z2], dim=1))  # the [C, 2B, 2B] matrix as its factors
        if softmax:
            amcl_softmax_nt_xent_loss(z1, z2, taus, beta=1e-2).backward()
        else:
            amcl_nt_xent_loss(z1, z2, taus, beta=1e-4, topk=args.topk).backward()

    return baseline, amcl


def moco_steps(b: int, args: argparse.Namespace, softmax: bool = False) -> tuple[Step, Step]:
    phi = TemperatureNet(args.dim)
    (q,) = _leaves(1, args.heads, 2 * b, args.dim)  # [q1; q2]
    k, queue = (torch.randn(args.heads, n, args.dim) for n in (2 * b, args.queue_size))  # no gradient

    def baseline() -> None:
        moco_infonce_loss(q, k, queue, 0.1).backward()

    def amcl() -> None:
        phi_q = phi(q)
        positive = paired_temperatures(phi_q, phi(k), phi.tau_min, phi.tau_max)  # [C, 2B]
        queue_temps = PairTemperatures(phi_q, phi(queue), phi.tau_min, phi.tau_max)  # [C, 2B, K] as factors
        if softmax:
            amcl_softmax_moco_loss(q, k, queue, positive, queue_temps, beta=1e-2).backward()
        else:
            amcl_moco_loss(q, k, queue, positive, queue_temps, beta=1e-4, topk=args.topk).backward()

    return baseline, amcl


def simsiam_steps(b: int, args: argparse.Namespace) -> tuple[Step, Step]:
    phi = TemperatureNet(args.siamese_dim)
    p1, p2, z1, z2 = _leaves(4, args.heads, b, args.siamese_dim)

    def baseline() -> None:
        simsiam_loss(p1, p2, z1, z2).backward()

    def amcl() -> None:
        tau1 = phi.paired_temperatures(p1, z2.detach())  # [C, B]
        tau2 = phi.paired_temperatures(p2, z1.detach())
        amcl_simsiam_loss(p1, p2, z1, z2, tau1, tau2, beta=1e-4).backward()

    return baseline, amcl


def barlow_twins_steps(b: int, args: argparse.Namespace) -> tuple[Step, Step]:
    phi = TemperatureNet(b)  # reads channel vectors, one entry per image
    z1, z2 = _leaves(2, args.heads, b, args.siamese_dim)

    def baseline() -> None:
        barlow_twins_loss(z1, z2, 5e-3).backward()

    def amcl() -> None:
        c1, c2 = (batch_standardise(z).transpose(1, 2) for z in (z1, z2))  # [C, d, B]
        taus = phi.pair_temperatures(c1, c2)  # [C, d, d]
        amcl_barlow_twins_loss(z1, z2, taus, 5e-3, beta=1e-6).backward()

    return baseline, amcl


def _mib(numel: int) -> float:
    return numel * 4 / 2**20  # float32


@dataclass(frozen=True)
class Method:
    steps: Callable[[int, argparse.Namespace], tuple[Step, Step]]
    baseline: str  # baseline column title
    batch_sizes: tuple[int, ...]  # defaults
    sizes: Callable[[argparse.Namespace], str]  # the sizes used, for the table's header line
    reference: str  # title of the reference-size column next to the largest AMCL tensor
    reference_numel: Callable[[int, argparse.Namespace], int]
    reference_step: Callable[[int, argparse.Namespace], Step] | None = None  # reference_nt_xent of C heads


METHODS = {
    "simclr": Method(
        simclr_steps, "NT-Xent x C", (256, 512, 1024),
        lambda a: f"C={a.heads}, d={a.dim}, top-k={a.topk}",
        "B*B*d", lambda b, a: b * b * a.dim, simclr_reference_step,
    ),
    "simclr_softmax": Method(
        lambda b, a: simclr_steps(b, a, softmax=True), "NT-Xent x C", (256, 512, 1024),
        lambda a: f"C={a.heads}, d={a.dim}, softmax form",
        "B*B*d", lambda b, a: b * b * a.dim, simclr_reference_step,
    ),
    "moco": Method(
        moco_steps, "InfoNCE x C", (256, 512, 1024),
        lambda a: f"C={a.heads}, d={a.dim}, queries [C, 2B, d], queue K={a.queue_size}, top-k={a.topk}",
        "2B*K*d", lambda b, a: 2 * b * a.queue_size * a.dim,
    ),
    "moco_softmax": Method(
        lambda b, a: moco_steps(b, a, softmax=True), "InfoNCE x C", (256, 512, 1024),
        lambda a: f"C={a.heads}, d={a.dim}, queries [C, 2B, d], queue K={a.queue_size}, softmax form",
        "2B*K*d", lambda b, a: 2 * b * a.queue_size * a.dim,
    ),
    "simsiam": Method(
        simsiam_steps, "SimSiam x C", (256, 512),
        lambda a: f"C={a.heads}, d={a.siamese_dim}",
        "C*B*d (one input)", lambda b, a: a.heads * b * a.siamese_dim,
    ),
    "barlow_twins": Method(
        barlow_twins_steps, "Barlow Twins x C", (256, 512),
        lambda a: (
            f"C={a.heads}, d={a.siamese_dim}, temperature net input = B; the [C, d, d] temperature "
            f"matrix is {_mib(a.heads * a.siamese_dim**2):.1f} MiB in float32 (as much again for its gradient)"
        ),
        "C*d*d", lambda b, a: a.heads * a.siamese_dim**2,
    ),
}


def batch_sizes(name: str, args: argparse.Namespace) -> tuple[int, ...]:
    return tuple(args.batch_sizes) if args.batch_sizes else METHODS[name].batch_sizes


def step_peaks(args: argparse.Namespace, peak: Callable[[Step], float]) -> dict[str, dict[str, list[float]]]:
    """``peak(step)`` in MiB of each method's baseline and AMCL step (and reference step, where it has one),
    per batch size (keys as JSON has them)."""
    result: dict[str, dict[str, list[float]]] = {}
    for name in args.methods:
        result[name] = {}
        for b in batch_sizes(name, args):
            method = METHODS[name]
            steps = [*method.steps(b, args), *([method.reference_step(b, args)] if method.reference_step else [])]
            for step in steps:  # warm-up
                step()
            result[name][str(b)] = [peak(step) for step in steps]
    return result


def memory_child(args: argparse.Namespace) -> None:
    print(json.dumps(step_peaks(args, lambda step: peak_rss_mib(step)[0])))


def cuda_memory(args: argparse.Namespace) -> dict:
    """Peak CUDA memory each step allocates beyond what was allocated before it, in MiB."""
    return step_peaks(args, lambda step: cuda_peak_mib(step, args.torch_device)[0])


def measure_memory() -> dict:
    # In a child process with a fixed mmap threshold: glibc then returns every large tensor to the OS
    # when it is freed, so the RSS high-water mark is each step's own peak.
    return memory_child_output(__file__, sys.argv[1:])


def _verdict(worst: float, target: float) -> str:
    return f"{'met' if worst <= target else 'NOT met'} (worst {worst:.2f}x)"


def table(name: str, args: argparse.Namespace, memory: dict) -> None:
    method = METHODS[name]
    referenced = method.reference_step is not None
    print(f"\n### {name}: {method.sizes(args)}\n")
    extra = " reference x C (ms) | AMCL / reference | reference peak (MiB) |" if referenced else ""
    print(f"| B | {method.baseline} (ms) | AMCL (ms) | time ratio |{extra} {method.baseline} peak (MiB) | "
          f"AMCL peak (MiB) | largest AMCL tensor | {method.reference} |")
    print("|---" * (8 + 3 * referenced) + "|")
    ratios, against_reference, memory_ratios = [], [], []
    for b in batch_sizes(name, args):
        steps = [*method.steps(b, args), *([method.reference_step(b, args)] if method.reference_step else [])]
        times = [t * 1000 for t in medians_in_turns(tuple(steps), args.repeats, args.torch_device)]
        peaks = memory[name][str(b)]
        with LargestTensor() as largest:
            steps[1]()
        ratios.append(times[1] / times[0])
        columns = ""
        if referenced:
            against_reference.append(times[1] / times[2])
            memory_ratios.append(peaks[0] / max(peaks[2], 1e-9))
            columns = f" {times[2]:.1f} | {against_reference[-1]:.2f}x | {peaks[2]:.0f} |"
        print(f"| {b} | {times[0]:.1f} | {times[1]:.1f} | {ratios[-1]:.2f}x |{columns} {peaks[0]:.0f} | "
              f"{peaks[1]:.0f} | {largest.numel:,} | {method.reference_numel(b, args):,} |", flush=True)
    print(f"\nTarget AMCL <= {TARGET_RATIO:g}x baseline: {_verdict(max(ratios), TARGET_RATIO)}", flush=True)
    if referenced:
        if name == "simclr":
            print(f"Target AMCL <= {REFERENCE_TIME_TARGET:g}x the reference NT-Xent x C: "
                  f"{_verdict(max(against_reference), REFERENCE_TIME_TARGET)}", flush=True)
        print(f"Target nt_xent_loss peak <= {REFERENCE_MEMORY_TARGET:g}x the reference's: "
              f"{_verdict(max(memory_ratios), REFERENCE_MEMORY_TARGET)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="for every method (default: per method)")
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--dim", type=int, default=128, help="projection size of simclr and moco")
    parser.add_argument("--siamese-dim", type=int, default=2048, help="projection size of simsiam and barlow_twins")
    parser.add_argument("--queue-size", type=int, default=4096, help="moco's queue length K")
    parser.add_argument("--topk", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="smoke test: simclr, simclr_softmax, moco at B = 64")
    args = parser.parse_args()
    if args.quick:
        args.methods = [m for m in args.methods if m in ("simclr", "simclr_softmax", "moco")] or ["simclr"]
        args.batch_sizes, args.repeats, args.queue_size = args.batch_sizes or [64], min(args.repeats, 2), 1024
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    args.torch_device = torch.device(args.device)
    if args.device == "cuda":
        torch.set_default_device(args.torch_device)  # every tensor and temperature net of the steps
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.memory_child:
        return memory_child(args)
    print(f"# {device_name(args.torch_device)}, {args.threads} threads, torch {torch.__version__}; "
          f"median of {args.repeats} forward + backward steps after a warm-up", flush=True)
    memory = measure_memory() if args.device == "cpu" else cuda_memory(args)
    for name in args.methods:
        table(name, args, memory)


if __name__ == "__main__":
    main()
