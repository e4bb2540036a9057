"""``pretrain(config)``: one or several pre-training runs with their outputs on disk.

Writes into ``config.out``: ``config.yaml``, ``metrics.json`` (per-epoch loss, kNN accuracy and
``best_knn_acc``) and ``last.ckpt``; with ``runs > 1`` one ``run-<seed>/`` folder per seed and a
``summary.json`` with the mean and std of each final metric.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.fabric.utilities.exceptions import MisconfigurationException

from amcl.config import PretrainConfig
from amcl.data.datasets import load_configured_dataset
from amcl.data.module import ContrastiveDataModule
from amcl.errors import AmclError
from amcl.methods import METHOD_CLASSES


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a reader never sees a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class MetricsRecorder(Callback):
    """Collects the epoch-level logged values into ``metrics.json`` after every epoch."""

    def __init__(self, path: Path) -> None:
        self.path = path  # written by the global-rank-0 process only
        self.epochs: list[dict[str, float]] = []
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record: dict[str, float] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        record.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
        if getattr(trainer.datamodule, "streamed", False):
            record["unreadable_files"] = len(trainer.datamodule.unreadable)
        record["time_s"] = round(time.perf_counter() - self.started, 3)
        self.epochs.append(record)
        if trainer.is_global_zero:
            write_json(self.path, self.summary())

    def summary(self) -> dict[str, Any]:
        knn = [e["knn_acc"] for e in self.epochs if "knn_acc" in e]
        return {
            "epochs": self.epochs,
            "final_loss": self.epochs[-1].get("loss") if self.epochs else None,
            "final_knn_acc": knn[-1] if knn else None,
            "best_knn_acc": max(knn) if knn else None,
            "time_s": self.epochs[-1]["time_s"] if self.epochs else 0.0,
        }


class TrainingProgressBar(TQDMProgressBar):
    """Lightning's bar for the training epochs only: the kNN pass is short and would add a bar per epoch."""

    def init_validation_tqdm(self):
        return Tqdm(disable=True)


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*The number of training batches.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def _trainer(**options: Any) -> L.Trainer:
    """A Lightning Trainer; impossible accelerator or precision settings become a one-line error."""
    try:
        return L.Trainer(**options)
    except (MisconfigurationException, ValueError) as exc:
        raise AmclError(
            f"cannot set up training with --accelerator {options['accelerator']} --devices {options['devices']} "
            f"--strategy {options['strategy']} --precision {options['precision']}: {str(exc).splitlines()[0]}"
        ) from None


def pretrain_once(config: PretrainConfig) -> dict[str, Any]:
    """One run of a resolved config; returns the metrics summary."""
    splits = load_configured_dataset(config)
    n_train = len(splits.train_labels)
    if config.batch_size > n_train:
        raise AmclError(
            f"--batch-size {config.batch_size} is larger than the {n_train} training images of "
            f"{config.dataset}; use --batch-size <= {n_train}"
        )
    out = Path(config.out)
    config = replace(config, precision=effective_precision(config))  # config.yaml records what ran
    _quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)
    data = ContrastiveDataModule(splits, config.batch_size, config.augs, config.image_size, config.color_strength,
                                 workers=config.workers, seed=config.seed, channels_last=config.channels_last)
    monitor = data.can_monitor  # no kNN without labelled train and held-out images (e.g. unlabeled folders)
    model = METHOD_CLASSES[config.method](config, splits.num_classes, data.normalization)
    recorder = MetricsRecorder(out / "metrics.json")
    trainer = _trainer(
        accelerator=config.accelerator,
        devices=_devices(config.devices),
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        sync_batchnorm=config.sync_batchnorm,
        use_distributed_sampler=False,  # the data module shards training and evaluation itself
        precision=config.precision,
        max_epochs=config.epochs,
        max_steps=config.max_steps,
        check_val_every_n_epoch=config.knn_every,
        limit_val_batches=None if monitor else 0,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        callbacks=[recorder, ModelCheckpoint(dirpath=out, filename="last", save_top_k=0, save_last=True,
                                               enable_version_counter=False)]
        + ([TrainingProgressBar()] if config.progress else []),
        default_root_dir=out,
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        if trainer.is_global_zero:
            (out / "config.yaml").write_text(config.to_yaml())
    except OSError as exc:
        raise AmclError(f"cannot write outputs to --out {config.out}: {exc.strerror}; choose a writable folder") from None
    trainer.fit(model, datamodule=data)
    if monitor and recorder.epochs and "knn_acc" not in recorder.epochs[-1]:
        # the run stopped (max_steps, knn_every) without monitoring its final state: do it now
        recorder.epochs[-1]["knn_acc"] = trainer.validate(model, datamodule=data, verbose=False)[0]["knn_acc"]
    summary = recorder.summary()
    summary["complete"] = True  # the run ended normally (amcl compare skips such cells when resuming)
    if trainer.is_global_zero:
        write_json(out / "metrics.json", summary)
    return summary


def effective_precision(config: PretrainConfig) -> str:
    """``config.precision``, with ``auto`` made concrete: bf16-mixed on a CUDA GPU that supports it."""
    if config.precision != "auto":
        return config.precision
    import torch

    cuda = config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"


def _devices(devices: str) -> int | list[int] | str:
    """``--devices`` as Lightning takes it: a count, a list of indices, or ``auto``."""
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return text if text == "auto" else -1
    if "," in text or text.startswith("["):
        return [int(d) for d in text.strip("[]").split(",") if d.strip()]
    return int(text)


_SUMMARY_KEYS = ("final_loss", "final_knn_acc", "best_knn_acc", "time_s")
_NOT_SUMMARISED = ("epoch", "step", "time_s", "loss", "knn_acc")


def summarize_runs(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, sample standard deviation (0 for one run) and values over runs of every metric: the run
    summaries' ``final_loss``, ``final_knn_acc``, ``best_knn_acc``, ``time_s``, and ``final_<name>`` for
    every other value of the last epoch (e.g. ``final_tau_pos_mean``). Runs lacking a metric are left
    out of its statistics."""
    per_run: list[dict[str, float]] = []
    for result in results:
        values = {k: result.get(k) for k in _SUMMARY_KEYS}
        last = result["epochs"][-1] if result.get("epochs") else {}
        values.update({f"final_{k}": v for k, v in last.items() if k not in _NOT_SUMMARISED})
        per_run.append({k: float(v) for k, v in values.items() if isinstance(v, (int, float))})
    summary = {}
    for key in dict.fromkeys(k for run in per_run for k in run):
        values = [run[key] for run in per_run if key in run]
        summary[key] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values,
        }
    return summary


def pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Run ``config.runs`` seeds (seed, seed + 1, ...); with several, also write ``summary.json``."""
    config = config.resolved()
    if config.runs == 1:
        return pretrain_once(config)
    out = Path(config.out)
    results = []
    for r in range(config.runs):
        seed = config.seed + r
        results.append(pretrain_once(replace(config, seed=seed, runs=1, out=str(out / f"run-{seed}"))))
    summary: dict[str, Any] = {"runs": config.runs, "seeds": [config.seed + r for r in range(config.runs)]}
    summary.update(summarize_runs(results))
    write_json(out / "summary.json", summary)
    (out / "config.yaml").write_text(config.to_yaml())
    return summary
