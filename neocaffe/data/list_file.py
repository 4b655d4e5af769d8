"""The whitespace-separated list files the video forks' data layers read (C3D's clip and volume lists, TSN's
frame-folder list): their non-blank lines as tokens, with line numbers for the errors."""
from __future__ import annotations

from neocaffe.data.datum import DatumError


def token_lines(path: str, what: str, noun: str) -> list[tuple[int, list[str], str]]:
    """``(line number, tokens, text)`` of each non-blank line of the list ``path`` (read by the field ``what``);
    a file that cannot be read is a DatumError naming the field, the path and the ``noun`` list."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DatumError(f"{what} '{path}': cannot read the {noun} list ({e.strerror or e})") from None
    return [(i, tok, text) for i, text in enumerate(lines, 1) if (tok := text.split())]


__all__ = ["token_lines"]
