"""Errors raised for unreadable or malformed data files."""

from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """A data file is missing, empty or malformed.

    ``path`` names the file, ``line`` the 1-based line (``None`` when the problem is not one
    line, e.g. an empty file) and ``column`` the offending column's name where there is one.
    """

    def __init__(
        self,
        path: str | Path,
        message: str,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.column = column
        self.reason = message
        where = self.path if line is None else f"{self.path}, line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # keeps the fields when pickled (e.g. out of a worker process)
        return type(self), (self.path, self.reason, self.line, self.column)


class DataFileNotFoundError(DataFormatError, FileNotFoundError):
    """A configured data file does not exist (also a `FileNotFoundError`)."""
