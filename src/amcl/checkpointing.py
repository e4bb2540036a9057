"""What makes a run survive a crash: atomic checkpoints, the random state inside them, and a guard that
stops before a non-finite value can reach a checkpoint.

* :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file in the same folder, flushes
  it to disk and renames it over the old one, so a kill during the write leaves the previous
  checkpoint intact. It loads with ``weights_only=True`` only.
* :class:`RandomStates` stores the torch (CPU and CUDA), numpy and Python random states in every
  checkpoint and restores them on resume: a resumed run draws the same augmentations and batch
  order as an uninterrupted one.
* :class:`NonFiniteGuard` reads the method's device-side non-finite record every
  ``every_n_steps`` steps and before every checkpoint, and stops the run with a report.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from amcl.runs import write_atomic

__all__ = ["AtomicCheckpointIO", "NonFiniteGuard", "RandomStates", "remove_partial_checkpoints"]

class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically (temporary file, fsync, rename) and read with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, lambda partial: _save(checkpoint, partial), durable=True)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def _save(checkpoint: dict[str, Any], path: Path) -> None:
    with open(path, "wb") as f:  # a file object: torch.save of a path would pick its own writer
        torch.save(checkpoint, f)


def remove_partial_checkpoints(folder: str | os.PathLike[str]) -> None:
    """Delete checkpoint files a killed write left half-written (never the complete checkpoints)."""
    for partial in Path(folder).glob(".*.ckpt.*tmp"):  # amcl.runs.write_atomic's temporary names
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


class NonFiniteGuard(Callback):
    """Stops training once a non-finite loss or gradient was recorded (``--on-nonfinite stop``).

    Placed before the checkpoint callback, it checks before every epoch-end checkpoint and
    validation, and every ``every_n_steps`` steps in between (one host synchronisation each).
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.config.on_nonfinite != "stop":
            return
        try:
            pl_module.check_finite()
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
