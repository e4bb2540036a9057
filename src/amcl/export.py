"""``amcl export``: a pre-trained encoder as plain weights, and a dataset's features as ``.npy``.

Writes into the output folder:

* ``encoder.safetensors`` (``encoder.pt`` where the safetensors package is missing): the backbone's weights
  (CPU tensors only) under torchvision's names for the ResNets and timm's for the ViTs (``--format``; see
  :mod:`amcl.nn.names`), loadable with ``strict=True`` into ``torchvision.models.resnet50()`` with ``fc`` set to
  ``Identity`` or ``timm.create_model(..., num_classes=0)``, and by :func:`load_encoder` into amcl's module;
* ``encoder.json``: what is needed to use it: backbone name, feature size, image size and the
  normalisation the encoder was trained with, the weights' file and names, plus where it came from;
* ``README.md``: a model card: method and AMCL settings, data, epochs, the run's kNN and linear results,
  and how to load it in three lines;
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
from amcl.nn.names import export_names, rename

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
    try:
        style, names = export_names(backbone, opts.format)
    except ValueError as exc:
        raise AmclError(f"--format {opts.format}: {exc}") from None
    state = rename({k: v.detach().cpu().contiguous().clone() for k, v in backbone.state_dict().items()}, names)
    weights = "encoder.safetensors" if _has_safetensors() else "encoder.pt"
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
        "weights": weights,
        "names": style,
    }
    files = [folder / weights, folder / "encoder.json", folder / "README.md"]
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
        _write_weights(stage / weights, state)
        write_atomic(stage / "README.md", model_card(info, config, pretrained.path.parent))
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


def _has_safetensors() -> bool:
    import importlib.util

    return importlib.util.find_spec("safetensors") is not None


def _write_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        write_atomic(path, save(state, metadata={"format": "pt"}))  # amcl's writer: a full disk is one clear line
    else:
        write_torch(path, state)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


#: The results a model card quotes from the run's folder: (file, its key, what it is).
_CARD_RESULTS = (("metrics.json", "final_knn_acc", "kNN top-1 (the training monitor, last epoch)"),
                 ("eval-knn.json", "top1", "kNN top-1 (`amcl eval`)"),
                 ("eval-linear.json", "top1", "linear probe top-1 (`amcl eval --protocol linear`)"))


def _loading_lines(info: dict[str, Any], config: Any) -> list[str]:
    """The three lines that load the export in its library."""
    weights = info["weights"]
    read = (f'state = safetensors.torch.load_file("{weights}")' if weights.endswith(".safetensors") else
            f'state = torch.load("{weights}", weights_only=True)')
    name = info["backbone"]
    if info["names"] == "torchvision":
        arch = name.removesuffix("_imagenet")
        lines = [f"model = torchvision.models.{arch}(); model.fc = torch.nn.Identity()"]
        if not name.endswith("_imagenet"):  # the CIFAR stem: torchvision's names, a 3x3 conv and no max-pool
            lines.append("model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False); "
                         "model.maxpool = torch.nn.Identity()")
        return [read, *lines, "model.load_state_dict(state)"]
    if info["names"] == "timm" and name.startswith("vit_"):
        size, mean = name.split("_")[1], name.endswith("_mean")
        from amcl.nn.vit import default_patch_size

        options = f"img_size={info['image_size']}, patch_size={default_patch_size(info['image_size'])}"
        if mean:
            options += ', class_token=False, global_pool="avg"'
        return [read, f'model = timm.create_model("vit_{size}_patch16_224", num_classes=0, {options})',
                "model.load_state_dict(state)"]
    if info["names"] == "timm":
        return [read, f'model = timm.create_model("{name.removeprefix("timm:")}", num_classes=0)',
                "model.load_state_dict(state)"]
    return ["from amcl.export import load_encoder", 'model, info = load_encoder(".")',
            "features = model(images)  # normalised as below"]


def model_card(info: dict[str, Any], config: Any, run: Path) -> str:
    """``README.md`` beside an export: what the encoder is, how it was trained, its results, how to load it."""
    if config.amcl:
        tau = ("constant tau" if config.temperature_mode == "constant" else
               f"{config.temperature_mode} temperatures in [{config.tau_min:g}, {config.tau_max:g}]")
        form = f", {config.amcl_form} form" if config.amcl_form else ""
        method = f"{config.method} with AMCL ({config.heads} heads{form}, {tau}, beta {config.beta:g})"
    else:
        method = f"{config.method} (the baseline, temperature {config.temperature})"
    results = []
    for file, key, what in _CARD_RESULTS:
        try:
            value = json.loads((run / file).read_text()).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(value, (int, float)):
            results.append(f"| {what} | {100 * value:.2f}% |")
    norm = info["normalization"] or {}
    loading = _loading_lines(info, config)
    imports = {"torchvision": "import torch, torchvision, safetensors.torch",
               "timm": "import torch, timm, safetensors.torch"}.get(info["names"], "")
    if not info["weights"].endswith(".safetensors"):
        imports = imports.replace(", safetensors.torch", "")
    lines = [
        f"# {info['backbone']} encoder pre-trained with {method}", "",
        f"Pre-trained by amcl {info['amcl_version']} on {config.dataset} ({config.image_size} px images, "
        f"augmentation policy `{config.augs}`) for {config.epochs} epochs with batch {config.global_batch}, "
        f"lr {config.lr:g} ({config.optimizer}), seed {config.seed}. Output: {info['feature_dim']} features.", "",
        f"Weights: `{info['weights']}`, under {info['names']}'s names"
        + (" (the CIFAR stem: torchvision's names for a 3x3 stride-1 conv1 and no max-pool)"
           if info["names"] == "torchvision" and not info["backbone"].endswith("_imagenet") else "") + ".",
        "", "## Load it", "", "```python", *([imports] if imports else []), *loading, "```", "",
        f"Inputs: {info['image_size']} px images scaled to [0, 1], then normalised per channel with mean "
        f"{[round(m, 4) for m in norm.get('mean', [])]} and std {[round(s, 4) for s in norm.get('std', [])]}.", "",
        "## Results", "",
        *(["| evaluation on the test split | accuracy |", "|---|---:|", *results] if results else
          ["No evaluation was found beside the checkpoint: run `amcl eval` on it."]), "",
        f"Checkpoint: `{info['checkpoint']}`. Licence: the weights carry the licence of the data they were trained on.",
        "",
    ]
    return "\n".join(lines)


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
    weights = path / info.get("weights", "encoder.pt")  # exports of earlier versions: encoder.pt, amcl's names
    try:
        state = _read_weights(weights)
    except Exception as err:  # truncated, foreign or missing file
        raise AmclError(f"cannot load {weights} ({type(err).__name__}); export the encoder again") from None
    encoder = build_backbone(info["backbone"], info.get("in_channels", 3), info.get("image_size"))
    try:
        _, names = export_names(encoder, info.get("names", "amcl"))
        encoder.load_state_dict(rename(state, names, back=True))
    except (RuntimeError, TypeError, ValueError, KeyError) as err:
        reason = str(err).splitlines()[0]
        raise AmclError(f"{weights} does not fit a {info['backbone']} ({reason})") from None
    return encoder.eval().to(device), info

