"""Errors that an entry point reports as one line (no traceback)."""


class UserError(Exception):
    """Bad input from the user: unknown name, bad value, missing file.

    Entry points catch it (see `keras_sharpness.cli.run`) and print
    ``error: <message>`` on one line before exiting with status 2.
    """


class DataError(UserError):
    """A data source is unknown, malformed or cannot be reached."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, or belongs to another run."""
