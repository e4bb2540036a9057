"""What makes a run survive a crash: atomic checkpoints, the random state inside them, and a guard that
stops before a non-finite value can reach a checkpoint.

* :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file in the same folder, flushes
  it to disk and renames it over the old one, so a kill during the write leaves the previous
  checkpoint intact. It loads with ``weights_only=True`` only.
* :class:`RandomStates` stores the torch (CPU and CUDA), numpy and Python random states in every
  checkpoint and restores them on resume: a resumed run draws the same augmentations and batch
  order as an uninterrupted one.
* :class:`NonFiniteRecord` is a method's bookkeeping of non-finite steps (``--on-nonfinite``): the
  loss terms and temperature range of each step, and the first bad step, kept on the device.
* :class:`NonFiniteGuard` reads that record every ``every_n_steps`` steps and before every
  checkpoint, and stops the run with a report.
* :class:`StopOnSignal` turns SIGINT and SIGTERM into a stop at the next step boundary, which
  ``amcl pretrain`` reports as :class:`amcl.errors.RunInterrupted`.
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from amcl.errors import AmclError, warn
from amcl.files import write_torch

__all__ = ["AtomicCheckpointIO", "NonFiniteError", "NonFiniteGuard", "NonFiniteRecord", "RandomStates",
           "StopOnSignal", "remove_partial_checkpoints"]

class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically (temporary file, fsync, rename) and read with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_torch(target, checkpoint, durable=True)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def remove_partial_checkpoints(folder: str | os.PathLike[str]) -> None:
    """Delete checkpoint files a killed write left half-written (never the complete checkpoints)."""
    for partial in Path(folder).glob(".*.ckpt.*tmp"):  # amcl.files.write_atomic's temporary names
        partial.unlink(missing_ok=True)


class RandomStates(Callback):
    """Saves and restores every random number generator training draws from."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": _python_state(random.getstate()),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["gauss"]))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _python_state(state: tuple) -> tuple:
    version, internal, gauss = state
    return version, list(internal), gauss


class NonFiniteError(AmclError):
    """Training produced NaN or Inf; the message names the loss terms and the temperatures of that step."""


class NonFiniteRecord:
    """Which training steps had a non-finite loss or gradient, and the loss terms they had.

    A method notes each step's loss terms and temperature range (:meth:`note`; ``tau_low`` and
    ``tau_high`` name the range), then asks :meth:`allows_step` before the optimiser steps. With
    ``on_nonfinite="stop"`` the first bad step and its terms are kept on the device (no host
    synchronisation) for :meth:`check`, which :class:`NonFiniteGuard` calls; with ``"skip"`` the
    decision is needed at once (one synchronisation per step) and skipped steps are counted.
    ``config`` supplies ``on_nonfinite`` and, for the report, the temperature options.
    """

    def __init__(self, config: Any) -> None:
        self.config = config
        self.steps = self.skipped_steps = 0  # in this process's session (a resumed run counts again)
        self._terms: dict[str, torch.Tensor] = {}
        self._first_bad_step = torch.tensor(-1)
        self._first_bad_terms: dict[str, torch.Tensor] = {}

    def start_step(self) -> None:
        self._terms = {}

    def note(self, device: torch.device, **values: torch.Tensor | float) -> None:
        """Record loss terms or the temperature range of this step; tensors stay on ``device``."""
        for name, value in values.items():
            self._terms[name] = torch.as_tensor(value, device=device).detach().float()

    def allows_step(self, loss: torch.Tensor | None, parameters: Any, step: int) -> bool:
        """Whether the optimiser may take this step: always under ``stop`` (the bad step is recorded and
        the guard stops the run before any checkpoint), only a finite step under ``skip``."""
        self.steps += 1
        grads = [p.grad for p in parameters if p.grad is not None]
        checks = ([torch.isfinite(loss).all()] if loss is not None else []) + \
            ([torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()] if grads else [])
        finite = torch.stack(checks).all() if checks else torch.tensor(True)
        if self.config.on_nonfinite == "skip":
            if bool(finite):
                return True
            self.skipped_steps += 1
            if self.skipped_steps == 1:
                warn(f"skipped a step with non-finite values ({self.describe(self._terms)}); further skips are "
                     "counted in metrics.json (skipped_steps)")
            return False
        first = self._first_bad_step.to(finite.device)
        take = (first < 0) & ~finite
        self._first_bad_step = torch.where(take, torch.tensor(step, device=finite.device), first)
        for name, value in self._terms.items():
            before = self._first_bad_terms.get(name, torch.full_like(value, float("nan")))
            self._first_bad_terms[name] = torch.where(take, value, before)
        return True

    def check(self) -> None:
        """Raise :class:`NonFiniteError` if a step since the start had a non-finite loss or gradient."""
        step = int(self._first_bad_step)
        if step >= 0:
            raise NonFiniteError(f"the loss or its gradients became non-finite at step {step} "
                                 f"({self.describe(self._first_bad_terms)})")

    def describe(self, terms: dict[str, torch.Tensor]) -> str:
        """The terms (the non-finite ones named first) and the temperatures of a step, in words."""
        values = {k: float(v) for k, v in terms.items()}
        parts = [f"{k} {v:.4g}" for k, v in values.items() if not k.startswith("tau_")]
        bad = [k for k, v in values.items() if not k.startswith("tau_") and not math.isfinite(v)]
        text = (f"non-finite: {', '.join(bad)}; " if bad else "the loss was finite, its gradients were not; ") + \
            ", ".join(parts)
        cfg = self.config
        if "tau_low" in values:
            text += (f"; temperatures in that step ranged {values['tau_low']:.3g}..{values['tau_high']:.3g} "
                     f"(--tau-min {cfg.tau_min:g}, --tau-max {cfg.tau_max:g})")
        elif cfg.amcl:
            text += f"; constant temperature {cfg.temperature:g}"
        return text


