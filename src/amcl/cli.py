"""The ``amcl`` command: its parsers and one handler per sub-command, a thin layer over the typed
:class:`PretrainConfig` and the option classes of :mod:`amcl.eval.options`.

Every option is generated from its :class:`amcl.options.Option` record (:mod:`amcl.cli_options`), so
``--config FILE.yaml`` can set any of ``pretrain``'s; options given on the command line win over the file.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any, Sequence

from amcl import __version__
from amcl.cli_options import (
    PREVIEW_OPTIONS,
    add_checkpoint_options,
    add_config_files,
    add_config_options,
    config_from_args,
    given_options,
    policy_list,
    refuse_other_methods_options,
    split_policies,
    variant_options,
)
from amcl.compare_grid import GRID_OPTIONS
from amcl.config import PretrainConfig, load_yaml_files, option_names
from amcl.errors import AmclError, RunInterrupted, warnings_on_one_line
from amcl.eval.options import AnalyzeOptions, EvalOptions, ExportOptions
from amcl.specs import method_names


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end in one line on stderr and exit status 2, never a traceback; options are matched
    whole (argparse would read ``--epoch 3`` as ``--epochs 3``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _pretrain(args: argparse.Namespace) -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from amcl.train import pretrain

    if args.resume and args.overwrite:
        raise AmclError("--resume continues the run in its folder and --overwrite deletes it; give one of them")
    if args.resume:
        config = _resumed_config(args)
    else:
        config = config_from_args(args)
        refuse_other_methods_options(args, config.method)
        config = config.resolved()
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    summary = pretrain(config, resume=bool(args.resume), overwrite=args.overwrite)
    _close_process_group()
    if rank_zero_only.rank != 0:  # in multi-process training, one process reports
        return 0
    best = summary["best_knn_acc"]["mean"] if config.runs > 1 else summary["best_knn_acc"]
    if best is not None:
        k = summary.get("knn_k")
        print(f"best kNN accuracy: {best:.4f}" + (f" (kNN monitor with k = {k} neighbours)" if k else ""))
    print(f"outputs in {config.out}")
    return 0


def _close_process_group() -> None:
    """After a multi-process run, each process takes its process group down. Left to the interpreter's exit,
    gloo's threads can be torn down mid-flight ("terminate called without an active exception"), and
    Lightning's launcher then kills the whole run although it finished. No barrier first: every collective of
    the run has completed on both sides, and a barrier would hang on a peer that ended with an error."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _resumed_config(args: argparse.Namespace) -> PretrainConfig:
    """``--resume DIR``: the run's own config.yaml, with the options given on the command line (which
    :func:`amcl.train.pretrain_once` checks may change)."""
    from pathlib import Path

    if getattr(args, "config", None):
        raise AmclError("--resume DIR reads the run's own config.yaml; drop --config")
    folder = Path(args.resume)
    if not (folder / "config.yaml").is_file():
        reason = "does not exist" if not folder.exists() else "has no config.yaml"
        raise AmclError(f"--resume {folder} {reason}; give the --out folder of an amcl pretrain run")
    from amcl.runs import read_config

    options = option_names()  # recorded values (the global batch) are recorded again for the resumed run
    values = {k: v for k, v in read_config(folder / "config.yaml").items() if k in options}
    values.update({k: v for k, v in vars(args).items() if k in options})
    values["out"] = str(folder)
    return PretrainConfig(**values).resolved()


def _preview(args: argparse.Namespace) -> int:
    from amcl.data.datasets import load_configured_dataset
    from amcl.data.preview import augmentation_grid, sample_images, save_preview

    config = config_from_args(args, PREVIEW_OPTIONS).resolved()
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if args.num_images < 1:
        raise AmclError(f"--num-images must be at least 1, got {args.num_images}")
    splits = load_configured_dataset(config, cache="never")  # decode only the images shown
    images = sample_images(splits, args.num_images, config.seed)
    grid = augmentation_grid(images, policies, config.image_size, config.color_strength, config.seed)
    title = f"{splits.name}, {config.image_size} px, colour strength {config.color_strength:g}"
    save_preview(grid, policies, args.out, title)
    print(f"wrote {args.out}: {len(images)} images, two views under each of {', '.join(policies)}")
    return 0


