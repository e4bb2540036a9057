"""The typed pre-training configuration: every option of ``amcl pretrain``, its default and its checks.

Defaults that depend on the method (learning rate, temperature, beta) are the method's
(:data:`amcl.specs.METHOD_SPECS`) and fill the options left unset (``None``); paper settings beyond
those are YAML presets in ``configs/``. A config can come from YAML (``--config FILE.yaml``) and the command line, the
command line winning.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from amcl.errors import AmclError
from amcl.options import (
    AT_LEAST_1,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    SEEDS,
    Option,
    Range,
    coerce_value,
    dataclass_options,
    option,
)
from amcl.policies import parse_policy
from amcl.specs import (
    AMCL_FORMS,
    METHOD_SPECS,
    METHODS,
    TEMPERATURE_MODES,
    canonical_form,
    method_names,
    method_options,
    resolve_defaults,
)

__all__ = ["AT_LEAST_1", "FRACTION", "NON_NEGATIVE", "POSITIVE", "SEEDS", "PretrainConfig", "Range", "coerce",
           "field_types", "load_yaml", "load_yaml_files", "option_names", "parse_devices"]

DATASETS = ("digits", "synthetic", "cifar10", "cifar100", "stl10", "fashion_mnist", "mnist", "kmnist", "folder")
#: Datasets read from --data-root, those that may be (Fashion-MNIST: from its system package without it), and
#: those with an unlabeled split (--unlabeled).
FILE_DATASETS = ("cifar10", "cifar100", "stl10", "mnist", "kmnist", "folder")
OPTIONAL_ROOT_DATASETS = ("fashion_mnist",)
UNLABELED_DATASETS = ("stl10", "folder")
CACHE_CHOICES = ("auto", "always", "never")
#: Lightning loggers ``--logger`` can add (each needs its package: ``pip install amcl[tensorboard]`` ...).
LOGGERS = ("tensorboard", "csv", "wandb", "mlflow")
#: The negative side of the regulariser (see amcl.losses.NEGATIVE_REGULARIZERS; kept here so the
#: config needs no torch).
NEGATIVE_REGULARIZERS = ("mean_omega", "sum_log_inverse")


def _by_method(key: str) -> str:
    values = [f"{name} {spec.defaults[key]:g}" for name, spec in METHOD_SPECS.items() if key in spec.defaults]
    return "default: " + ", ".join(values)

#: Image size used when ``image_size`` is unset.
DATASET_IMAGE_SIZES = {"digits": 16, "synthetic": 32, "cifar10": 32, "cifar100": 32, "stl10": 96, "fashion_mnist": 28,
                       "mnist": 28, "kmnist": 28, "folder": 224}
#: From this image size on, the default backbone is ResNet-18 with the ImageNet stem (7x7/2 conv + max-pool).
IMAGENET_STEM_FROM = 128


#: Why an option's range is what it is, where the range alone does not say.
_RANGE_NOTES = {
    "batch_size": " (every method compares images within a batch)",
    "workers": " (0: decode in the main process)",
    "grad_clip": " (the largest gradient norm)",
    "color_strength": " (SimCLR's s; above 2.5 the hue jitter would exceed half a turn)",
}


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None, recorded: bool = False,
         valid: Range | None = None, several: bool = False) -> Any:
    """A config field (:func:`amcl.options.option`); ``recorded`` marks a value ``amcl pretrain`` fills in and
    saves, which is not an option; ``valid`` is a numeric option's range, which :meth:`PretrainConfig.validate`
    checks; ``several`` lets a text option hold several of its ``choices``, kept comma-separated."""
    return option(default, help, choices, valid=valid, several=several, recorded=recorded)


@dataclass(init=False)
class PretrainConfig:
    """All options of a pre-training run. ``None`` means "the method's or dataset's default".

    The options every method shares are fields; a method's own options (``queue_size``, ``barlow_lambda`` ...)
    are declared by the method (:attr:`amcl.specs.MethodSpec.options`) and held in ``method_options``, but read
    and given like fields: ``PretrainConfig(method="moco", queue_size=1024).queue_size``. A value left unset reads
    as the declaring method's default; :meth:`resolved` keeps only the configured method's own."""

    # method
    method: str = _opt("simclr", "self-supervised method", METHODS)
    amcl: bool = _opt(False, "use the AMCL loss (several heads, adaptive temperature) instead of the baseline")
    heads: int | None = _opt(None, "number of projection heads C (default: 3 with --amcl, else 1)", valid=AT_LEAST_1)
    head_reduction: str | None = _opt(
        None,
        "how the C heads' losses combine: sum (as the paper's equations; the backbone then gets C times one head's "
        "gradient) or mean (the same loss divided by C, which equals dividing --lr by C) (default: sum for "
        "--amcl-form hardest and hardest_with_positive, mean for softmax)",
        ("sum", "mean"),
    )
    temperature_mode: str = _opt(
        "adaptive",
        "AMCL temperatures: adaptive (learned, pair-wise), constant (--temperature), adaptive only for "
        "positive / negative pairs (the paper's ablations), or global (one learned temperature per head, in the "
        "same bounds with the same regulariser: the control that separates a learned level from pair-adaptivity)",
        TEMPERATURE_MODES,
    )
    amcl_form: str | None = _opt(
        None,
        "AMCL loss of SimCLR and MoCo: softmax (our extension, recommended: the log-sum-exp over all candidates "
        "that Eq. 2.4's max approximates, a temperature per pair; default beta 0.01 and the heads' mean), hardest "
        "(Eq. 2.1 as printed, k = 1: the hardest negatives, with beta and tau bounds from the authors' later code, the "
        "heads' sum) or hardest_with_positive (Eq. 2.4, the hardest of the N+1 candidates, positive included; "
        "'infonce', its earlier name, is accepted) (default: softmax for simclr and moco; the other methods have "
        "one AMCL form, their paper equation)",
        AMCL_FORMS,
    )
    negative_regularizer: str = _opt(
        "mean_omega",
        "negative side of the regulariser over an anchor's negatives: mean_omega (beta * mean Omega(tau_n); "
        "Eq. 2.1 for --topk 1) or sum_log_inverse (beta * sum (log tau_n + 1/tau_n), the authors' later code)",
        NEGATIVE_REGULARIZERS,
    )
    beta: float | None = _opt(
        None, f"weight of the temperature regulariser Omega (default: 0.01 with the softmax form; else "
        f"{_by_method('beta').removeprefix('default: ')})", valid=NON_NEGATIVE,
    )
    tau_min: float | None = _opt(
        None, "lowest adaptive temperature (default: 0.05 with the softmax form, else 1e-5, from the authors' later "
        "code)",
        valid=POSITIVE,
    )
    tau_max: float | None = _opt(None, "highest adaptive temperature (default: 2.0, from the authors' later code)",
                                 valid=POSITIVE)
    topk: int = _opt(
        1, "AMCL: average the negative terms over the k hardest negatives (1 = Eq. 2.1 exactly)",
        valid=AT_LEAST_1
    )
    temperature: float | None = _opt(
        None,
        f"constant temperature of the baseline loss and of --temperature-mode constant ({_by_method('temperature')})",
        valid=POSITIVE,
    )
    temperature_hidden: int = _opt(128, "hidden width of the temperature network phi", valid=AT_LEAST_1)
    temperature_input: str = _opt(
        "projection",
        "what phi reads: projection (the heads' outputs, with gradients flowing back through the temperatures, "
        "as in the paper) or detached (the same vectors with gradients stopped, so only the similarities train "
        "the encoder and phi cannot reshape the projections to lower its temperatures)",
        ("projection", "detached"),
    )
    proj_hidden: int | None = _opt(
        None, f"hidden width of each projection head ({_by_method('proj_hidden')})",
        valid=AT_LEAST_1
    )
    proj_dim: int | None = _opt(
        None, f"output size d' of each projection head ({_by_method('proj_dim')})",
        valid=AT_LEAST_1
    )
    proj_layers: int | None = _opt(
        None, f"linear layers per projection head ({_by_method('proj_layers')})",
        valid=AT_LEAST_1
    )
    #: The method's own options (MoCo's queue_size ...), declared in its :class:`amcl.specs.MethodSpec`: read
    #: as attributes (``config.queue_size``), given as keyword arguments, flat in YAML and in checkpoints.
    method_options: dict[str, Any] = field(default_factory=dict)
    # data
    dataset: str = _opt("digits", "dataset to pre-train on", DATASETS)
    data_root: str | None = _opt(
        None, "folder holding the dataset files (not needed for digits, synthetic; fashion_mnist: default "
        "/usr/share/datasets/fashion-mnist, where `apt-get install dataset-fashion-mnist` puts it)"
    )
    train_subset: int | None = _opt(
        None, "train on this many training images, class-balanced and drawn with --split-seed (the test split is "
        "kept whole), e.g. 10000 of Fashion-MNIST's 60,000 for CPU-sized runs", valid=AT_LEAST_1,
    )
    val_fraction: float = _opt(
        0.0, "hold this share of each class's labelled training images out as a validation split, drawn with "
        "--split-seed: their labels leave the kNN bank and the linear probe's training (pre-training still sees "
        "the images), and val_* metrics are reported beside the test ones. Choose settings on validation, report "
        "on test (0: none)", valid=Range(0, 1, high_included=False),
    )
    image_size: int | None = _opt(
        None, "side of the training images in pixels (default: the dataset's: digits 16, cifar 32, stl10 96, "
        "folder 224)", valid=AT_LEAST_1,
    )
    unlabeled: bool = _opt(
        False, "add the dataset's unlabeled images to pre-training: stl10's unlabeled_X.bin (100,000 images) or a "
        "folder's <root>/unlabeled/"
    )
    class_list: str | None = _opt(
        None, "folder: a text file naming the class folders to use, one per line (e.g. the ImageNet-100 list)"
    )
    strict_data: bool = _opt(
        False, "stop on an image file that cannot be decoded instead of skipping it with a warning"
    )
    cache_images: str = _opt(
        "auto", "folder: decode all images once and keep them in memory (always), decode them every epoch in "
        "DataLoader workers (never), or cache when they fit in 8 GiB and a quarter of the RAM (auto)",
        CACHE_CHOICES,
    )
    workers: int | None = _opt(
        None, "DataLoader processes decoding folder images (default: CPU cores, at most 8)",
        valid=NON_NEGATIVE
    )
    augs: str = _opt("default", "augmentation policy: letters from abcde, 'default' (= acde) or 'color'")
    color_strength: float = _opt(0.5, "colour distortion strength s (policy letter d and 'color')", valid=Range(0, 2.5))
    # model and optimisation
    backbone: str | None = _opt(
        None, f"encoder: resnet18/34/50 (CIFAR stem), resnet*_imagenet, small_cnn, vit_tiny/small/base (class "
        f"token; patch 4 up to 64 px, 16 from 128 px), vit_*_mean (mean pooling), or timm:NAME (any timm model, "
        f"needs the timm package) (default: resnet18, or resnet18_imagenet from --image-size {IMAGENET_STEM_FROM})"
    )
    epochs: int = _opt(800, "training epochs", valid=AT_LEAST_1)
    batch_size: int = _opt(512, "images per batch (each gives two views)", valid=Range(2))
    optimizer: str = _opt(
        "sgd", "sgd (every parameter decayed, the authors' recipe), lars (trust ratio; biases, normalisation "
        "parameters, position embeddings and class tokens excluded from it and from weight decay) or adamw "
        "(betas 0.9, 0.999; the same parameters not decayed; --momentum unused)", ("sgd", "lars", "adamw"),
    )
    lr: float | None = _opt(None, f"base learning rate ({_by_method('lr')})", valid=POSITIVE)
    lr_scaling: str = _opt(
        "none", "none: --lr is the learning rate; linear: --lr x global batch / 256 (global batch = "
        "--batch-size x devices x nodes)", ("none", "linear"),
    )
    warmup_epochs: float = _opt(
        0.0, "epochs of linear learning-rate warm-up before the per-step cosine decay (may be fractional; 0: none)",
        valid=NON_NEGATIVE,
    )
    momentum: float = _opt(0.9, "SGD and LARS momentum", valid=FRACTION)
    weight_decay: float = _opt(5e-4, "weight decay (L2 for sgd and lars, decoupled for adamw)", valid=NON_NEGATIVE)
    max_steps: int = _opt(-1, "stop after this many optimisation steps (-1: run all epochs)")
    grad_clip: float | None = _opt(
        None, "clip the global gradient norm to this value before each optimiser step (the authors' later code: "
        "1.0; default: no clipping)", valid=POSITIVE,
    )
    # monitoring and runs
    knn_k: int | None = _opt(None, "neighbours of the kNN monitor (default: one per 70 labelled training images, "
                                   "1 to 200; 20 on digits, 200 on CIFAR)", valid=AT_LEAST_1,)
    knn_t: float = _opt(0.1, "temperature of the kNN monitor's weights", valid=POSITIVE)
    knn_every: int = _opt(1, "run the kNN monitor every N epochs", valid=AT_LEAST_1)
    logger: str = _opt(
        "none", "experiment loggers besides metrics.json, metrics.csv and curves.png (always written): tensorboard, "
        "csv, wandb (offline unless WANDB_MODE=online), mlflow (a SQLite store in the run folder unless "
        "MLFLOW_TRACKING_URI is set) or none; several separated by spaces or commas. Every metric is logged once "
        "per epoch, at the epoch (counted from 1) as its step", ("none", *LOGGERS), several=True,
    )
    save_every: int = _opt(
        0, "also keep epoch-N.ckpt every N epochs beside last.ckpt (amcl eval reads any of them; 0: only last.ckpt)",
        valid=NON_NEGATIVE,
    )
    runs: int = _opt(1, "repeat the run with seeds seed, seed+1, ... and summarise mean and std", valid=AT_LEAST_1)
    seed: int = _opt(0, "random seed of the initialisation, the augmentations and the batch order", valid=SEEDS)
    split_seed: int = _opt(
        0, "seed of the data split: digits' and synthetic's train/test split, --train-subset and --val-fraction; "
        "kept apart from --seed so that runs with several seeds share one split and can be compared pair by pair",
        valid=SEEDS,
    )
    out: str = _opt("runs/pretrain", "output folder (config.yaml, metrics.json, last.ckpt)")
    accelerator: str = _opt("auto", "Lightning accelerator: auto, cpu, gpu")
    precision: str = _opt(
        "auto", "Lightning precision, e.g. 32-true or bf16-mixed (auto: bf16-mixed on a CUDA GPU that supports it, "
        "else 32-true; losses and temperatures always run in float32)"
    )
    devices: str = _opt("1", "devices per node: a number, a list such as 0,1, or auto (all visible GPUs)")
    num_nodes: int = _opt(
        1, "machines (nodes) taking part; the global batch is batch-size x devices x nodes",
        valid=AT_LEAST_1
    )
    global_batch: int | None = _opt(
        None, "recorded, not an option: the images of one optimisation step over all processes (batch-size x the "
        "processes the run had), so that a checkpoint rebuilds on any machine", recorded=True,
    )
    strategy: str = _opt("auto", "Lightning strategy: auto (DDP when there are several devices), ddp, ddp_spawn ...")
    sync_batchnorm: bool = _opt(False, "synchronise BatchNorm statistics across processes (SyncBatchNorm, CUDA)")
    channels_last: bool = _opt(True, "on CUDA, keep images and convolutions in channels-last memory format")
    compile: bool = _opt(False, "compile the backbone with torch.compile (faster steps after a slow first one)")
    on_nonfinite: str = _opt(
        "stop", "a NaN or Inf loss or gradient: stop (keep the last good checkpoint, report the loss terms and "
        "temperatures) or skip the step (counted in metrics.json)", ("stop", "skip"),
    )
    progress: bool | None = _opt(
        None, "a progress bar; --no-progress prints one line per epoch instead (default: the bar on a terminal, "
        "the lines when the output goes to a file, a pipe or a scheduler's log)",
    )

    def __init__(self, **values: Any) -> None:
        if "amcl_form" in values:  # a form's earlier name (infonce) as it is called now
            values["amcl_form"] = canonical_form(values["amcl_form"])
        own = dict(values.pop("method_options", None) or {})
        for f in dataclasses.fields(self):
            if f.name == "method_options":
                continue
            if f.name in values:
                setattr(self, f.name, values.pop(f.name))
            else:
                setattr(self, f.name, f.default_factory() if f.default is dataclasses.MISSING else f.default)
        declared = method_options()
        unknown = [k for k in values if k not in declared]
        if unknown:
            raise TypeError(f"PretrainConfig got unknown option(s) {', '.join(unknown)}")
        self.method_options = {**own, **values}

    def __getattr__(self, name: str) -> Any:  # only for names that are not fields: a method's own options
        own = self.__dict__.get("method_options")
        if own is not None and name in own:
            return own[name]
        method = self.__dict__.get("method")
        declared = {**method_options(), **(method_options(method) if method in METHOD_SPECS else {})}
        if own is not None and name in declared:
            return declared[name].default
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def as_dict(self) -> dict[str, Any]:
        """Every option by name, the method's own ones flat where ``method_options`` stands (as config.yaml and
        checkpoints hold them)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "method_options":
                out.update(self.method_options)
            else:
                out[f.name] = getattr(self, f.name)
        return out

    @property
    def world_size(self) -> int:
        """Processes taking part in training: devices per node x nodes (``auto`` counts visible GPUs)."""
        devices = parse_devices(self.devices)
        if isinstance(devices, str) or devices == -1:  # auto, or -1: every visible GPU
            count = 1
            if self.accelerator in ("auto", "gpu", "cuda"):
                import torch

                count = max(1, torch.cuda.device_count())
        else:
            count = len(devices) if isinstance(devices, list) else devices
        return count * self.num_nodes

    def resolved(self) -> "PretrainConfig":
        """A copy with every ``None`` replaced by its default and ``precision auto`` made concrete, validated
        (raises AmclError); ``global_batch`` is recorded as this machine's processes would make it.

        Method-dependent options follow :func:`amcl.specs.resolve_defaults` (the form's, then the method's ...);
        SimSiam and Barlow Twins have no form (``amcl_form`` stays None)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "method_options"}
        values = resolve_defaults(self.method, self.amcl, values)
        own = method_options(self.method) if self.method in METHOD_SPECS else {}
        values["method_options"] = {name: opt.default if self.method_options.get(name) is None
                                    else self.method_options[name] for name, opt in own.items()}
        if values["image_size"] is None:
            values["image_size"] = DATASET_IMAGE_SIZES.get(self.dataset, 32)
        values["precision"] = effective_precision(values["precision"], values["accelerator"])  # config.yaml: what ran
        if values["backbone"] is None:
            values["backbone"] = "resnet18_imagenet" if values["image_size"] >= IMAGENET_STEM_FROM else "resnet18"
        cfg = PretrainConfig(**values)
        cfg.validate()
        return cfg if cfg.global_batch is not None else cfg.with_global_batch()

    def with_global_batch(self, processes: int | None = None) -> "PretrainConfig":
        """A copy recording ``global_batch`` = ``batch_size`` x ``processes`` (default: the processes
        this machine gives the run, :attr:`world_size`; ``auto`` counts its GPUs)."""
        return dataclasses.replace(self, global_batch=self.batch_size * (processes or self.world_size))

    def validate(self) -> None:
        """Check values that need no data; raises AmclError naming the option and the fix."""
        for name in ("method", "dataset", "temperature_mode", "amcl_form", "negative_regularizer", "temperature_input",
                     "head_reduction", "cache_images", "on_nonfinite", "optimizer", "lr_scaling", "logger"):
            choices = method_names() if name == "method" else _choices(name)  # registered methods count too
            optional = name in ("head_reduction", "amcl_form")  # None: resolved from the form / the method
            values = getattr(self, name).split(",") if name == "logger" else [getattr(self, name)]
            for value in values:
                if value not in choices and not (optional and value is None):
                    raise AmclError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
        from amcl.nn.backbones import BACKBONES, image_size_problem, is_backbone_name

        try:
            parse_policy(self.augs)
        except ValueError as exc:
            raise AmclError(f"--augs: {exc}") from None
        if self.backbone is not None and not is_backbone_name(self.backbone):
            raise AmclError(f"unknown backbone {self.backbone!r}; choose one of: {', '.join(sorted(BACKBONES))}, "
                            "or timm:NAME (a timm model, needs the timm package)")
        problem = self.backbone and self.image_size and image_size_problem(self.backbone, self.image_size)
        if problem:  # a ViT whose patch size does not divide the image size
            raise AmclError(problem)
        self._validate_ranges()
        if self.sync_batchnorm and (self.accelerator == "cpu" or (self.accelerator == "auto" and not _has_cuda())):
            raise AmclError("--sync-batchnorm works with CUDA GPUs only; drop it on --accelerator cpu")
        if not (self.tau_min > 0 and self.tau_min < self.tau_max):
            raise AmclError(
                f"need 0 < --tau-min < --tau-max, got tau_min={self.tau_min}, tau_max={self.tau_max}"
            )
        try:
            if self.world_size < 1:
                raise ValueError
        except ValueError:
            raise AmclError(
                f"--devices {self.devices!r} with --num-nodes {self.num_nodes}: give a positive number of devices, "
                "a list such as 0,1, or auto"
            ) from None
        if self.max_steps == 0 or self.max_steps < -1:
            raise AmclError(f"--max-steps must be -1 (run all epochs) or at least 1, got {self.max_steps}")
        if self.global_batch is not None and (self.global_batch < self.batch_size
                                              or self.global_batch % self.batch_size):
            raise AmclError(f"global_batch {self.global_batch} is not a multiple of --batch-size {self.batch_size}; "
                            "it is recorded by amcl pretrain: remove it from the config file")
        if not (math.isfinite(self.warmup_epochs) and 0 <= self.warmup_epochs < self.epochs):
            raise AmclError(f"--warmup-epochs must be >= 0 and less than --epochs {self.epochs} (the cosine decay "
                            f"follows the warm-up), got {self.warmup_epochs}")
        if self.amcl:
            self._validate_amcl()
        self._validate_data()

    def _validate_ranges(self) -> None:
        """Every numeric option, the method's own included, against its :class:`Range`; booleans are not numbers."""
        own = method_options(self.method) if self.method in METHOD_SPECS else {}
        for opt in [*_FIELD_OPTIONS, *own.values()]:
            problem = opt.problem(getattr(self, opt.name), _RANGE_NOTES.get(opt.name, ""))
            if problem:
                raise AmclError(problem)

    def _validate_data(self) -> None:
        if self.dataset in FILE_DATASETS and not self.data_root:
            raise AmclError(f"--dataset {self.dataset} needs --data-root DIR (the folder holding its files)")
        if self.data_root and self.dataset not in FILE_DATASETS + OPTIONAL_ROOT_DATASETS:
            raise AmclError(f"--data-root is for the datasets read from files "
                            f"({', '.join(FILE_DATASETS + OPTIONAL_ROOT_DATASETS)}); "
                            f"--dataset {self.dataset} takes none: give --dataset too, or drop --data-root")
        if self.unlabeled and self.dataset not in UNLABELED_DATASETS:
            raise AmclError(
                f"--unlabeled applies to {' and '.join(UNLABELED_DATASETS)}; {self.dataset} has no unlabeled split"
            )
        if self.class_list and self.dataset != "folder":
            raise AmclError(f"--class-list applies to --dataset folder, not {self.dataset}")

    def _validate_amcl(self) -> None:
        spec = METHOD_SPECS[self.method]
        if self.amcl_form not in (None, "hardest") and not spec.contrastive:  # "hardest": configs of earlier versions
            raise AmclError(
                f"--amcl-form {self.amcl_form} applies to simclr and moco; {self.method} has no negatives to "
                f"{'rank' if self.amcl_form == 'hardest_with_positive' else 'weigh'}: drop --amcl-form"
            )
        if self.temperature_mode not in spec.temperature_modes:
            raise AmclError(
                f"--temperature-mode {self.temperature_mode} needs negative pairs, which {self.method} does not have; "
                "use adaptive (= positive) or constant"
            )
        if spec.negatives is None:
            return
        if self.amcl_form == "softmax":  # every negative takes part: there is no top-k to choose
            if self.topk != 1:
                raise AmclError(f"--topk {self.topk} applies to --amcl-form hardest and hardest_with_positive; the "
                                "softmax form weighs every negative: drop --topk")
            return
        with_positive = self.amcl_form == "hardest_with_positive"  # Eq. 2.4 ranks the positive too
        negatives = spec.negatives.count(self) + with_positive
        if self.topk > negatives:
            raise AmclError(f"--topk {self.topk} is larger than the {negatives} {spec.negatives.what(self)}; use "
                            f"--topk <= {negatives} or {spec.negatives.fix}")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.as_dict(), sort_keys=False)


