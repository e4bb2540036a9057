"""The Lightning Trainer of a pre-training run, set up from its config: accelerator, devices, strategy and
precision; the atomic checkpoint IO and the cluster plugins; gradient clipping, the kNN monitor's schedule; no
Lightning logger (``--logger``'s join once the run folder is claimed). :mod:`amcl.train` builds the run around it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback

from amcl.callbacks import shows_bar
from amcl.checkpointing import AtomicCheckpointIO
from amcl.config import PretrainConfig, parse_devices
from amcl.errors import AmclError

__all__ = ["EVAL_BATCH", "build_trainer", "cluster_plugins", "quiet_lightning"]

#: Images per batch of the kNN monitor (the data module's evaluation batch).
EVAL_BATCH = 1024


def quiet_lightning() -> None:
    """Lightning's start-up chatter and the warnings that do not apply to amcl's runs, silenced."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*The number of training batches.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", ".*The dirpath has changed from.*")


def cluster_plugins() -> list[Any]:
    """Under SLURM, Lightning's own requeue on SIGUSR1 is switched off: it writes ``hpc_ckpt_*.ckpt``
    checkpoints of half epochs and resumes from them by itself. amcl stops on SIGTERM or SIGINT at a step
    boundary instead, and the job script requeues (docs/runs.md)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def build_trainer(config: PretrainConfig, out: Path, monitor: bool, callbacks: Sequence[Callback]) -> L.Trainer:
    """The run's Trainer with ``callbacks`` (in their order); ``monitor``: whether the kNN monitor runs.
    Impossible accelerator, device or precision settings become a one-line :class:`AmclError`."""
    options: dict[str, Any] = dict(
        accelerator=config.accelerator,
        devices=parse_devices(config.devices),
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        sync_batchnorm=config.sync_batchnorm,
        use_distributed_sampler=False,  # the data module shards training and evaluation itself
        precision=config.precision,
        plugins=[AtomicCheckpointIO(), *cluster_plugins()],
        benchmark=True,  # cuDNN picks the fastest convolutions for the fixed image size (no effect on CPU)
        max_epochs=config.epochs,
        max_steps=config.max_steps,
        gradient_clip_val=config.grad_clip,  # the global norm, after the non-finite check (see optimizer_step)
        gradient_clip_algorithm="norm",
        check_val_every_n_epoch=config.knn_every,
        limit_val_batches=None if monitor else 0,
        num_sanity_val_steps=0,
        logger=False,  # --logger's loggers join once the folder is claimed: some write files when made
        enable_progress_bar=shows_bar(config),
        enable_model_summary=False,
        callbacks=list(callbacks),
        default_root_dir=out,
    )
    try:
        return L.Trainer(**options)
    except (MisconfigurationException, ValueError, TypeError, ImportError, RuntimeError) as exc:
        # e.g. an accelerator whose package is missing, device indices on a CPU
        raise AmclError(
            f"cannot set up training with --accelerator {config.accelerator} --devices {config.devices} "
            f"--strategy {config.strategy} --precision {config.precision}: {str(exc).splitlines()[0]}"
        ) from None
