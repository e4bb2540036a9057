"""The ``amcl`` command: a thin argparse layer over the typed :class:`PretrainConfig`.

Every option of ``pretrain`` is generated from the config's fields, so ``--config FILE.yaml``
can set any of them; options given on the command line win over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Sequence

from amcl import __version__
from amcl.config import PretrainConfig, coerce, field_types, load_yaml
from amcl.errors import AmclError


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end in one line on stderr and exit status 2, never a traceback."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    types = field_types()
    for f in dataclasses.fields(PretrainConfig):
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


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """The config file's values (if any) overridden by the options given on the command line."""
    values = load_yaml(args.config) if getattr(args, "config", None) else {}
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="amcl", description="Adaptive Multi-head Contrastive Learning: pre-train image encoders "
                                              "with SimCLR (baseline or AMCL).")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AmclError as exc:
        print(f"amcl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
