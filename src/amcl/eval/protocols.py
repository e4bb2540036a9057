"""``amcl eval``: a checkpoint's frozen encoder under the weighted-kNN or the linear protocol.

:func:`evaluate_checkpoint` loads the checkpoint, rebuilds its dataset normalised exactly as in
pre-training (or another dataset, ``dataset=``), extracts the features of the labelled training and
held-out images, runs the protocol, and writes the result (top-1, top-5, settings, sizes, time) to
``eval-<protocol>.json`` beside the checkpoint.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from amcl.data.splits import per_class_draw
from amcl.errors import AmclError
from amcl.eval.checkpoint import load_pretrained, resolve_device
from amcl.eval.features import evaluation_config, evaluation_data, extract_features
from amcl.eval.linear import linear_probe, linear_probe_augmented
from amcl.eval.options import PROTOCOLS, EvalOptions
from amcl.files import write_json
from amcl.knn import default_k, knn_predict, topk_accuracies

__all__ = ["PROTOCOLS", "evaluate_checkpoint", "result_name"]


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


def _write_result(path: Path, data: dict[str, Any]) -> None:
    """The result as JSON (atomically, :func:`amcl.files.write_json`), its folder created if needed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, data)
    except OSError as exc:
        raise AmclError(f"cannot write the result to {path}: {exc.strerror or exc}; choose a writable --out") from None


def evaluate_checkpoint(checkpoint: str | os.PathLike[str], protocol: str = "knn", **options: Any) -> dict[str, Any]:
    """Evaluate a checkpoint's frozen encoder; returns the result written to JSON plus ``"json"`` (its path).

    ``protocol``: ``"knn"`` (weighted kNN, bank = the labelled training images, queries = the
    held-out split; ``knn_k``/``knn_t`` default to the checkpoint's) or ``"linear"`` (a linear probe,
    see :mod:`amcl.eval.linear`; on precomputed features, or with ``augment`` on crop + flip views
    through the encoder every epoch). ``options`` are the fields of :class:`~amcl.eval.options.EvalOptions`
    (``dataset``, ``data_root`` and ``workers`` override the checkpoint's data options). The result holds
    ``protocol``, ``top1``, ``top5`` (0-1), the checkpoint, the dataset, the numbers of training and test
    images, the feature size, the protocol's settings and ``time_s``; with a validation split in the
    checkpoint's config (``--val-fraction``) also ``val_top1`` and ``val_top5``, from the same bank or probe.

    The paper's few-label protocol: with ``labels_per_class`` N, the bank (or the probe's training set) is N
    labelled training images per class, drawn class by class with ``seed`` + d for draw d of ``label_draws``;
    every draw is evaluated on the whole test (and validation) split, and each accuracy is the mean over the
    draws, with ``<name>_std`` and ``<name>_draws`` beside it. kNN's k then defaults to the smaller bank's.
    The result is written atomically to ``out`` or ``<checkpoint folder>/eval-<protocol>[-<N>-per-class].json``.
    User mistakes raise :class:`~amcl.errors.AmclError`.
    """
    started = time.perf_counter()
    opts = EvalOptions(protocol=protocol, **options)
    opts.validate()
    device = resolve_device(opts.device)
    pretrained = load_pretrained(checkpoint, device)
    config = evaluation_config(pretrained.config, opts)  # the data options evaluation uses
    data = evaluation_data(pretrained, config)
    used = data.splits
    _check_labelled(data, config)
    encoder = pretrained.backbone
    train_features, train_labels = extract_features(encoder, data.plain_batches("train", device))
    queries = {name: extract_features(encoder, data.plain_batches(name, device)) for name in data.query_splits}
    test_features, test_labels = queries["test"]
    if len(train_labels) == 0 or len(test_labels) == 0:  # every file of a split was unreadable
        raise AmclError(f"no readable labelled {'training' if len(train_labels) == 0 else 'held-out'} images in "
                        f"{used.name}")
    num_classes = used.num_classes
    draws = _label_draws(train_labels, num_classes, opts, used.name)
    scored = [_score(opts, config, encoder, data, train_features[index], train_labels[index], queries, num_classes,
                     device, used.name, few=opts.labels_per_class is not None) for index in draws]
    result: dict[str, Any] = {"protocol": protocol, **_over_draws(scored)}
    settings = scored[0].pop("settings")
    if opts.labels_per_class is not None:
        settings.update(labels_per_class=opts.labels_per_class, label_draws=opts.label_draws,
                        label_seeds=[opts.seed + d for d in range(opts.label_draws)])
    result.update({
        "checkpoint": str(pretrained.path.resolve()),
        "dataset": config.dataset,
        "dataset_name": used.name,
        "data_root": config.data_root,
        "num_classes": num_classes,
        "train_images": len(draws[0]),
        "test_images": len(test_labels),
        **({"val_images": len(queries["val"][1])} if "val" in queries else {}),
        "feature_dim": int(train_features.shape[1]),
        "image_size": config.image_size,
        "device": str(device),
        **settings,
        "time_s": round(time.perf_counter() - started, 3),
    })
    path = Path(opts.out) if opts.out is not None else pretrained.path.parent / result_name(
        protocol, opts.labels_per_class, result_settings(opts), pretrained.path.stem)
    _write_result(path, result)
    return {**result, "json": str(path)}


#: The evaluation options that change a result, with the word its file name carries when one is not at its
#: default (the dataset's name stands alone); per protocol, those it reads.
RESULT_SETTINGS = {"dataset": "", "knn_k": "k", "knn_t": "t", "epochs": "epochs", "lr": "lr", "batch_size": "batch",
                   "weight_decay": "wd", "augment": "augmented", "label_draws": "draws", "seed": "seed"}
