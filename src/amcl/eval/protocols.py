"""``amcl eval``: a checkpoint's frozen encoder under the weighted-kNN or the linear protocol.

:func:`evaluate_checkpoint` loads the checkpoint, rebuilds its dataset normalised exactly as in
pre-training (or another dataset, ``dataset=``), extracts the features of the labelled training and
held-out images, runs the protocol, and writes the result (top-1, top-5, settings, sizes, time) to
``eval-<protocol>.json`` beside the checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from amcl.errors import AmclError
from amcl.runs import write_json

__all__ = ["PROTOCOLS", "evaluate_checkpoint"]

PROTOCOLS = ("knn", "linear")


def _validate(protocol: str, knn_k: int | None, knn_t: float | None, epochs: int, lr: float, batch_size: int,
              weight_decay: float, augment: bool) -> None:
    if protocol not in PROTOCOLS:
        raise AmclError(f"unknown --protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    if knn_k is not None and knn_k < 1:
        raise AmclError(f"--knn-k must be at least 1, got {knn_k}")
    if knn_t is not None and not (math.isfinite(knn_t) and knn_t > 0):
        raise AmclError(f"--knn-t must be a positive number, got {knn_t}")
    if epochs < 1:
        raise AmclError(f"--epochs must be at least 1, got {epochs}")
    if not (math.isfinite(lr) and lr > 0):
        raise AmclError(f"--lr must be a positive number, got {lr}")
    if batch_size < 1:
        raise AmclError(f"--batch-size must be at least 1, got {batch_size}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise AmclError(f"--weight-decay must be a number >= 0, got {weight_decay}")
    if augment and protocol != "linear":
        raise AmclError("--augment applies to --protocol linear only")


def _data_overrides(config, dataset: str | None, data_root: str | None, workers: int | None) -> dict[str, Any]:
    """The config changes evaluation needs: the options given, and no unlabeled extra images (they
    take no part in evaluation; STL-10's would mean reading 100,000 images for nothing)."""
    overrides: dict[str, Any] = {}
    if dataset is not None:
        overrides["dataset"] = dataset
        if dataset != config.dataset and dataset != "folder":
            overrides["class_list"] = None  # a folder's class list means nothing to another dataset
    if data_root is not None:
        overrides["data_root"] = data_root
    if workers is not None:
        if workers < 0:
            raise AmclError(f"--workers must be 0 (decode in the main process) or more, got {workers}")
        overrides["workers"] = workers
    if config.unlabeled:
        overrides["unlabeled"] = False
    return overrides


def _check_labelled(data_module, config) -> None:
    splits = data_module.splits
    has_train = splits.num_classes > 0 and bool((splits.train_labels >= 0).any())
    has_test = bool((splits.test_labels >= 0).any())
    if has_train and has_test:
        return
    where = f"{config.dataset} at {config.data_root}" if config.data_root else config.dataset
    if config.dataset == "folder":
        root = config.data_root
        raise AmclError(f"evaluation needs labelled images but {where} has "
                        f"{'no held-out split' if has_train else 'no labelled training images'}; it needs a labelled "
                        f"split: {root}/train/<class>/ and {root}/val/<class>/ (or test/)")
    raise AmclError(f"evaluation needs labelled training and held-out images, and {where} lacks "
                    f"{'held-out' if has_train else 'training'} labels")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (a temporary file, then ``os.replace``), creating the folder if needed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, data)
    except OSError as exc:
        raise AmclError(f"cannot write the result to {path}: {exc.strerror or exc}; choose a writable --out") from None


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    protocol: str = "knn",
    *,
    dataset: str | None = None,
    data_root: str | None = None,
    workers: int | None = None,
    knn_k: int | None = None,
    knn_t: float | None = None,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    augment: bool = False,
    device: str | torch.device = "auto",
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint's frozen encoder; returns the result written to JSON plus ``"json"`` (its path).

    ``protocol``: ``"knn"`` (weighted kNN, bank = the labelled training images, queries = the
    held-out split; ``knn_k``/``knn_t`` default to the checkpoint's) or ``"linear"`` (a linear probe,
    see :mod:`amcl.eval.linear`; on precomputed features, or with ``augment`` on crop + flip views
    through the encoder every epoch). ``dataset``, ``data_root`` and ``workers`` override the
    checkpoint's data options. The result holds ``protocol``, ``top1``, ``top5`` (0-1), the checkpoint,
    the dataset, the numbers of training and test images, the feature size, the protocol's settings
    and ``time_s``; it is written atomically to ``out`` or ``<checkpoint folder>/eval-<protocol>.json``.
    User mistakes raise :class:`~amcl.errors.AmclError`.
    """
    from amcl.eval.checkpoint import load_pretrained, resolve_device
    from amcl.eval.features import evaluation_data, extract_features
    from amcl.eval.knn import knn_predict, topk_accuracies
    from amcl.eval.linear import linear_probe, linear_probe_augmented

    started = time.perf_counter()
    _validate(protocol, knn_k, knn_t, epochs, lr, batch_size, weight_decay, augment)
    device = resolve_device(device)
    pretrained = load_pretrained(checkpoint, device)
    overrides = _data_overrides(pretrained.config, dataset, data_root, workers)
    config = dataclasses.replace(pretrained.config, **overrides)  # the data options evaluation uses
    data = evaluation_data(pretrained, **overrides)
    used = data.splits
    _check_labelled(data, config)
    encoder = pretrained.backbone
    train_features, train_labels = extract_features(encoder, data.plain_batches("train", device))
    test_features, test_labels = extract_features(encoder, data.plain_batches("test", device))
    if len(train_labels) == 0 or len(test_labels) == 0:  # every file of a split was unreadable
        raise AmclError(f"no readable labelled {'training' if len(train_labels) == 0 else 'held-out'} images in "
                        f"{used.name}")
    num_classes = used.num_classes
    result: dict[str, Any] = {"protocol": protocol}
    if protocol == "knn":
        k = config.knn_k if knn_k is None else knn_k
        t = config.knn_t if knn_t is None else knn_t
        scores = knn_predict(test_features.to(device), train_features.to(device), train_labels.to(device),
                             num_classes, k, t)
        accuracy = topk_accuracies(scores, test_labels.to(device))
        result.update(top1=accuracy[1], top5=accuracy[5])
        settings: dict[str, Any] = {"k": k, "t": t}
    else:
        options = dict(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed, device=device)
        if augment:
            probe = linear_probe_augmented(encoder, data, num_classes, train_features=train_features,
                                           train_labels=train_labels, test_features=test_features,
                                           test_labels=test_labels, **options)
        else:
            probe = linear_probe(train_features, train_labels, test_features, test_labels, num_classes, **options)
        result.update(top1=probe["top1"], top5=probe["top5"])
        settings = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
                    "augment": bool(augment), "seed": seed, "train_loss": probe["train_loss"],
                    "train_top1": probe["train_top1"], "steps": probe["steps"]}
        if augment:
            settings["policy"] = probe["policy"]
    result.update({
        "checkpoint": str(pretrained.path.resolve()),
        "dataset": config.dataset,
        "dataset_name": used.name,
        "data_root": config.data_root,
        "num_classes": num_classes,
        "train_images": len(train_labels),
        "test_images": len(test_labels),
        "feature_dim": int(train_features.shape[1]),
        "image_size": config.image_size,
        "device": str(device),
        **settings,
        "time_s": round(time.perf_counter() - started, 3),
    })
    path = Path(out) if out is not None else pretrained.path.parent / f"eval-{protocol}.json"
    _write_json(path, result)
    return {**result, "json": str(path)}
