"""The error every data source raises: one line naming the file (and the record, where there is one)."""
from __future__ import annotations

__all__ = ["DataSourceError"]


class DataSourceError(ValueError):
    """A data source that cannot be used: missing, empty, malformed (names the file and the record)."""