_PROTOCOL_SETTINGS = {"knn": ("dataset", "knn_k", "knn_t", "label_draws", "seed"),
                      "linear": ("dataset", "epochs", "lr", "batch_size", "weight_decay", "augment", "label_draws",
                                 "seed")}


def result_settings(opts: EvalOptions) -> dict[str, Any]:
    """The options of ``opts`` that its protocol reads and that differ from their defaults."""
    defaults = EvalOptions()
    return {name: getattr(opts, name) for name in _PROTOCOL_SETTINGS[opts.protocol]
            if getattr(opts, name) != getattr(defaults, name)}


def result_name(protocol: str, labels_per_class: int | None = None, settings: dict[str, Any] | None = None,
                checkpoint: str = "last") -> str:
    """The file ``amcl eval`` writes beside the checkpoint, named by everything that changes the result, so that
    evaluations with other settings are kept side by side: ``eval-knn.json`` (the defaults),
    ``eval-linear-10-per-class-draws5.json``, ``eval-knn-k5.json``, ``eval-knn-epoch-20.json`` (of
    ``epoch-20.ckpt``). ``settings`` are the non-default options (:func:`result_settings`)."""
    words = [f"eval-{protocol}"] + ([f"{labels_per_class}-per-class"] if labels_per_class else [])
    for name, value in (settings or {}).items():
        shown = "" if value is True else f"{value:g}" if isinstance(value, float) else str(value)
        words.append(f"{RESULT_SETTINGS[name]}{shown}")
    if checkpoint != "last":
        words.append(checkpoint)
    return "-".join(words) + ".json"


def _label_draws(labels: Tensor, num_classes: int, opts: EvalOptions, name: str) -> list[Tensor]:
    """The training images each evaluation uses: all of them, or with ``labels_per_class`` one seeded,
    class-stratified draw per ``label_draws``."""
    if opts.labels_per_class is None:
        return [torch.arange(len(labels))]
    sizes = torch.bincount(labels, minlength=num_classes)
    if int(sizes.min()) < opts.labels_per_class:
        raise AmclError(f"--labels-per-class {opts.labels_per_class}: {name} has {int(sizes.min())} labelled training "
                        f"images in its smallest class; use --labels-per-class <= {int(sizes.min())}")
    counts = torch.full((num_classes,), opts.labels_per_class)
    return [per_class_draw(labels, counts, opts.seed + d) for d in range(opts.label_draws)]


def _score(opts: EvalOptions, config, encoder, data, train_features: Tensor, train_labels: Tensor,
           queries: dict[str, tuple[Tensor, Tensor]], num_classes: int, device, name: str,
           few: bool) -> dict[str, Any]:
    """Top-1 and top-5 on every query split (``top1``, ``val_top1`` ...) of one bank or probe training set,
    and the protocol's settings."""
    test_features, test_labels = queries["test"]
    others = {split: queries[split] for split in queries if split != "test"}
    if opts.protocol == "knn":
        labelled = len(train_labels)
        k = opts.knn_k or (default_k(labelled) if few else config.knn_k or default_k(labelled))
        if k > labelled:
            raise AmclError(f"--knn-k {k} is larger than the bank, the {labelled} labelled training images of "
                            f"{name}; use --knn-k <= {labelled}")
        t = config.knn_t if opts.knn_t is None else opts.knn_t
        bank = (train_features.to(device), train_labels.to(device))
        out: dict[str, Any] = {}
        for split, (features, labels) in queries.items():
            accuracy = topk_accuracies(knn_predict(features.to(device), *bank, num_classes, k, t), labels.to(device))
            prefix = "" if split == "test" else f"{split}_"
            out.update({f"{prefix}top1": accuracy[1], f"{prefix}top5": accuracy[5]})
        return {**out, "settings": {"k": k, "t": t}}
    probe_options = dict(epochs=opts.epochs, lr=opts.lr, batch_size=opts.batch_size,
                         weight_decay=opts.weight_decay, seed=opts.seed, device=device)
    if opts.augment:
        probe = linear_probe_augmented(encoder, data, num_classes, train_features=train_features,
                                       train_labels=train_labels, test_features=test_features,
                                       test_labels=test_labels, **probe_options)
    else:
        probe = linear_probe(train_features, train_labels, test_features, test_labels, num_classes, also=others,
                             **probe_options)
    settings = {"epochs": opts.epochs, "lr": opts.lr, "batch_size": opts.batch_size,
                "weight_decay": opts.weight_decay, "augment": bool(opts.augment), "seed": opts.seed,
                "train_loss": probe["train_loss"], "train_top1": probe["train_top1"], "steps": probe["steps"]}
    if opts.augment:
        settings["policy"] = probe["policy"]
    accuracies = {key: value for key, value in probe.items() if key.endswith(("top1", "top5"))
                  and key != "train_top1"}
    return {**accuracies, "settings": settings}


def _over_draws(scored: list[dict[str, Any]]) -> dict[str, Any]:
    """The accuracies of one evaluation, or over several draws their mean, with ``<name>_std`` (sample std)
    and ``<name>_draws`` (each draw's value)."""
    names = [key for key in scored[0] if key != "settings"]
    if len(scored) == 1:
        return {name: scored[0][name] for name in names}
    out: dict[str, Any] = {}
    for name in names:
        values = [draw[name] for draw in scored]
        out.update({name: statistics.fmean(values), f"{name}_std": statistics.stdev(values), f"{name}_draws": values})
    return out
