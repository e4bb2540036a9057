"""``docs/cli.md``: the command-line reference, generated from the parser that ``amcl --help`` prints.

Every option of every command comes from the config's and the option dataclasses' metadata (help, choices,
defaults), through :func:`amcl.cli.build_parser`, so the page cannot drift from ``--help``: a test regenerates
it and compares. Regenerate after changing an option::

    .venv/bin/python -m amcl.cli_reference > docs/cli.md
"""

from __future__ import annotations

import argparse
import sys

from amcl.cli import build_parser

__all__ = ["reference_markdown"]


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each command's one-line help, as ``amcl --help`` lists them."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {choice.dest: choice.help or "" for choice in action._choices_actions}


def _flags(action: argparse.Action) -> str:
    if isinstance(action, argparse.BooleanOptionalAction):
        return " / ".join(f"`{flag}`" for flag in action.option_strings)
    if action.nargs == 0:
        return f"`{action.option_strings[0]}`"
    metavar = action.metavar or action.dest.upper()
    if isinstance(metavar, tuple):
        shown = " ".join(metavar) + " ..."
    elif action.nargs in ("+", "*"):
        shown = f"{metavar} [{metavar} ...]"
    else:
        shown = metavar
    if action.choices and not action.metavar:
        shown = "{" + ",".join(map(str, action.choices)) + "}" + (" ..." if action.nargs in ("+", "*") else "")
    return f"`{action.option_strings[0]} {shown}`"


def _cell(text: str) -> str:
    return " ".join(text.replace("%%", "%").replace("|", "\\|").split())


def reference_markdown() -> str:
    """The page: each command with its description and one table row per option (flag, help)."""
    parser = build_parser()
    lines = ["# Command-line reference", "",
             "Generated from the options' own metadata (`python -m amcl.cli_reference > docs/cli.md`); a test keeps "
             "it equal to `amcl <command> --help`. Options are matched whole (no abbreviations); every `pretrain` "
             "option can also come from `--config FILE.yaml` (keys as the option names, with - or _; several files "
             "merge in order, the command line wins).", ""]
    helps = _helps(parser)
    commands = _commands(parser)
    lines += [f"- [`amcl {name}`](#amcl-{name}): {_cell(helps.get(name, ''))}" for name in commands]
    for name, command in commands.items():
        lines += ["", f"## amcl {name}", "", _cell(command.description or ""), "", "| option | what it does |",
                  "|---|---|"]
        for group in command._action_groups:  # the shared options, then each method's own ("MoCo options")
            rows = [f"| {_flags(action)} | {_cell(action.help or '')} |" for action in group._group_actions
                    if action.option_strings and not isinstance(action, argparse._HelpAction)]
            if rows and group.title not in ("options", "optional arguments", "positional arguments"):
                rows.insert(0, f"| **{group.title}** | |")
            lines += rows
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
