"""Plot a training log: train loss and test loss/accuracy against iterations, into one PNG.

Usage: plot_training_log LOGFILE OUT.png
       plot_training_log CHART_TYPE[0-7] OUT.png LOG.log ...   (Caffe's tools/extra/plot_training_log.py;
                                                                 see neocaffe.tools.caffe_log_charts)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neocaffe.tools import caffe_log_charts

from neocaffe.tools.parse_log import parse_log


def plot(log_text: str, out: str | Path, title: str = "") -> Path:
    """Write the plot of ``log_text`` to ``out`` (PNG) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, test = parse_log(log_text)
    fig, ax = plt.subplots(figsize=(8, 5))
    if train:
        key = "loss" if "loss" in train[0] else [k for k in train[0] if k not in ("NumIters", "LearningRate")][0]
        ax.plot([r["NumIters"] for r in train], [r.get(key, float("nan")) for r in train], label=f"train {key}")
    for key in ([k for k in test[0] if k not in ("NumIters", "LearningRate")] if test else []):
        if "loss" in key:
            ax.plot([r["NumIters"] for r in test], [r.get(key, float("nan")) for r in test], "--", label=f"test {key}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    acc_keys = [k for k in (test[0] if test else {}) if "acc" in k]
    if acc_keys:
        ax2 = ax.twinx()
        for key in acc_keys:
            ax2.plot([r["NumIters"] for r in test], [r.get(key, float("nan")) for r in test], "g-o", ms=3,
                     label=f"test {key}")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    if given and given[0].isdigit() and not Path(given[0]).is_file():  # Caffe's form: a chart type first
        return caffe_log_charts.main(given)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logfile")
    ap.add_argument("output_png")
    args = ap.parse_args(given)
    log = Path(args.logfile)
    if not log.is_file():
        ap.error(f"{log}: no such log file")
    path = plot(log.read_text(errors="replace"), args.output_png, title=log.name)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
