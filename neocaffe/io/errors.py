"""Errors raised by neocaffe.io: one clear line naming the file and what is wrong.

`CaffeFileError` covers binary files (.caffemodel, .binaryproto, .solverstate, their .h5 forms);
`PrototxtError` covers text files and always names ``file:line:col``.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["CaffeFileError", "CaffeFileNotFoundError", "PrototxtError", "display_name"]


def display_name(path: str | os.PathLike[str]) -> str:
    """The path as the user gave it (str), for messages."""
    return os.fspath(path)


class CaffeFileError(ValueError):
    """A Caffe file that cannot be used: ``<path>: <what> (expected ..., received ...)``."""

    def __init__(self, path: str | os.PathLike[str], what: str,
                 expected: Any = None, received: Any = None) -> None:
        self.path = display_name(path)
        self.what = what
        self.expected = expected
        self.received = received
        detail = []
        if expected is not None:
            detail.append(f"expected {expected}")
        if received is not None:
            detail.append(f"received {received}")
        message = f"{self.path}: {what}"
        if detail:
            message += " (" + ", ".join(detail) + ")"
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


class CaffeFileNotFoundError(CaffeFileError, FileNotFoundError):
    """A file named in a call or a prototxt that does not exist (also a FileNotFoundError)."""

    def __init__(self, path: str | os.PathLike[str], what: str = "no such file") -> None:
        super().__init__(path, what)
        self.filename = display_name(path)


class PrototxtError(ValueError):
    """A text-format error: ``<file>:<line>:<col>: <message>`` (``<string>`` for text sources).

    ``problems`` lists every (line, column, message) found; a file with several unknown fields or
    enum values reports them all, one ``<file>:<line>:<col>: <message>`` line each."""

    def __init__(self, filename: str, line: int | None, column: int | None, message: str,
                 problems: list[tuple[int | None, int | None, str]] | None = None) -> None:
        self.filename = filename
        self.line = line
        self.column = column
        self.message = message
        self.problems = problems if problems else [(line, column, message)]
        lines = [f"{_where(filename, ln, col)}: {msg}" for ln, col, msg in self.problems]
        if len(lines) == 1:
            super().__init__(lines[0])
        else:
            super().__init__(f"{filename}: {len(lines)} errors:\n  " + "\n  ".join(lines))


def _where(filename: str, line: int | None, column: int | None) -> str:
    where = filename
    if line is not None:
        where += f":{line}"
        if column is not None:
            where += f":{column}"
    return where
