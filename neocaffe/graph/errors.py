"""The graph package's error: a net that cannot be built or run as configured."""
from __future__ import annotations


class NetError(ValueError):
    """The net cannot be built or run as configured; the message names the file (and line), the
    layer and what was received and expected."""


__all__ = ["NetError"]
