"""Per-process cost of the AMCL SimCLR and Barlow Twins losses as the world size grows, and of the AMCL MoCo loss
as its queue grows.

    .venv/bin/python benchmarks/scaling.py [--world-sizes 1 2 4 8 16] [--batch-size 512] [--heads 3]
        [--dim 128] [--topk 1] [--queue-sizes 4096 8192 16384 32768 65536] [--global-up-to 8]
        [--barlow-batch-size 256] [--siamese-dim 2048] [--sweeps ...] [--repeats 3] [--threads N] [--no-real]
        [--quick]

World size W, simulated in one process at a fixed batch of B images per process (forward + backward
of the loss and of the temperature net phi, C heads, Eq. 2.1 with --topk hardest negatives):

* local: what each of the W processes computes: phi on its own 2B views, the other processes'
  projections and phi factors as if gathered, and only its own anchors' rows ``[C, 2B, 2BW]`` of the
  global loss (``amcl_nt_xent_loss(..., anchors=process_anchors(B, 0, W))``, what the SimCLR method does).
* global: what every process computed before local anchors: the whole ``[C, 2BW, 2BW]`` loss, phi
  on all 2BW gathered views and the full temperature matrix. It calls only functions that existed
  before, so ``PYTHONPATH=<older checkout>/src`` measures that older code with this script.
  Up to --global-up-to (its memory grows with W squared).

AMCL Barlow Twins (Eq. 2.3, d = --siamese-dim, B = --barlow-batch-size images per process; phi reads
channel vectors of the global batch, BW entries):

* barlow_local: what each process computes: the cross-correlation from its own B rows and phi's first
  layer on its own B entries of each channel vector (``TemperatureNet.pair_factors(..., shard=Shard(...))``),
  the totals over processes left out (they are all-reduces of ``[C, d, d]``, ``[C, d, h]`` and ``[C, d]``);
* barlow_gathered: what each process computed before: the loss on the gathered ``[C, BW, d]`` views.
  Up to --global-up-to.

Then a real 2-process run (gloo, ``torch.multiprocessing``), each process the SimCLR method's path
(``gather_views``, ``TemperatureNet.pair_factors``, ``process_anchors``), timed against the same
step simulated at W = 2; and the queue: ``amcl_moco_loss`` for queries [C, 2B, d] against a queue
of K entries, the queue temperatures as factors (only the top-k entries computed).

Prints a markdown table per sweep: median milliseconds and peak extra memory (RSS high-water mark
of a child process per configuration, Linux), with the growth exponent of each column (least-squares
slope of log cost against log W or log K over the sizes from 2 on: 1 is linear, 2 quadratic).
Targets: linear growth of the local SimCLR loss in W and of the MoCo loss in K, and at W = 8 the local
per-process peak memory of SimCLR at most a quarter of the global one. (Barlow Twins' local cost should
not grow with W at all: its largest terms are the d x d ones.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from amcl.losses import amcl_nt_xent_loss
from amcl.nn import TemperatureNet
from timing import device_name, median_seconds, memory_child_output, peak_rss_mib

Step = Callable[[], None]
LOCAL_MEMORY_TARGET = 0.25  # local / global peak memory at W = 8


def _leaf(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, requires_grad=True)


def global_step(world: int, args: argparse.Namespace) -> Step:
    """Every process's work before local anchors: the whole global loss on the gathered 2BW views."""
    phi = TemperatureNet(args.dim)
    z1, z2 = (_leaf(args.heads, args.batch_size * world, args.dim) for _ in range(2))

    def step() -> None:
        taus = phi.pair_temperatures(torch.cat([z1, z2], dim=1))  # [C, 2BW, 2BW]
        amcl_nt_xent_loss(z1, z2, taus, beta=1e-4, topk=args.topk).backward()

    return step


def local_step(world: int, args: argparse.Namespace) -> Step:
    """One process's work with local anchors (rank 0 of W): phi on its 2B views, the other processes'
    projections and right factors as they arrive from the gather (leaves: their gradients are what the
    gather's backward sends back), and its own anchors' rows of the global loss."""
    from amcl.losses import PairTemperatures, process_anchors

    b, heads, dim = args.batch_size, args.heads, args.dim
    phi = TemperatureNet(dim)
    mine = _leaf(heads, 2 * b, dim)  # [view 1; view 2] of this process
    others = _leaf(heads, 2 * b * world, dim)  # the gathered views; this process's rows are replaced by its own
    other_factors = _leaf(heads, 2 * b * world, phi.phi[2].out_features)
    anchors = process_anchors(b, 0, world)

    def step() -> None:
        z = others.index_copy(1, anchors, mine)
        factors = phi.pair_factors(mine)
        taus = PairTemperatures(factors.left, other_factors.index_copy(1, anchors, factors.right), phi.tau_min,
                                phi.tau_max)
        z1, z2 = z.chunk(2, dim=1)
        amcl_nt_xent_loss(z1, z2, taus, beta=1e-4, topk=args.topk, anchors=anchors).backward()

    return step