#: The options that are fields of :class:`PretrainConfig` (the methods' own ones are in their specs).
_FIELD_OPTIONS = dataclass_options(PretrainConfig)


def config_options(method: str | None = None) -> dict[str, Option]:
    """Every option of a pre-training config by name: the shared ones (recorded values included), then the own
    options of ``method`` (None: of every registered method)."""
    own = method_options(method) if method is None or method in METHOD_SPECS else {}
    return {**{o.name: o for o in _FIELD_OPTIONS}, **own}


def parse_devices(devices: str | int) -> int | list[int] | str:
    """``--devices`` as Lightning takes it: a count, a list of indices (``0,1`` or ``[0, 1]``), ``auto``, or -1
    (every visible GPU); ValueError for text that is none of these."""
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return text if text == "auto" else -1
    if "," in text or text.startswith("["):
        return [int(d) for d in text.strip("[]").split(",") if d.strip()]
    return int(text)


def effective_precision(precision: str, accelerator: str) -> str:
    """``--precision``, with ``auto`` made concrete: bf16-mixed on a CUDA GPU that supports it, else 32-true."""
    if precision != "auto":
        return precision
    import torch

    cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _choices(name: str) -> tuple[str, ...]:
    return config_options()[name].choices or ()


def option_names(method: str | None = None) -> list[str]:
    """The options a user sets (command-line options and YAML keys), recorded values left out: the shared ones
    and the own options of ``method`` (None: of every registered method)."""
    return [name for name, opt in config_options(method).items() if not opt.recorded]


