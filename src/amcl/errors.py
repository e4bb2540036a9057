"""User-facing errors, warnings and interruptions: the CLI prints each on one line (errors then exit with status
2, a run stopped by a signal with 128 + the signal)."""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Any, Iterator


class AmclError(ValueError):
    """A mistake in the user's input (option, file, dataset) with a message naming the fix."""


class WriteError(AmclError):
    """A file could not be written (full disk, no permission): the message names the file, the space it needs
    on a full disk, and that an older version of it is kept."""


class RunInterrupted(Exception):
    """A run stopped by SIGINT or SIGTERM at a step boundary. The CLI prints it on one line and exits with
    ``128 + signal`` (130 for SIGINT, 143 for SIGTERM), as a shell reports a process ended by that signal.

    ``where`` says where the run stopped and what its checkpoint holds; ``continue_with`` is the command
    that continues it (a ``--runs`` series or a compare grid replace a single run's).
    """

    def __init__(self, signal_number: int, where: str, continue_with: str, report: bool = True) -> None:
        import signal

        self.signal_number = signal_number
        self.signal_name = signal.Signals(signal_number).name
        self.where, self.continue_with, self.report = where, continue_with, report
        super().__init__(f"interrupted by {self.signal_name} {where}; continue with {continue_with}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signal_number

    def continued_by(self, command: str) -> RunInterrupted:
        """The same interruption with another command to continue it."""
        return RunInterrupted(self.signal_number, self.where, command, self.report)


class AmclWarning(UserWarning):
    """Something the user should know about their data or options that does not stop the run."""


def warn(message: str) -> None:
    """Issue an :class:`AmclWarning` (the CLI shows it as ``amcl: warning: <message>``)."""
    warnings.warn(message, AmclWarning, stacklevel=2)


def _show_on_one_line(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                      line: str | None = None) -> None:
    """A warning as one line: ``amcl: warning: <message>`` for ours; a library's (e.g. matplotlib's) with its
    category, and without the file path and source line Python would add."""
    text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    kind = "" if issubclass(category, AmclWarning) else f" ({category.__name__})"
    print(f"amcl: warning{kind}: {text}", file=file or sys.stderr)


@contextlib.contextmanager
def warnings_on_one_line() -> Iterator[None]:
    """Within the block, every warning that reaches the user is printed on one line (see the CLI)."""
    shown = warnings.showwarning
    warnings.showwarning = _show_on_one_line
    try:
        yield
    finally:
        warnings.showwarning = shown
