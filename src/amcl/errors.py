"""User-facing errors: the CLI prints their message on one line and exits with status 2."""


class AmclError(ValueError):
    """A mistake in the user's input (option, file, dataset) with a message naming the fix."""
