"""Errors a user can act on. The CLI prints them without a traceback unless --debug is given."""

from __future__ import annotations


class AlignlabError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class ConfigError(AlignlabError):
    """A config file or override is wrong: unknown key, wrong type, or an invalid value."""


class DataError(AlignlabError):
    """A dataset row is unusable. The message names the file, the row (or line) and the field."""

    def __init__(self, message: str, *, source: str | None = None, row: int | None = None,
                 field: str | None = None):
        self.source, self.row, self.field = source, row, field
        where = []
        if source is not None:
            where.append(str(source))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class NonFiniteLossError(AlignlabError):
    """The loss became NaN or inf; the message names the step and the batch's row ids."""
