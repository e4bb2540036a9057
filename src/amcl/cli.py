"""The ``amcl`` command: a thin argparse layer over the typed :class:`PretrainConfig`.

Every option of ``pretrain`` is generated from the config's fields, so ``--config FILE.yaml``
can set any of them; options given on the command line win over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from typing import Any, Sequence

from amcl import __version__
from amcl.config import PretrainConfig, coerce, field_types, load_yaml
from amcl.errors import AmclError, AmclWarning

#: The config options ``amcl preview`` takes (the dataset and how its images are read).
PREVIEW_OPTIONS = ("dataset", "data_root", "image_size", "unlabeled", "class_list", "strict_data", "workers",
                   "color_strength", "seed")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end in one line on stderr and exit status 2, never a traceback."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_config_options(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One option per config field (or per field in ``names``), with its help, choices and default."""
    types = field_types()
    for f in dataclasses.fields(PretrainConfig):
        if names is not None and f.name not in names:
            continue
        flag = "--" + f.name.replace("_", "-")
        choices = f.metadata.get("choices")
        help_text = f.metadata["help"]
        if choices:
            help_text += f" ({', '.join(choices)})"
        if f.default is not None:
            help_text += f" [default: {f.default}]"
        if types[f.name] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        else:
            parser.add_argument(flag, type=_typed(f.name), default=argparse.SUPPRESS, help=help_text,
                                metavar=f.name.upper())


def _typed(name: str):
    def convert(text: str) -> Any:
        try:
            return coerce(name, text)
        except AmclError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = field_types()[name].__name__
    return convert


def config_from_args(args: argparse.Namespace, names: Sequence[str] | None = None) -> PretrainConfig:
    """The config file's values (if any) overridden by the options given on the command line.

    With ``names``, only those options are taken from the file (a pre-training preset can then
    feed a command that needs only its dataset options).
    """
    values = load_yaml(args.config) if getattr(args, "config", None) else {}
    if names is not None:
        values = {k: v for k, v in values.items() if k in names}
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in fields})
    return PretrainConfig(**values)


def _pretrain(args: argparse.Namespace) -> int:
    from amcl.train import pretrain

    config = config_from_args(args).resolved()
    summary = pretrain(config)
    best = summary["best_knn_acc"]["mean"] if config.runs > 1 else summary["best_knn_acc"]
    if best is not None:
        print(f"best kNN accuracy: {best:.4f}")
    print(f"outputs in {config.out}")
    return 0


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


def _policy_list(text: str) -> str:
    from amcl.data.augment import parse_policy

    policies = [p.strip() for p in text.split(",") if p.strip()]
    if not policies:
        raise argparse.ArgumentTypeError("give at least one policy, e.g. a,ab,abcde")
    for policy in policies:
        try:
            parse_policy(policy)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


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
    pretrain.add_argument("--config", metavar="FILE.yaml", help="read options from a YAML file")
    _add_config_options(pretrain)
    pretrain.set_defaults(func=_pretrain)

    preview = commands.add_parser(
        "preview", help="write a PNG grid of augmented image pairs, to see what a policy does",
        description="Write a PNG grid: rows of dataset images, each un-augmented and as two random views under "
                    "every policy given. Dataset options as for pretrain; --config reads them from a YAML file.",
    )
    preview.add_argument("--config", metavar="FILE.yaml", help="read the dataset options from a YAML file")
    preview.add_argument("--augs", dest="policies", type=_policy_list, default="a,b,c,d,e,default",
                         help="comma-separated policies, one pair of columns each (letters from abcde, 'default' "
                              "or 'color') [default: a,b,c,d,e,default]")
    preview.add_argument("--num-images", type=int, default=8, help="rows: images drawn from the training split "
                                                                   "[default: 8]")
    preview.add_argument("--out", default="preview.png", help="PNG file to write [default: preview.png]")
    _add_config_options(preview, PREVIEW_OPTIONS)
    preview.set_defaults(func=_preview)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """AmclWarnings as one line, ``amcl: warning: ...``; other warnings as Python prints them."""
    if issubclass(category, AmclWarning):
        print(f"amcl: warning: {message}", file=file or sys.stderr)
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


_default_show_warning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except AmclError as exc:
        print(f"amcl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
