"""One error type for bad input: it names the file, the field and what was expected."""

from __future__ import annotations

from pathlib import Path


class DetflowInputError(ValueError):
    """Bad input. ``str(err)`` reads: ``<file>: <field>: expected <expected>, got <got>``."""

    def __init__(self, file: str | Path | None, field: str, expected: str, got: object = None):
        self.file = str(file) if file is not None else "<input>"
        self.field = field
        self.expected = expected
        self.got = got
        msg = f"{self.file}: {field}: expected {expected}"
        if got is not None:
            msg += f", got {got}"
        super().__init__(msg)


class CorruptInputError(DetflowInputError):
    """A damaged input file (unreadable, truncated): a poison input that a data set can go on without."""


class OutputExistsError(DetflowInputError):
    """The output store already exists and overwrite was not asked for."""
