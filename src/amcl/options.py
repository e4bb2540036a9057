"""One description of a command-line option, whoever declares it: a field of :class:`amcl.config.PretrainConfig`
or of the ``eval`` / ``analyze`` / ``export`` option classes (:func:`option` in a dataclass), or a method's own
option (:class:`Option` in its :class:`amcl.specs.MethodSpec`). The CLI's flags, the YAML keys and the range
checks are all generated from these records. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric option: finite numbers from ``low`` to ``high`` (either may be open)."""

    low: float | None = None
    high: float | None = None
    low_included: bool = True
    high_included: bool = True

    def __contains__(self, value: float) -> bool:
        if isinstance(value, bool) or not math.isfinite(value):
            return False
        above = self.low is None or (value >= self.low if self.low_included else value > self.low)
        below = self.high is None or (value <= self.high if self.high_included else value < self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            if self.low == 0:
                return "a number >= 0" if self.low_included else "a positive number"
            return f"{'at least' if self.low_included else 'above'} {self.low:g}"
        whole = float(self.low or 0).is_integer() and float(self.high).is_integer()
        if self.low_included and self.high_included and whole:
            return f"in {self.low:g}..{self.high:.0f}"
        return f"in {'[' if self.low_included else '('}{self.low:g}, {self.high:g}{']' if self.high_included else ')'}"


AT_LEAST_1 = Range(1)
POSITIVE = Range(0, low_included=False)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, high_included=False)  # momenta
SEEDS = Range(0, 2**32 - 1)


@dataclass(frozen=True)
class Option:
    """One option: ``--name-with-dashes`` on the command line, ``name`` in YAML.

    ``kind`` is int, float, str or bool, or a tuple of str (several words, each one of ``choices``);
    ``optional``: None is a value (the default resolved elsewhere); ``valid``: a numeric option's range;
    ``several``: a text option holding several of its ``choices``, kept comma-separated (one or more words
    on the command line); ``recorded``: a value the program fills in and saves, which is not an option."""

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    valid: Range | None = None
    optional: bool = False
    several: bool = False
    recorded: bool = False
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def problem(self, value: Any, why: str = "") -> str | None:
        """Why ``value`` is not valid for this option (not a number, or outside its :class:`Range`; ``why``
        follows the range), or None."""
        if self.valid is None or value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{self.flag} must be a number, got {value!r}"
        return None if value in self.valid else f"{self.flag} must be {self.valid}{why}, got {value}"


def option(default: Any, help: str, choices: tuple[str, ...] | None = None, *, valid: Range | None = None,
           several: bool = False, recorded: bool = False, metavar: str | None = None) -> Any:
    """A dataclass field that is an option (see :class:`Option` for the arguments)."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": valid, "several": several,
                                            "recorded": recorded, "metavar": metavar})


def dataclass_options(cls: type) -> list[Option]:
    """The :class:`Option` of every field of the dataclass ``cls`` declared with :func:`option`, in order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        kind = hint if typing.get_origin(hint) is tuple else (args[0] if args else hint)
        meta = f.metadata
        out.append(Option(f.name, kind, f.default, meta["help"], meta.get("choices"), meta.get("range"),
                          type(None) in typing.get_args(hint), meta.get("several", False), meta.get("recorded", False),
                          meta.get("metavar")))
    return out


def coerce_value(opt: Option, value: Any) -> Any:
    """A YAML or command-line value converted to ``opt``'s type; ValueError naming the option otherwise."""
    if value is None:
        return None
    kind = opt.kind
    problem = ValueError(f"option {opt.name.replace('_', '-')}: expected {getattr(kind, '__name__', kind)}, "
                         f"got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
        raise problem
    if kind in (int, float) and isinstance(value, bool):  # YAML's yes/no/true/false are not numbers
        raise problem
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise problem
    if opt.several:  # a YAML list or comma-separated words: kept as "a,b" in its order, without repeats
        words = value if isinstance(value, (list, tuple)) else str(value).split(",")
        return ",".join(dict.fromkeys(str(w).strip() for w in words if str(w).strip())) or "none"
    if typing.get_origin(kind) is tuple:
        return tuple(value) if isinstance(value, (list, tuple)) else tuple(str(value).split())
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise problem from None


def by_name(options: Iterable[Option]) -> dict[str, Option]:
    return {o.name: o for o in options}