def field_types() -> dict[str, type]:
    """Each option's base type (int, float, str or bool), ``Optional`` unwrapped."""
    return {name: opt.kind for name, opt in config_options().items()}


def coerce(name: str, value: Any) -> Any:
    """Convert a YAML or CLI value to the option's type, or raise AmclError."""
    try:
        return coerce_value(config_options()[name], value)
    except ValueError as exc:
        raise AmclError(str(exc)) from None


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names one key twice (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if not isinstance(key, (str, int, float, bool)):
                continue  # unhashable keys: YAML's own error
            if key in lines:
                raise _DuplicateKey(key, lines[key], key_node.start_mark.line + 1)
            lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _optional(name: str) -> bool:
    """Whether an option may be null (``None``: the method's or dataset's default, or unset; a method's own
    options may always be, as the records of other methods' runs hold them)."""
    return config_options()[name].optional or name in method_options()


def load_yaml(path: str | Path, extras: tuple[str, ...] = ()) -> dict[str, Any]:
    """Options from a YAML file (keys with - or _), checked against the known options. Keys named in
    ``extras`` (e.g. ``amcl compare``'s ``variants``) are allowed too and returned as they are. A file that
    is not UTF-8 YAML, names an option twice (``epochs`` twice, or ``batch_size`` and ``batch-size``) or gives
    null (``~``) for an option that needs a value is an :class:`AmclError` naming the key."""
    path = Path(path)
    where = f"config file {str(path)!r}"
    if path.is_dir():
        raise AmclError(f"{where} is a folder, not a YAML file; give the path of a .yaml file")
    if not path.is_file():
        raise AmclError(f"{where} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AmclError(f"{where} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start}); "
                        "save it as UTF-8") from None
    except OSError as exc:
        raise AmclError(f"cannot read {where}: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except _DuplicateKey as dup:
        raise AmclError(f"{where} names {dup.key!r} twice (lines {dup.first} and {dup.second}); keep one") from None
    except yaml.YAMLError as exc:
        raise AmclError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise AmclError(f"{where} must hold a mapping of option: value")
    known = set(config_options())
    out: dict[str, Any] = {}
    spelled: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in spelled:
            raise AmclError(f"{where} names one option twice, as {spelled[name]!r} and {key!r}; keep one")
        spelled[name] = key
        if name in extras:
            out[name] = value
            continue
        if name not in known:
            raise AmclError(f"{where}: unknown option {key!r}; valid: {', '.join(sorted(known))}")
        if value is None and not _optional(name):
            raise AmclError(f"{where}: option {key} is empty (null or ~) but needs a value; give one, or leave the "
                            "key out for its default")
        out[name] = coerce(name, value)
    return out


def load_yaml_files(paths: "typing.Sequence[str | Path]", extras: tuple[str, ...] = ()) -> dict[str, Any]:
    """Several config files (:func:`load_yaml`) merged in order: a later file's options win, and an extra that
    maps names (compare's ``variants``) merges name by name, so a file can add one variant to a preset's."""
    merged: dict[str, Any] = {}
    for path in paths:
        for key, value in load_yaml(path, extras).items():
            if key in extras and isinstance(value, dict) and isinstance(merged.get(key), dict):
                value = {**merged[key], **value}
            merged[key] = value
    return merged
