"""User-facing errors and warnings: the CLI prints each on one line (errors then exit with status 2)."""

from __future__ import annotations

import warnings


class AmclError(ValueError):
    """A mistake in the user's input (option, file, dataset) with a message naming the fix."""


class AmclWarning(UserWarning):
    """Something the user should know about their data or options that does not stop the run."""


def warn(message: str) -> None:
    """Issue an :class:`AmclWarning` (the CLI shows it as ``amcl: warning: <message>``)."""
    warnings.warn(message, AmclWarning, stacklevel=2)
