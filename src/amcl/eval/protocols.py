"""``amcl eval``: a checkpoint's frozen encoder under the weighted-kNN or the linear protocol.

:func:`evaluate_checkpoint` loads the checkpoint, rebuilds its dataset normalised exactly as in
pre-training (or another dataset, ``dataset=``), extracts the features of the labelled training and
held-out images, runs the protocol, and writes the result (top-1, top-5, settings, sizes, time) to
``eval-<protocol>.json`` beside the checkpoint.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from amcl.errors import AmclError
from amcl.eval.checkpoint import load_pretrained, resolve_device
from amcl.eval.features import evaluation_config, evaluation_data, extract_features
from amcl.eval.linear import linear_probe, linear_probe_augmented
from amcl.eval.options import PROTOCOLS, EvalOptions
from amcl.files import write_json
from amcl.knn import default_k, knn_predict, topk_accuracies

__all__ = ["PROTOCOLS", "evaluate_checkpoint"]


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
    images, the feature size, the protocol's settings and ``time_s``; it is written atomically to ``out``
    or ``<checkpoint folder>/eval-<protocol>.json``. User mistakes raise :class:`~amcl.errors.AmclError`.
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
    test_features, test_labels = extract_features(encoder, data.plain_batches("test", device))
    if len(train_labels) == 0 or len(test_labels) == 0:  # every file of a split was unreadable
        raise AmclError(f"no readable labelled {'training' if len(train_labels) == 0 else 'held-out'} images in "
                        f"{used.name}")
    num_classes = used.num_classes
    result: dict[str, Any] = {"protocol": protocol}
    if protocol == "knn":
        labelled = int((train_labels >= 0).sum())
        k = opts.knn_k or config.knn_k or default_k(labelled)
        if k > labelled:
            raise AmclError(f"--knn-k {k} is larger than the bank, the {labelled} labelled training images of "
                            f"{used.name}; use --knn-k <= {labelled}")
        t = config.knn_t if opts.knn_t is None else opts.knn_t
        scores = knn_predict(test_features.to(device), train_features.to(device), train_labels.to(device),
                             num_classes, k, t)
        accuracy = topk_accuracies(scores, test_labels.to(device))
        result.update(top1=accuracy[1], top5=accuracy[5])
        settings: dict[str, Any] = {"k": k, "t": t}
    else:
        probe_options = dict(epochs=opts.epochs, lr=opts.lr, batch_size=opts.batch_size,
                             weight_decay=opts.weight_decay, seed=opts.seed, device=device)
        if opts.augment:
            probe = linear_probe_augmented(encoder, data, num_classes, train_features=train_features,
                                           train_labels=train_labels, test_features=test_features,
                                           test_labels=test_labels, **probe_options)
        else:
            probe = linear_probe(train_features, train_labels, test_features, test_labels, num_classes,
                                 **probe_options)
        result.update(top1=probe["top1"], top5=probe["top5"])
        settings = {"epochs": opts.epochs, "lr": opts.lr, "batch_size": opts.batch_size,
                    "weight_decay": opts.weight_decay, "augment": bool(opts.augment), "seed": opts.seed,
                    "train_loss": probe["train_loss"], "train_top1": probe["train_top1"], "steps": probe["steps"]}
        if opts.augment:
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
    path = Path(opts.out) if opts.out is not None else pretrained.path.parent / f"eval-{protocol}.json"
    _write_result(path, result)
    return {**result, "json": str(path)}
