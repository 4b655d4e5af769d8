"""The fork's ``plot_train_info.py``: plot log10(1 - test accuracy #0) of a training log into
``accu.png`` beside it.

Usage: plot_train_info --traininfo RUN/train.info
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

RE_ACC = re.compile(r"Test net output #0: accuracy = ([-+0-9.eE]+)")


def test_errors(text: str) -> list[float]:
    """1 - accuracy for every test pass, in order."""
    return [1.0 - float(m.group(1)) for m in RE_ACC.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traininfo", required=True)
    args = ap.parse_args(argv)
    info = Path(args.traininfo)
    if not info.is_file():
        ap.error(f"{info}: no such file")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    errors = test_errors(info.read_text(errors="replace"))
    print(errors)
    fig, ax = plt.subplots()
    ax.plot([math.log10(max(e, 1e-12)) for e in errors], marker="o")
    ax.set_xlabel("test pass")
    ax.set_ylabel("log10(top-1 error)")
    ax.set_title(info.parent.name)
    out = info.parent / "accu.png"
    fig.savefig(out)
    plt.close(fig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
