"""``amcl export``: a pre-trained encoder as plain weights, and a dataset's features as ``.npy``.

Writes into the output folder:

* ``encoder.pt``: the backbone's ``state_dict`` (CPU tensors only), loadable with
  ``torch.load(path, weights_only=True)`` into ``amcl.nn.build_backbone(name, image_size=size)``;
* ``encoder.json``: what is needed to use it: backbone name, feature size, image size and the
  normalisation the encoder was trained with, plus where it came from;
* with ``features=True``, per split: ``features-<split>.npy`` (float32 ``[N, D]``),
  ``labels-<split>.npy`` (int64 ``[N]``, -1 for unlabeled images) and, for image folders,
  ``paths-<split>.txt`` (the file of each row). Every image of the split is included, labelled
  or not; unreadable folder images are left out (and absent from ``paths``).

:func:`load_encoder` reads the first two back into a ready encoder.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amcl import __version__
from amcl.data.module import ContrastiveDataModule
from amcl.errors import AmclError, WriteError
from amcl.eval.checkpoint import load_pretrained, resolve_device
from amcl.eval.features import evaluation_config, evaluation_data
from amcl.eval.options import ExportOptions
from amcl.files import write_atomic, write_torch
from amcl.nn.backbones import build_backbone, is_backbone_name

__all__ = ["export_encoder", "load_encoder", "ENCODER_FORMAT"]

ENCODER_FORMAT = "amcl-encoder/1"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@torch.no_grad()
def _split_features(
    data: ContrastiveDataModule, split: str, encoder: nn.Module, device: torch.device
) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Features and labels of every image of ``split`` (unlabeled ones too), and folder paths."""
    chosen = data.split(split)
    features, labels, unreadable = [], [], set()
    for images, batch_labels in chosen.batches(data.eval_batch_size, device, workers=data.workers,
                                               on_unreadable=unreadable.update):
        features.append(encoder(data.augment.plain(images)).float().cpu())
        labels.append(batch_labels.cpu())
    paths = None if chosen.paths is None else [p for p in chosen.paths if p not in unreadable]
    if not features:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), paths
    return torch.cat(features).numpy(), torch.cat(labels).numpy().astype(np.int64), paths


def export_encoder(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, **options: Any
) -> dict[str, Any]:
    """Export a checkpoint's encoder (and with ``features`` the features of ``splits``) into ``out``
    (default: ``export/`` beside the checkpoint); ``options`` are the fields of
    :class:`~amcl.eval.options.ExportOptions`. Returns the description written to ``encoder.json`` plus
    ``files``, the paths written."""
    opts = ExportOptions(out=None if out is None else str(out), **options)
    opts.validate()
    pretrained = load_pretrained(checkpoint, resolve_device(opts.device))
    folder = Path(opts.out) if opts.out is not None else pretrained.path.parent / "export"
    backbone, config = pretrained.backbone, pretrained.config
    state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    info: dict[str, Any] = {
        "format": ENCODER_FORMAT,
        "backbone": config.backbone,
        "in_channels": 3,
        "feature_dim": int(backbone.out_dim),
        "image_size": config.image_size,
        "normalization": pretrained.normalization,
        "method": config.method,
        "amcl": config.amcl,
        "heads": config.heads,
        "dataset": config.dataset,
        "checkpoint": str(pretrained.path),
        "amcl_version": __version__,
        "torch_version": torch.__version__,
    }
    files = [folder / "encoder.pt", folder / "encoder.json"]
    if opts.features:  # read the data before writing anything: a wrong path leaves no half export behind
        # a folder is streamed, so each row keeps its file path
        data = evaluation_data(pretrained, evaluation_config(config, opts, unlabeled=True, stream_folder=True))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    except OSError as err:
        raise AmclError(f"cannot create the output folder {folder}: {err.strerror}; choose a writable --out") from None
    # every file is written into a staging folder first and moved into place at the end, encoder.json last: a
    # command stopped on the way (Ctrl+C, a full disk) leaves the previous export as it was, not half a new one
    try:
        write_torch(stage / files[0].name, state)
        if opts.features:
            info["features"] = {}
            for split in opts.splits:
                feats, labels, paths = _split_features(data, split, backbone, next(backbone.parameters()).device)
                names = {"features": folder / f"features-{split}.npy", "labels": folder / f"labels-{split}.npy"}
                write_atomic(stage / names["features"].name, _npy_bytes(feats))
                write_atomic(stage / names["labels"].name, _npy_bytes(labels))
                if paths is not None:
                    names["paths"] = folder / f"paths-{split}.txt"
                    write_atomic(stage / names["paths"].name, "".join(f"{x}\n" for x in paths))
                files += [names["features"], names["labels"], *([names["paths"]] if paths is not None else [])]
                info["features"][split] = {"count": int(len(labels)), "labelled": int((labels >= 0).sum()),
                                           **{k: v.name for k, v in names.items()}}
        write_atomic(stage / files[1].name, lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))
        for path in [f for f in files if f != files[1]] + [files[1]]:
            os.replace(stage / path.name, path)
    except WriteError as exc:  # named by the file it was to become
        raise WriteError(str(exc).replace(str(stage), str(folder))) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {**info, "files": [str(f) for f in files]}


def load_encoder(folder: str | os.PathLike[str],
                 device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The encoder ``amcl export`` wrote into ``folder``, in eval mode, and its description.

    Feed it images resized to ``info["image_size"]``, scaled to [0, 1] and normalised with
    ``info["normalization"]`` (per-channel mean and std), as in pre-training::

        encoder, info = load_encoder("runs/simclr/export")
        features = encoder(images)  # [N, info["feature_dim"]]
    """
    path = Path(folder)
    try:
        info = json.loads((path / "encoder.json").read_text())
    except (OSError, ValueError) as err:
        raise AmclError(f"cannot read {path / 'encoder.json'} ({err}); export the encoder with amcl export") from None
    if info.get("format") != ENCODER_FORMAT or not is_backbone_name(str(info.get("backbone"))):
        raise AmclError(f"{path / 'encoder.json'} does not describe an encoder exported by this version of amcl")
    try:
        state = torch.load(path / "encoder.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, foreign or missing file
        raise AmclError(f"cannot load {path / 'encoder.pt'} ({type(err).__name__}); export the encoder again") from None
    encoder = build_backbone(info["backbone"], info.get("in_channels", 3), info.get("image_size"))
    try:
        encoder.load_state_dict(state)
    except (RuntimeError, TypeError) as err:
        reason = str(err).splitlines()[0]
        raise AmclError(f"{path / 'encoder.pt'} does not fit a {info['backbone']} ({reason})") from None
    return encoder.eval().to(device), info

