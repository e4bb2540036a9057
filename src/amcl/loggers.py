"""``--logger``: the Lightning loggers a run writes into its folder (TensorBoard, CSV, W&B, MLflow), each
behind its optional extra."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from amcl.config import PretrainConfig
from amcl.errors import AmclError

__all__ = ["LOGGER_PACKAGES", "chosen_loggers", "experiment_loggers"]

#: The packages each ``--logger`` needs (one of them), installed by the extra of its name: ``amcl[tensorboard]``.
LOGGER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "csv": (), "wandb": ("wandb",),
                   "mlflow": ("mlflow",)}


def chosen_loggers(config: PretrainConfig) -> list[str]:
    """``--logger``'s names, checked to be installed: a missing package is an AmclError naming its extra."""
    names = [name for name in config.logger.split(",") if name != "none"]
    for name in names:
        packages = LOGGER_PACKAGES[name]
        if packages and not any(importlib.util.find_spec(p) for p in packages):
            raise AmclError(f"--logger {name} needs the {packages[0]} package, which is not installed: "
                            f"pip install 'amcl[{name}]' (or drop {name} from --logger)")
    return names


def experiment_loggers(config: PretrainConfig, out: Path) -> list[Any]:
    """The Lightning loggers of ``--logger``, writing into ``out``: ``tensorboard/`` (TensorBoard events),
    ``csv/metrics.csv``, ``wandb/`` (offline unless ``WANDB_MODE=online``), ``mlflow.db`` and ``mlruns/`` (MLflow's
    local SQLite store and artifacts, unless ``MLFLOW_TRACKING_URI`` is set); empty for none.
    :class:`MetricsRecorder` logs every metric once per epoch, with the epoch (counted from 1) as the step, and
    Lightning the config as hyper-parameters. Made once the run's folder is claimed: some write files at once."""
    made: list[Any] = []
    for name in chosen_loggers(config):
        try:
            made.append(_logger(name, out))
        except Exception as exc:  # a backend that cannot start (its package's version, a bad tracking URI)
            raise AmclError(f"--logger {name} cannot start: {type(exc).__name__}: {str(exc).splitlines()[0]}; "
                            f"drop {name} from --logger, or fix its setting") from None
    return made


def _logger(name: str, out: Path) -> Any:
    from lightning.pytorch import loggers

    if name == "tensorboard":
        return loggers.TensorBoardLogger(save_dir=str(out), name="tensorboard", version="", default_hp_metric=False)
    if name == "csv":
        return loggers.CSVLogger(save_dir=str(out), name="csv", version="")
    if name == "wandb":
        return loggers.WandbLogger(save_dir=str(out), project="amcl", name=out.name,
                                   offline=os.environ.get("WANDB_MODE", "offline") != "online")
    # MLflow: a SQLite store in the run folder (MLflow 3 retired the plain file store), artifacts beside it
    folder = out.resolve()
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder}/mlflow.db"
    return loggers.MLFlowLogger(experiment_name="amcl", run_name=out.name, tracking_uri=tracking,
                                artifact_location=(folder / "mlruns").as_uri())
