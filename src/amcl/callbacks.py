"""The Lightning callbacks of a pre-training run: the epoch record (``metrics.json``, ``metrics.csv``,
``curves.png`` and the loggers), its warnings, the per-epoch line, the pace note, epoch checkpoints and the
progress bar. :func:`amcl.train.pretrain_once` puts them together."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from amcl.config import PretrainConfig
from amcl.errors import warn
from amcl.files import write_json
from amcl.monitoring import bound_warnings, collapse_warning, plot_curves, write_csv
from amcl.specs import METHOD_SPECS

__all__ = ["EpochCheckpoints", "EpochLog", "MetricsRecorder", "PaceNote", "TrainingProgressBar", "clock_time",
           "shows_bar", "time_left"]

#: curves.png is redrawn during a run when this many seconds passed since it was last drawn (and at its end).
CURVES_EVERY_S = 60.0


class MetricsRecorder(Callback):
    """Collects the epoch-level logged values into ``metrics.json`` after every epoch.

    ``metrics.json`` holds only what the run computed (no clock times), so one seed and config give
    the same file on a CPU; wall-clock times go to ``run.json``. The recorded epochs travel in every
    checkpoint, so a resumed run continues the same file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path  # written by the global-rank-0 process only
        self.epochs: list[dict[str, float]] = []
        self.epoch_seconds: list[float] = []
        self._warned: set[str] = set()
        self._clock = time.perf_counter()
        self._drawn = time.perf_counter()  # when curves.png was last drawn
        self.knn_k: int | None = None  # the kNN monitor's k (chosen from the bank when not given)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._clock = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # epochs counted from 1 in every file, as the progress lines and messages count them
        record: dict[str, float] = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step}
        record.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
        if getattr(trainer.datamodule, "streamed", False):
            record["unreadable_files"] = len(trainer.datamodule.unreadable)
        if pl_module.config.on_nonfinite == "skip":
            record["skipped_steps"] = pl_module.nonfinite.skipped_steps
        statistics = pl_module.epoch_statistics()  # per-head temperatures and similarities, learning rate
        record.update(statistics)
        self.epochs.append(record)
        self.epoch_seconds.append(round(time.perf_counter() - self._clock, 3))
        self._warn_about_bounds(record, pl_module.config)
        self._warn_about_collapse(record)
        self.knn_k = pl_module.knn_k or self.knn_k  # set by the monitor, which may not run every epoch
        if trainer.is_global_zero:
            write_json(self.path, self.summary())
            write_csv(self.path.with_suffix(".csv"), self.epochs)
            self._log(trainer, record)
            if time.perf_counter() - self._drawn >= CURVES_EVERY_S:  # drawing takes about a second
                self.draw_curves(pl_module.config)

    def _log(self, trainer: L.Trainer, record: dict[str, float]) -> None:
        """The epoch's record to every ``--logger``, at the epoch (from 1) as its step: one x-axis for all."""
        values = {("global_step" if k == "step" else k): v for k, v in record.items() if k != "epoch"}
        for logger in trainer.loggers:
            logger.log_metrics(values, step=int(record["epoch"]))
            logger.save()

    def draw_curves(self, config: PretrainConfig) -> None:
        """``curves.png`` of the epochs so far (at the end of a run, and during it at most every
        :data:`CURVES_EVERY_S`, so that a run stopped early has one)."""
        if self.epochs:
            mode = f"AMCL, {config.heads} heads" if config.amcl else "baseline"
            plot_curves(self.path.parent / "curves.png", self.epochs, f"{config.method} {mode} on {config.dataset}",
                        METHOD_SPECS[config.method].pair_names)
        self._drawn = time.perf_counter()

    def _warn_about_bounds(self, record: dict[str, float], config: PretrainConfig) -> None:
        """:func:`amcl.monitoring.bound_warnings` of the epoch's record, each warned once per head and bound."""
        spec = METHOD_SPECS[config.method]
        for message in bound_warnings(record, config.tau_min, config.tau_max, spec.bound_is_expected, self._warned):
            warn(message)

    def _warn_about_collapse(self, record: dict[str, float]) -> None:
        """:func:`amcl.monitoring.collapse_warning` of the epoch's record, once per head."""
        message = collapse_warning(record, self._warned)
        if message:
            warn(message)

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "epoch_seconds": self.epoch_seconds, "knn_k": self.knn_k, "first_epoch": 1}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs, self.epoch_seconds = [dict(e) for e in state["epochs"]], list(state["epoch_seconds"])
        if state.get("first_epoch") != 1:  # checkpoints of earlier versions counted epochs from 0
            for record in self.epochs:
                record["epoch"] += 1
        self.knn_k = state.get("knn_k")  # checkpoints of versions before the recorded k have none

    def summary(self) -> dict[str, Any]:
        """``metrics.json``: the epochs, and the final and best kNN accuracy on the test split (and with a
        validation split, ``final_val_knn_acc`` and ``best_val_knn_acc``)."""
        knn = [e["knn_acc"] for e in self.epochs if "knn_acc" in e]
        summary = {
            "epochs": self.epochs,
            "final_loss": self.epochs[-1].get("loss") if self.epochs else None,
            "final_knn_acc": knn[-1] if knn else None,
            "best_knn_acc": max(knn) if knn else None,
            "knn_k": self.knn_k if knn else None,
        }
        val = [e["val_knn_acc"] for e in self.epochs if "val_knn_acc" in e]
        if val:
            summary.update(final_val_knn_acc=val[-1], best_val_knn_acc=max(val))
        return summary


