"""Loading a pre-training checkpoint (``last.ckpt``) back into its method, safely.

Checkpoints are read by :func:`amcl.runs.read_checkpoint` (``torch.load(weights_only=True)``); a file
that is missing, truncated, not a torch file or not written by ``amcl pretrain`` raises
:class:`~amcl.errors.AmclError` with a one-line message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from amcl.config import PretrainConfig, config_options
from amcl.errors import AmclError
from amcl.methods import METHOD_CLASSES
from amcl.runs import read_checkpoint, upgrade_config

__all__ = ["Pretrained", "load_pretrained", "read_checkpoint", "resolve_device"]


@dataclass
class Pretrained:
    """A pre-trained method rebuilt from its checkpoint, in eval mode."""

    model: Any  # amcl.methods.base.PretrainMethod
    config: PretrainConfig
    num_classes: int
    normalization: dict[str, list[float]] | None
    path: Path

    @property
    def backbone(self) -> torch.nn.Module:
        return self.model.backbone


def load_pretrained(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Pretrained:
    """Rebuild the method a checkpoint was trained with, load its weights, and put it in eval mode."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    known = config_options()
    try:
        method = METHOD_CLASSES[hparams["config"]["method"]]
        saved = method.saved_config(upgrade_config(hparams["config"]), checkpoint["state_dict"])
        config = PretrainConfig(**{k: v for k, v in saved.items() if k in known})
        model = method(config, int(hparams["num_classes"]), hparams.get("normalization"))
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, RuntimeError, AmclError) as err:
        reason = " ".join(str(err).split())[:200]
        raise AmclError(
            f"checkpoint {checkpoint['path']} does not match this version of amcl ({reason}); evaluate it with the "
            "version that wrote it"
        ) from None
    model.eval().to(device)
    return Pretrained(model, model.config, int(hparams["num_classes"]), hparams.get("normalization"),
                      Path(checkpoint["path"]))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; otherwise the named device, checked to exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise AmclError(f"unknown --device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AmclError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return resolved