def queue_step(queue_size: int, args: argparse.Namespace) -> Step:
    from amcl.losses import PairTemperatures, amcl_moco_loss, paired_temperatures

    phi = TemperatureNet(args.dim)
    q = _leaf(args.heads, 2 * args.batch_size, args.dim)
    k, queue = (torch.randn(args.heads, n, args.dim) for n in (2 * args.batch_size, queue_size))

    def step() -> None:
        phi_q = phi(q)
        positive = paired_temperatures(phi_q, phi(k), phi.tau_min, phi.tau_max)
        negative = PairTemperatures(phi_q, phi(queue), phi.tau_min, phi.tau_max)  # [C, 2B, K] as factors
        amcl_moco_loss(q, k, queue, positive, negative, beta=1e-4, topk=args.topk).backward()

    return step


def barlow_step(world: int, args: argparse.Namespace, gathered: bool) -> Step:
    """One process's AMCL Barlow Twins loss step: on the gathered ``[C, BW, d]`` views, or on its own B rows
    with phi's first layer on its shard of the channel vectors (the all-reduces are identities here)."""
    from amcl.losses import amcl_barlow_twins_loss, batch_standardise
    from amcl.losses.barlow_twins import TemperatureScores
    from amcl.nn import Shard

    rows = args.barlow_batch_size * (world if gathered else 1)
    phi = TemperatureNet(args.barlow_batch_size * world)  # input: channel vectors of the global batch
    z1, z2 = (_leaf(args.heads, rows, args.siamese_dim) for _ in range(2))
    shard = None if gathered else Shard(0, lambda x: x)

    def step() -> None:
        c1, c2 = (batch_standardise(z).transpose(1, 2) for z in (z1, z2))  # [C, d, rows]
        factors = phi.pair_factors(c1, c2, shard=shard)
        scores = TemperatureScores(factors.left @ factors.right.transpose(-1, -2), phi.tau_min, phi.tau_max)
        amcl_barlow_twins_loss(z1, z2, scores, 5e-3, 1e-6).backward()

    return step


SWEEPS: dict[str, Callable[[int, argparse.Namespace], Step]] = {
    "local": local_step, "global": global_step, "queue": queue_step,
    "barlow_local": lambda w, a: barlow_step(w, a, gathered=False),
    "barlow_gathered": lambda w, a: barlow_step(w, a, gathered=True),
}


def _sizes(sweep: str, args: argparse.Namespace) -> list[int]:
    if sweep == "queue":
        return list(args.queue_sizes)
    if sweep in ("global", "barlow_gathered"):
        return [w for w in args.world_sizes if w <= args.global_up_to]
    return list(args.world_sizes)


def memory_child(args: argparse.Namespace) -> None:
    step = SWEEPS[args.child_sweep](args.child_size, args)
    step()  # warm-up
    print(json.dumps(peak_rss_mib(step)[0]))


def peak_mib(sweep: str, size: int) -> float:
    # one child per configuration, whose allocator returns freed blocks at once: its high-water mark is the step's
    argv = [a for a in sys.argv[1:] if a != "--memory-child"]
    return float(memory_child_output(__file__, [*argv, "--child-sweep", sweep, "--child-size", str(size)]))


def growth_exponent(sizes: list[int], costs: list[float]) -> float:
    """Least-squares slope of log(cost) against log(size) over the sizes from 2 on (size 1 has no
    gather and no other processes' rows, so it is a different regime)."""
    points = [(math.log(s), math.log(max(c, 1e-9))) for s, c in zip(sizes, costs) if s >= 2]
    if len(points) < 2:
        return float("nan")
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)


def sweep_table(sweep: str, args: argparse.Namespace) -> dict[int, tuple[float, float]]:
    sizes = _sizes(sweep, args)
    if not sizes:
        return {}
    label = "K" if sweep == "queue" else "W"
    results = {}
    for size in sizes:
        seconds = median_seconds(SWEEPS[sweep](size, args), torch.device("cpu"), 1, args.repeats)
        results[size] = (seconds * 1000, peak_mib(sweep, size))
    what = {"local": "local anchors (each process its own [C, 2B, 2BW] rows)",
            "global": "global loss on every process ([C, 2BW, 2BW], the code before local anchors)",
            "queue": f"AMCL MoCo, queries [C, {2 * args.batch_size}, d], factored queue temperatures",
            "barlow_local": f"AMCL Barlow Twins, each process its own {args.barlow_batch_size} rows and its shard of "
                            f"phi's channel vectors (d = {args.siamese_dim})",
            "barlow_gathered": f"AMCL Barlow Twins on the gathered [C, {args.barlow_batch_size}W, "
                               f"{args.siamese_dim}] views (the code before)"}[sweep]
    print(f"\n### {sweep}: {what}\n")
    print(f"| {label} | per-process loss step (ms) | peak extra memory (MiB) |\n|---|---|---|")
    for size, (ms, mib) in results.items():
        print(f"| {size} | {ms:.1f} | {mib:.0f} |")
    times, peaks = [r[0] for r in results.values()], [r[1] for r in results.values()]
    print(f"\nGrowth exponent in {label} (sizes >= 2): time {growth_exponent(sizes, times):.2f}, "
          f"memory {growth_exponent(sizes, peaks):.2f}", flush=True)
    return results


