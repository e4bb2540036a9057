"""Timers, memory peaks and report helpers shared by the benchmarks in this folder.

Every timer reads the wall clock with ``time.perf_counter`` and, on CUDA, synchronises the device
before each read, so that queued kernels are counted in the step that launched them.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch

MiB = 2**20
Step = Callable[[], object]
CPU = torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def block_seconds(step: Step, steps: int, device: torch.device) -> float:
    """Wall time per step of ``steps`` back-to-back steps, synchronised only at the block's two ends."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def median_seconds(step: Step, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``step`` over ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    return statistics.median(block_seconds(step, 1, device) for _ in range(repeats))


def medians_in_turns(steps: tuple[Step, ...], repeats: int, device: torch.device = CPU,
                     warmup: int = 1) -> list[float]:
    """Median seconds of each step, the steps run in turns so that background load slows them alike."""
    for step in steps:
        for _ in range(warmup):
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, step_times in zip(steps, times):
            step_times.append(block_seconds(step, 1, device))
    return [statistics.median(t) for t in times]


# --------------------------------------------------------------------------- memory


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB, e.g. ``VmRSS:`` or ``VmHWM:`` (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def reset_peak_rss() -> None:
    """Reset the resident-set high-water mark (VmHWM) to the current resident set (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def can_reset_peak_rss() -> bool:
    try:
        reset_peak_rss()
    except OSError:
        return False
    return True


def peak_rss_mib(step: Step) -> tuple[float, float]:
    """The resident-set peak of ``step`` above the level before it, and the process's peak, in MiB.

    Meant for a child started by :func:`memory_child_output`, whose allocator returns freed tensors
    to the OS at once, so that the high-water mark is the step's own peak.
    """
    reset_peak_rss()
    before = status_kib("VmRSS:")
    step()
    hwm = status_kib("VmHWM:")
    return (hwm - before) / 1024, hwm / 1024


def cuda_peak_mib(step: Step, device: torch.device) -> tuple[float, float]:
    """The CUDA allocation peak of ``step`` above the allocation before it, and the process's peak, in MiB."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return (peak - before) / MiB, peak / MiB


def memory_child_output(script: str, argv: list[str]) -> dict:
    """Run ``script argv --memory-child`` in a child process whose glibc returns every large block to the
    OS when it is freed (MALLOC_MMAP_THRESHOLD_), and read the JSON of its last output line.

    Raises ``RuntimeError`` with the child's last error line when it fails.
    """
    child = subprocess.run(
        [sys.executable, script, *argv, "--memory-child"], capture_output=True, text=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
    )
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or [""])[-1]
        raise RuntimeError(f"memory child failed ({child.returncode}): {last}")
    return json.loads(child.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- reports


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else the CPU's (``platform.processor()``, or the machine type)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def load_average() -> str:
    return "{:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg())


def format_mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"
