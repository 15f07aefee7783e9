"""One error type for bad input: it names the file, the field and what was expected."""

from __future__ import annotations

from pathlib import Path


class DetflowInputError(ValueError):
    """Bad input. ``str(err)`` reads: ``<file>: <field>: expected <expected>, got <got>``.

    ``errors`` lists every problem found (one for a plain error; :meth:`combine` makes one error of
    several, whose ``str`` is one such line per problem)."""

    def __init__(self, file: str | Path | None, field: str, expected: str, got: object = None):
        self.file = str(file) if file is not None else "<input>"
        self.field = field
        self.expected = expected
        self.got = got
        self.errors: list[DetflowInputError] = [self]
        msg = f"{self.file}: {field}: expected {expected}"
        if got is not None:
            msg += f", got {got}"
        super().__init__(msg)

    @classmethod
    def combine(cls, errors: list[DetflowInputError]) -> DetflowInputError:
        """One error carrying ``errors`` (the first's file and field; every one's line in ``str``)."""
        if len(errors) == 1:
            return errors[0]
        first = errors[0]
        out = cls(first.file, first.field, first.expected, first.got)
        out.errors = [e for err in errors for e in err.errors]
        out.args = ("\n".join(str(e) for e in out.errors),)
        return out


class CorruptInputError(DetflowInputError):
    """A damaged input file (unreadable, truncated): a poison input that a data set can go on without."""


class OutputExistsError(DetflowInputError):
    """The output store already exists and overwrite was not asked for."""