def _real_worker(rank: int, init_file: str, out_file: str, args: argparse.Namespace) -> None:
    """One of 2 real processes: the SimCLR method's loss path on its own 2B views."""
    from amcl.distributed import gather_views, world_size
    from amcl.distributed import rank as process_rank
    from amcl.losses import process_anchors

    torch.set_num_threads(max(1, args.threads // 2))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)
        phi = TemperatureNet(args.dim)
        z = _leaf(args.heads, 2 * args.batch_size, args.dim)
        anchors = process_anchors(args.batch_size, process_rank(), world_size())

        def step() -> None:
            z1, z2 = gather_views(z, args.batch_size).chunk(2, dim=1)
            factors = phi.pair_factors(z)
            taus = factors._replace(right=gather_views(factors.right, args.batch_size))
            amcl_nt_xent_loss(z1, z2, taus, beta=1e-4, topk=args.topk, anchors=anchors).backward()

        seconds = median_seconds(step, torch.device("cpu"), 1, args.repeats)
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump(seconds, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def real_two_processes(args: argparse.Namespace, simulated_ms: float | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        init, out = os.path.join(tmp, "init"), os.path.join(tmp, "seconds.json")
        mp.spawn(_real_worker, args=(init, out, args), nprocs=2, join=True)
        with open(out) as f:
            ms = json.load(f) * 1000
    against = f"; simulated W = 2 in one process: {simulated_ms:.1f} ms" if simulated_ms else ""
    print(f"\n### real: 2 gloo processes, {max(1, args.threads // 2)} thread(s) each\n\n"
          f"Per-process loss step with the gathers: {ms:.1f} ms{against}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--batch-size", type=int, default=512, help="images per process (queries: 2B)")
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--topk", type=int, default=1)
    parser.add_argument("--queue-sizes", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--global-up-to", type=int, default=8, help="largest W of the global sweeps")
    parser.add_argument("--barlow-batch-size", type=int, default=256, help="Barlow Twins' images per process")
    parser.add_argument("--siamese-dim", type=int, default=2048, help="Barlow Twins' projection size d")
    parser.add_argument("--sweeps", nargs="+", choices=list(SWEEPS), default=list(SWEEPS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-real", action="store_true", help="skip the real 2-process run")
    parser.add_argument("--quick", action="store_true", help="smoke test: B = 32, W 1 and 2, K 256 and 1024")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-sweep", choices=list(SWEEPS), help=argparse.SUPPRESS)
    parser.add_argument("--child-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.barlow_batch_size, args.siamese_dim, args.repeats = 32, 16, 64, 1
        args.world_sizes = [w for w in args.world_sizes if w <= 2]
        args.queue_sizes = [256, 1024]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.memory_child:
        return memory_child(args)
    print(f"# {device_name(torch.device('cpu'))}, {args.threads} threads, torch {torch.__version__}; B = "
          f"{args.batch_size} per process, C = {args.heads}, d = {args.dim}, top-k = {args.topk}; median of "
          f"{args.repeats} forward + backward steps after a warm-up", flush=True)
    results = {sweep: sweep_table(sweep, args) for sweep in args.sweeps}
    for name, (local_name, full_name) in {"SimCLR": ("local", "global"),
                                          "Barlow Twins": ("barlow_local", "barlow_gathered")}.items():
        local, full = results.get(local_name, {}), results.get(full_name, {})
        shared = [w for w in local if w in full]
        if shared:
            w = 8 if 8 in shared else max(shared)
            ratio = local[w][1] / max(full[w][1], 1e-9)
            # the target is SimCLR's, whose gathered loss grew with W squared; Barlow Twins' [C, d, d] terms are
            # the same on every process however many there are
            verdict = "" if name != "SimCLR" else (
                f"; target memory <= {LOCAL_MEMORY_TARGET:g}: {'met' if ratio <= LOCAL_MEMORY_TARGET else 'NOT met'}")
            print(f"\n{name} at W = {w}: local / gathered per-process peak memory {ratio:.3f}, time "
                  f"{local[w][0] / full[w][0]:.3f}{verdict}", flush=True)
    local = results.get("local", {})
    if not args.no_real and "local" in args.sweeps:
        simulated = local.get(2, (None,))[0]
        real_two_processes(args, simulated)


if __name__ == "__main__":
    main()