class NonFiniteGuard(Callback):
    """Stops training once a method's :class:`NonFiniteRecord` holds a non-finite loss or gradient
    (``--on-nonfinite stop``).

    Placed before the checkpoint callback, it checks before every epoch-end checkpoint and
    validation, and every ``every_n_steps`` steps in between (one host synchronisation each).
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.config.on_nonfinite != "stop":
            return
        try:
            pl_module.nonfinite.check()
        except Exception as err:
            checkpoint = Path(trainer.default_root_dir) / "last.ckpt"
            kept = (f"the last good checkpoint {checkpoint} is kept (continue from it with --resume "
                    f"{checkpoint.parent} --on-nonfinite skip)" if checkpoint.is_file()
                    else "no checkpoint had been written yet")
            raise type(err)(f"{err}; {kept}; or start again with a larger --tau-min or a smaller --lr") from None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._check(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module)


class StopOnSignal(Callback):
    """SIGINT (Ctrl+C) and SIGTERM (what SLURM and Kubernetes send before a kill) stop a run at the next
    step boundary; a second signal ends the process at once, as the signal's default does.

    Enter it (``with``) around a run and pass it as a callback of the run's trainer. A noted signal raises
    Lightning's own stop flag (its SIGTERM flag): the loop then stops at the end of the running step, or
    of the kNN pass, without writing a checkpoint of a half epoch. In a multi-process run the processes
    agree first, every ``every_n_steps`` steps (one collective; any process's signal counts), so that all
    of them stop after the same step. ``signal_number`` is the first signal.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, every_n_steps: int = 10) -> None:
        self.every_n_steps = every_n_steps
        self.signal_number: int | None = None
        self._trainer: L.Trainer | None = None
        self._outside: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # Python takes signals on the main thread only
            # a signal ignored by whoever started us (e.g. SIGINT of a background job) stays ignored
            self._outside = {s: signal.getsignal(s) for s in self.SIGNALS if signal.getsignal(s) != signal.SIG_IGN}
            for number in self._outside:
                signal.signal(number, self._note)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for number, handler in self._outside.items():
            signal.signal(number, handler)
        self._outside = {}

    def _note(self, number: int, frame: Any) -> None:
        if self.signal_number is not None:  # asked twice: stop now
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
            return
        self.signal_number = number
        if self._trainer is not None and self._trainer.world_size == 1:
            self._stop(self._trainer)

    @staticmethod
    def _stop(trainer: L.Trainer) -> None:
        trainer._signal_connector.received_sigterm = True  # Lightning has no public setter for its stop flag

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning has just put its own SIGTERM handler in place, which stops only the signalled process
        # (and forwards the signal through collectives from inside the handler): take both signals back
        self._trainer = trainer
        for number in self._outside:
            signal.signal(number, self._note)
        if self.signal_number is not None and trainer.world_size == 1:
            self._stop(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.world_size > 1 and trainer.global_step % self.every_n_steps == 0:
            if trainer.strategy.reduce_boolean_decision(self.signal_number is not None, all=False):
                self._stop(trainer)  # every process, after the same step