class EpochLog(Callback):
    """One line per epoch on standard output, where a progress bar would fill a log with redraws:
    ``epoch 3/40: loss 4.123, kNN 91.2%, lr 0.3, 1.2 s/epoch, 0:45 left``. Placed after the
    :class:`MetricsRecorder` whose record it prints; written by the global-rank-0 process."""

    def __init__(self, recorder: MetricsRecorder) -> None:
        self.recorder = recorder

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.recorder.epochs:
            return
        record, seconds = self.recorder.epochs[-1], self.recorder.epoch_seconds
        done, total = int(record["epoch"]), trainer.max_epochs or 0
        parts = [f"loss {record.get('loss', float('nan')):.4g}"]
        if "knn_acc" in record:
            val = f" (val {100 * record['val_knn_acc']:.1f}%)" if "val_knn_acc" in record else ""
            parts.append(f"kNN {100 * record['knn_acc']:.1f}%{val}")
        if pl_module.config.amcl and "tau_pos_mean" in record:  # the heads' mean learned temperatures
            negative = f", negative {record['tau_neg_mean']:.3g}" if "tau_neg_mean" in record else ""
            parts.append(f"tau positive {record['tau_pos_mean']:.3g}{negative}")
        if "lr" in record:
            parts.append(f"lr {record['lr']:.2g}")
        parts += [f"{seconds[-1]:.1f} s/epoch", f"{clock_time(time_left(seconds, total - done))} left"]
        print(f"epoch {done}/{total}: {', '.join(parts)}", flush=True)


def time_left(epoch_seconds: Sequence[float], epochs_left: int) -> float:
    """Seconds the remaining epochs take at the pace of the last five (the first epoch pays for start-up)."""
    recent = epoch_seconds[-5:]
    return sum(recent) / len(recent) * max(0, epochs_left) if recent else 0.0


def clock_time(seconds: float) -> str:
    """``0:45``, ``12:05`` or ``9:31:00`` (hours:minutes:seconds)."""
    seconds = round(seconds)
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours}:{minutes:02d}:{seconds % 60:02d}" if hours else f"{minutes}:{seconds % 60:02d}"


#: After its first epoch, a run on the CPU whose remaining epochs would take longer than this says so.
LONG_CPU_RUN_S = 3600


class PaceNote(Callback):
    """After the first epoch of a run on the CPU, one line when the run will take hours at this pace (e.g. the
    CIFAR recipe started on digits without a config), with how to start a small run instead."""

    def __init__(self, recorder: MetricsRecorder) -> None:
        self.recorder = recorder

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (len(self.recorder.epoch_seconds) != 1 or not trainer.is_global_zero
                or pl_module.device.type != "cpu"):
            return
        left = time_left(self.recorder.epoch_seconds, (trainer.max_epochs or 0) - trainer.current_epoch - 1)
        if left > LONG_CPU_RUN_S:
            config = pl_module.config
            warn(f"at this pace ({self.recorder.epoch_seconds[0]:.0f} s per epoch on the CPU) the {config.epochs} "
                 f"epochs take about {clock_time(left + self.recorder.epoch_seconds[0])} (h:mm:ss); for a first "
                 "try stop it (Ctrl+C) and start a small run: --config configs/demo-digits.yaml, or fewer --epochs "
                 "and a smaller --backbone (README, 'Quick start')")


def shows_bar(config: PretrainConfig) -> bool:
    """Whether a run shows Lightning's progress bar (``--progress``, or by default on a terminal) rather than
    :class:`EpochLog`'s lines."""
    return config.progress if config.progress is not None else sys.stderr.isatty()


class TrainingProgressBar(TQDMProgressBar):
    """Lightning's bar for the training epochs only: the kNN pass is short and would add a bar per epoch."""

    def init_validation_tqdm(self):
        return Tqdm(disable=True)


class EpochCheckpoints(Callback):
    """``--save-every N``: ``epoch-N.ckpt``, ``epoch-2N.ckpt`` ... beside ``last.ckpt`` (the same contents as
    ``last.ckpt`` had at that epoch's end), to evaluate along training."""

    def __init__(self, out: Path, every: int) -> None:
        self.out, self.every = out, every

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every == 0:
            trainer.save_checkpoint(self.out / f"epoch-{epoch}.ckpt")
