"""What the forks' parsed-but-not-applied field warnings share (:mod:`neocaffe.graph.nvcaffe`,
:mod:`neocaffe.graph.intelcaffe`)."""
from __future__ import annotations

from typing import Sequence


def layers_shown(names: Sequence[str], most: int = 3) -> str:
    """``'a', 'b', 'c' and 4 more``: the first ``most`` layer names of a warning, then how many others."""
    shown = ", ".join(f"'{n}'" for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


__all__ = ["layers_shown"]