def _print_json_summary(result: dict, keys: Sequence[str]) -> None:
    shown = {k: result[k] for k in keys if result.get(k) is not None}
    print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))


def _eval(args: argparse.Namespace) -> int:
    from amcl.eval.protocols import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, **given_options(args, EvalOptions))
    _print_json_summary(result, ("protocol", "labels_per_class", "top1", "top1_std", "top5", "val_top1",
                                 "val_top1_std"))
    print(f"wrote {result['json']}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from amcl.eval.analysis import analyze_checkpoint

    result = analyze_checkpoint(args.checkpoint, **given_options(args, AnalyzeOptions))
    print(f"backbone overlap {result['backbone']['overlap']:.3f}; per head: "
          + ", ".join(f"{h['overlap']:.3f}" for h in result["heads"]))
    print(f"wrote {', '.join(result['files'])}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from amcl.export import export_encoder

    result = export_encoder(args.checkpoint, **given_options(args, ExportOptions))
    print(f"wrote {', '.join(result['files'])}")
    return 0


#: ``amcl compare`` takes every pretrain option except those its grid sets per cell.
COMPARE_OPTIONS = [name for name in option_names() if name not in GRID_OPTIONS]


def _compare(args: argparse.Namespace) -> int:
    from amcl.compare import run_comparison

    base = config_from_args(args, COMPARE_OPTIONS, extras=("variants",))
    variants = load_yaml_files(args.config or [], extras=("variants",)).get("variants") or {}
    if not isinstance(variants, dict):
        raise AmclError(f"config file {args.config[-1]!r}: variants must map names to options, e.g. "
                        "variants: {softmax: {amcl-form: softmax}}")
    variants = dict(variants)
    for name, *options in args.variant or []:
        variants[name] = variant_options(name, options)
    if args.print_config:
        import yaml

        given = {k: v for k, v in base.as_dict().items() if v is not None}
        print(yaml.safe_dump({**given, **({"variants": variants} if variants else {})}, sort_keys=False), end="")
        return 0
    result = run_comparison(base, args.methods, split_policies(args.policies), args.seeds, args.modes, args.out,
                            args.metric, variants, args.linear, args.holm, args.equivalence_margin,
                            args.labels_per_class or (), args.label_protocol, args.label_draws)
    print(result["table"])
    files = [result["markdown"], result["json"], *([result["figure"]] if "figure" in result else [])]
    print(f"wrote {', '.join(files[:-1])} and {files[-1]}")
    return 0


#: The commands that read a checkpoint: their options (:mod:`amcl.eval.options`), handler, help line and
#: description.
_CHECKPOINT_COMMANDS = {
    "eval": (EvalOptions, _eval,
             "evaluate a checkpoint's frozen encoder: weighted kNN or a linear probe (top-1, top-5)",
             "Evaluate a pre-trained encoder, frozen, on a labelled dataset: weighted kNN (bank = training images) or "
             "a linear classifier trained on its features. Prints top-1 and top-5 and writes them to JSON beside the "
             "checkpoint."),
    "analyze": (AnalyzeOptions, _analyze,
                "similarity histograms of positive vs negative pairs, their overlap, learned temperatures",
                "On held-out images, compare positive pairs (two views of one image) with negative pairs (views of "
                "different images): cosine-similarity histograms for the backbone and each head, the overlap of the "
                "two distributions, and the learned temperatures of both kinds of pair. Writes PNG figures and "
                "analysis.json."),
    "export": (ExportOptions, _export,
               "the encoder under torchvision/timm names (safetensors), a model card, and optionally features",
               "Write the checkpoint's encoder as encoder.safetensors (encoder.pt without the safetensors package) "
               "under torchvision's names for ResNets and timm's for ViTs, so that it loads with strict=True into "
               "torchvision.models.resnet50() or timm.create_model(...); encoder.json (backbone, feature size, image "
               "size, normalisation) and README.md (a model card: training, results, how to load it); with "
               "--features also features-<split>.npy and labels-<split>.npy."),
}


def _add_commands(commands) -> None:
    for name, (options, handler, help_line, description) in _CHECKPOINT_COMMANDS.items():
        command = commands.add_parser(name, help=help_line, description=description)
        add_checkpoint_options(command, options)
        command.set_defaults(parser=command, func=handler)

    compare = commands.add_parser(
        "compare", help="baseline vs AMCL over methods x augmentation policies x seeds: results.md and .json",
        description="Pre-train every cell of a grid (methods x modes x augmentation policies x seeds; modes are "
                    "baseline, AMCL and named variants) and write results.md (mean ± std per cell, the best of each "
                    "row in bold, and each mode's paired difference to the baseline of the same seed: mean ± std and "
                    "wins/ties/losses) and results.json. Finished cells are kept: running the same command again "
                    "resumes the grid. All pretrain options except --method, --amcl, --augs, --seed, --runs and --out"
                    " set every cell.",
    )
    add_config_files(compare, "the shared pretrain options (and variants)",
                      "the shared options and the variants as YAML, as merged from the files and the command line")
    compare.add_argument("--methods", nargs="+", default=["simclr"], choices=method_names(),
                         help="methods [default: simclr]")
    compare.add_argument("--modes", nargs="+", default=None,
                         help="baseline, amcl and the names of --variant's (or the config's variants) [default: "
                              "baseline amcl; with variants: baseline and every variant]")
    compare.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "OPTION=VALUE"),
                         help="a named mode: AMCL (unless amcl=false) with these options on top of the shared ones, "
                              "e.g. --variant softmax amcl-form=softmax tau-min=0.05; repeat for more. A --config "
                              "file may hold them too, as variants: {NAME: {OPTION: VALUE}}")
    compare.add_argument("--linear", action="store_true",
                         help="also evaluate every run with the linear probe (eval-linear.json beside its "
                              "checkpoint) and report it in a second table")
    compare.add_argument("--augs", dest="policies", type=policy_list, default="default",
                         help="comma-separated augmentation policies, e.g. a,ab,abc,abcd,abcde [default: default]")
    compare.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="[default: 0 1 2]")
    compare.add_argument("--metric", default="final_knn_acc", metavar="METRIC",
                         help="the metric the first table reports: final_knn_acc, best_knn_acc, final_loss, "
                              "linear_top1 (implies --linear), their validation-split counterparts final_val_knn_acc, "
                              "best_val_knn_acc, linear_val_top1 (need --val-fraction: choose settings on them), or a "
                              "few-label one such as linear_top1_10_per_class (with --labels-per-class 10) "
                              "[default: final_knn_acc]")
    compare.add_argument("--holm", action="store_true",
                         help="adjust the p-values of each table's paired differences for the number of cells "
                              "compared (Holm), so that a table's verdicts hold together at 5%%")
    compare.add_argument("--equivalence-margin", type=float, metavar="M",
                         help="also test equivalence within ±M (percentage points for accuracies) with two "
                              "one-sided tests; a cell then reads 'equivalent within ±M' when the data say so")
    compare.add_argument("--labels-per-class", type=int, nargs="+", metavar="N",
                         help="the paper's few-label protocol: evaluate every run with N labelled images per class "
                              "(each N its own table; few-labels.png draws accuracy against N), e.g. 10 20 50 100")
    compare.add_argument("--label-protocol", default="linear", choices=("linear", "knn"),
                         help="the few-label evaluation: a linear probe or kNN [default: linear]")
    compare.add_argument("--label-draws", type=int, default=5, metavar="K",
                         help="draws of the labelled images per run and N; a run's value is their mean [default: 5]")
    compare.add_argument("--out", default="runs/compare", metavar="DIR", help="[default: runs/compare]")
    add_config_options(compare, COMPARE_OPTIONS)
    compare.set_defaults(parser=compare, func=_compare)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="amcl", description="Adaptive Multi-head Contrastive Learning: pre-train image encoders "
                                              "with SimCLR, MoCo v2, SimSiam or Barlow Twins, "
                                              "as the baseline or with AMCL.")
    parser.add_argument("--version", action="version", version=f"amcl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)
    pretrain = commands.add_parser(
        "pretrain", help="pre-train an encoder (writes config.yaml, metrics.json, last.ckpt)",
        description="Pre-train an encoder. Every option can also come from --config FILE.yaml (keys as the "
                    "option names, with - or _); options on the command line win.",
    )
    add_config_files(pretrain, "options", "the resolved configuration (every option, defaults filled in) as YAML")
    pretrain.add_argument("--resume", metavar="DIR",
                          help="continue the run in DIR (its --out folder) from its last checkpoint, with its own "
                               "settings; finished runs are left as they are")
    pretrain.add_argument("--overwrite", action="store_true",
                          help="delete the --out folder first if it holds a run (without it such a folder is refused)")
    add_config_options(pretrain)
    pretrain.set_defaults(parser=pretrain, func=_pretrain)

    preview = commands.add_parser(
        "preview", help="write a PNG grid of augmented image pairs, to see what a policy does",
        description="Write a PNG grid: rows of dataset images, each un-augmented and as two random views under "
                    "every policy given. Dataset options as for pretrain; --config reads them from a YAML file.",
    )
    preview.add_argument("--config", metavar="FILE.yaml", action="append",
                         help="read the dataset options from a YAML file (several merge in order)")
    preview.add_argument("--augs", dest="policies", type=policy_list, default="a,b,c,d,e,default",
                         help="comma-separated policies, one pair of columns each (letters from abcde, 'default' "
                              "or 'color') [default: a,b,c,d,e,default]")
    preview.add_argument("--num-images", type=int, default=8, help="rows: images drawn from the training split "
                                                                   "[default: 8]")
    preview.add_argument("--out", default="preview.png", help="PNG file to write [default: preview.png]")
    add_config_options(preview, PREVIEW_OPTIONS)
    preview.set_defaults(parser=preview, func=_preview)
    _add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # reported by the sub-command, whose --help lists its options
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}{_suggestion(args.parser, unknown)}")
    terminate = _take_sigterm()
    try:
        with warnings_on_one_line():
            return args.func(args)
    except AmclError as exc:
        print(f"amcl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as stopped:  # a run stopped by a signal at a step boundary
        if stopped.report:
            print(f"amcl {args.command}: {stopped}", file=sys.stderr)
        return stopped.exit_status
    except KeyboardInterrupt as exc:  # a signal outside training (reading data, evaluating)
        number = exc.signal_number if isinstance(exc, Terminated) else signal.SIGINT
        print(f"amcl {args.command}: interrupted by {signal.Signals(number).name}; nothing was completed",
              file=sys.stderr)
        return 128 + number
    finally:
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)


def _suggestion(parser: argparse.ArgumentParser, unknown: Sequence[str]) -> str:
    """"; did you mean --epochs?" for the first unknown option close to a known one (options are matched whole)."""
    import difflib

    known = [flag for flag in parser._option_string_actions if flag.startswith("--")]
    for word in unknown:
        close = difflib.get_close_matches(word.split("=")[0], known, n=1, cutoff=0.75) if word.startswith("--") else []
        if close:
            return f"; did you mean {close[0]}?"
    return ""


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training run: stops the command as Ctrl+C does (files being written are removed)."""

    signal_number = signal.SIGTERM


def _raise_terminated(number: int, frame: Any) -> None:
    raise Terminated()


def _take_sigterm() -> Any:
    """Make SIGTERM stop the command like Ctrl+C (a run in training stops at a step boundary instead, see
    :class:`amcl.checkpointing.StopOnSignal`); returns the handler it replaced, None off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


if __name__ == "__main__":
    sys.exit(main())
