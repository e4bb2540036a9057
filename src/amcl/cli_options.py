"""How options reach the command line: one flag per :class:`amcl.options.Option` (the config's fields, each
method's own options in a group of its own, and the fields of the eval / analyze / export option classes),
config files merged under the command line, and the checks that need the command line itself (another
method's flag, a variant's OPTION=VALUE). :mod:`amcl.cli` builds its parsers and handlers on these.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Sequence

from amcl.config import PretrainConfig, config_options, load_yaml_files, option_names
from amcl.errors import AmclError
from amcl.options import Option, coerce_value, dataclass_options
from amcl.specs import METHOD_SPECS, method_names, method_options

__all__ = ["PREVIEW_OPTIONS", "add_checkpoint_options", "add_config_files", "add_config_options", "add_options",
           "config_from_args", "given_options", "policy_list", "refuse_other_methods_options", "split_policies",
           "variant_options"]


#: The config options ``amcl preview`` takes (the dataset and how its images are read).
PREVIEW_OPTIONS = ("dataset", "data_root", "image_size", "unlabeled", "class_list", "strict_data", "workers",
                   "color_strength", "seed")


def add_options(parser: argparse.ArgumentParser | Any, options: Sequence[Option]) -> None:
    """One flag per option (:class:`amcl.options.Option`), with its help, choices and default: the one way every
    command's options reach the command line. Values are converted and checked as YAML values are; a
    boolean gets ``--flag`` and ``--no-flag``."""
    for opt in options:
        help_text = opt.help
        if opt.choices and typing.get_origin(opt.kind) is not tuple:
            help_text += f" ({', '.join(opt.choices)})"
        if opt.default is not None:
            shown = " ".join(opt.default) if isinstance(opt.default, tuple) else opt.default
            help_text += f" [default: {shown}]"
        if opt.kind is bool:
            parser.add_argument(opt.flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif typing.get_origin(opt.kind) is tuple:
            parser.add_argument(opt.flag, nargs="+", choices=opt.choices, default=argparse.SUPPRESS, help=help_text)
        elif opt.several:
            parser.add_argument(opt.flag, nargs="+", action=_Words, default=argparse.SUPPRESS, help=help_text,
                                metavar=opt.metavar or opt.name.upper(), option=opt)
        else:
            parser.add_argument(opt.flag, type=_typed(opt), default=argparse.SUPPRESS, help=help_text,
                                metavar=opt.metavar or opt.name.upper())


def add_config_options(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """The pretrain options (or those in ``names``): the shared ones, then each method's own in a group of its
    own ("MoCo options")."""
    wanted = option_names() if names is None else names
    shared = [opt for name, opt in config_options().items() if name in wanted and name not in method_options()]
    add_options(parser, shared)
    seen: set[str] = set()
    for method in method_names():  # an option two methods declare is listed under the first
        own = [opt for name, opt in method_options(method).items() if name in wanted and name not in seen]
        seen.update(opt.name for opt in own)
        if own:
            add_options(parser.add_argument_group(f"{METHOD_SPECS[method].title} options"), own)


class _Words(argparse.Action):
    """An option of several words (``--logger tensorboard csv``), kept as the config holds it: ``tensorboard,csv``."""

    def __init__(self, *args: Any, option: Option, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.option = option

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[override]
        setattr(namespace, self.dest, coerce_value(self.option, list(values)))


def _typed(opt: Option):
    def convert(text: str) -> Any:
        try:
            return coerce_value(opt, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = opt.kind.__name__
    return convert


def config_from_args(
    args: argparse.Namespace, names: Sequence[str] | None = None, extras: tuple[str, ...] = ()
) -> PretrainConfig:
    """The config files' values (if any, merged in order) overridden by the options given on the command line.

    With ``names``, only those options are taken from the file (a pre-training preset can then
    feed a command that needs only its dataset options). ``extras`` are other keys the file may
    hold (compare's ``variants``); they are left out here.
    """
    values = load_yaml_files(getattr(args, "config", None) or [], extras)
    values = {k: v for k, v in values.items() if k not in extras}
    if names is not None:
        values = {k: v for k, v in values.items() if k in names}
    options = set(option_names())
    values.update({k: v for k, v in vars(args).items() if k in options})
    return PretrainConfig(**values)


def refuse_other_methods_options(args: argparse.Namespace, method: str) -> None:
    """An option of another method given on the command line (``--queue-size`` with ``--method simclr``) would
    be ignored: say so instead. (Config files may hold them: a run's config.yaml from an earlier version
    records every method's.)"""
    for name in vars(args):
        owners = [m for m in method_names() if name in method_options(m)]
        if owners and method not in owners:
            flag = "--" + name.replace("_", "-")
            raise AmclError(f"{flag} is an option of {' and '.join(owners)}, which --method {method} does not use; "
                            f"drop {flag}, or give --method {owners[0]}")


def given_options(args: argparse.Namespace, kind: type) -> dict[str, Any]:
    """The fields of the option dataclass ``kind`` that were given on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(kind) if hasattr(args, f.name)}


def variant_options(name: str, options: Sequence[str]) -> dict[str, str]:
    """``--variant NAME OPTION=VALUE ...`` as a mapping (values are typed by the compare grid)."""
    parsed = {}
    for item in options:
        key, equals, value = item.partition("=")
        if not equals or not key.strip("-"):
            raise AmclError(f"--variant {name}: {item!r} is not OPTION=VALUE (e.g. amcl-form=softmax)")
        parsed[key.strip().lstrip("-")] = value.strip()
    return parsed


def split_policies(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def add_checkpoint_options(parser: argparse.ArgumentParser, kind: type) -> None:
    """``--checkpoint`` and one flag per field of the option dataclass ``kind`` (see
    :mod:`amcl.eval.options`)."""
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="a last.ckpt written by amcl pretrain (or its --out folder)")
    add_options(parser, dataclass_options(kind))


def add_config_files(parser: argparse.ArgumentParser, what: str, printed: str) -> None:
    """``--config`` (several YAML files, merged in order) and ``--print-config`` (``printed``, then exit)."""
    parser.add_argument("--config", metavar="FILE.yaml", action="append",
                        help=f"read {what} from a YAML file; several files merge in order, a later one winning, and "
                             "the command line wins over them all")
    parser.add_argument("--print-config", action="store_true", help=f"print {printed}, and exit without training")


def policy_list(text: str) -> str:
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
