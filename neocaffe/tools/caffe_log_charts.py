"""Caffe's ``tools/extra/plot_training_log.py`` (with its ``parse_log.sh``): chart types 0-7 of one or
more logs into a PNG.

Usage: plot_training_log CHART_TYPE[0-7] /where/to/save.png /path/to/first.log ...

Chart types (y vs. x): 0 Test accuracy vs. Iters, 1 Test accuracy vs. Seconds, 2 Test loss vs. Iters,
3 Test loss vs. Seconds, 4 Train learning rate vs. Iters, 5 Train learning rate vs. Seconds, 6 Train loss
vs. Iters, 7 Train loss vs. Seconds. As Caffe's ``parse_log.sh`` does, each log's tables are also left in
the working directory as ``LOG.train`` (``#Iters Seconds TrainingLoss LearningRate``) and ``LOG.test``
(``#Iters Seconds TestAccuracy TestLoss``; "accuracy" is test output #0 and "loss" output #1, by
position, as Caffe's script takes them). Line colours and markers come from fixed cycles instead of
Caffe's random ones.
"""
from __future__ import annotations

import datetime
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from neocaffe.tools.parse_log import LogClock

__all__ = ["CHART_TYPES", "log_tables", "write_table", "plot_chart", "main"]

_FIELDS = {"Train": ["Iters", "Seconds", "Train loss", "Train learning rate"],
           "Test": ["Iters", "Seconds", "Test accuracy", "Test loss"]}
# Caffe's get_supported_chart_types: every non-x field (sorted) against each x field
CHART_TYPES = [f"{y}  vs. {x}" for y in sorted({f for fs in _FIELDS.values() for f in fs} - {"Iters", "Seconds"})
               for x in ("Iters", "Seconds")]
_RE_ITER = re.compile(r"Iteration (\d+)")
_RE_LOSS = re.compile(r"Iteration (\d+).*, loss = (\S+)")
_RE_LR = re.compile(r"Iteration \d+, lr = (\S+)")
_RE_TEST = re.compile(r"Test net output #([01]): \S+ = (\S+)")


def log_tables(lines: Sequence[str], year: int) -> tuple[list[list[str]], list[list[str]]]:
    """(train rows, test rows) of parse_log.sh, as strings: train ``[iter, seconds, loss, lr]`` from
    the ``, loss = `` and ``, lr = `` lines, test ``[iter, seconds, output #0, output #1]`` from each
    ``Testing net`` line and the outputs after it; seconds from the ``Solving`` line ('%f')."""
    clock = LogClock(year)
    start: datetime.datetime | None = None
    train: list[list[str]] = []
    lrs: list[str] = []
    test: list[list[str]] = []
    for line in lines:
        t = clock.read(line.strip())
        if start is None and "] Solving " in line:
            start = t
        secs = f"{(t - start).total_seconds():f}" if t is not None and start is not None else ""
        m = _RE_LOSS.search(line)
        if m:
            train.append([m.group(1), secs, m.group(2), ""])
            continue
        m = _RE_LR.search(line)
        if m:
            lrs.append(m.group(1))
            continue
        if "Testing net" in line and _RE_ITER.search(line):
            test.append([_RE_ITER.search(line).group(1), secs, "", ""])  # type: ignore[union-attr]
            continue
        m = _RE_TEST.search(line)
        if m and test and not test[-1][2 + int(m.group(1))]:
            test[-1][2 + int(m.group(1))] = m.group(2)
    for row, lr in zip(train, lrs):  # parse_log.sh pastes the columns side by side
        row[3] = lr
    return train, test


def write_table(rows: list[list[str]], header: str, path: Path) -> None:
    """``echo header; paste ... | column -t``: columns left-aligned, two spaces apart."""
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(len(rows[0]))] if rows else []
    with open(path, "w") as f:
        f.write(header + "\n")
        for r in rows:
            cells = [c.ljust(w) for c, w in zip(r, widths)]
            f.write("  ".join(cells).rstrip() + "\n")


def _tables_for(log: str) -> dict[str, list[list[str]]]:
    year = datetime.datetime.fromtimestamp(os.path.getctime(log)).year
    with open(log, errors="replace") as f:
        train, test = log_tables(f.readlines(), year)
    name = os.path.basename(log)
    write_table(train, "#Iters Seconds TrainingLoss LearningRate", Path(f"{name}.train"))
    write_table(test, "#Iters Seconds TestAccuracy TestLoss", Path(f"{name}.test"))
    return {"Train": train, "Test": test}


def plot_chart(chart_type: int, path_to_png: str, logs: Sequence[str]) -> None:
    """Caffe's plot_chart: one line per log, labelled by its name without ``.log``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_field, x_field = CHART_TYPES[chart_type].split("  vs. ")
    kind = y_field.split()[0]
    xi, yi = _FIELDS[kind].index(x_field), _FIELDS[kind].index(y_field)
    fig = plt.figure()
    markers = "os^vD<>ph*"
    for k, log in enumerate(logs):
        rows = _tables_for(log)[kind]
        pts = [(float(r[xi]), float(r[yi])) for r in rows if r[xi] and r[yi]]
        name = log[log.rfind("/") + 1: log.rfind(".log")]
        plt.plot([p[0] for p in pts], [p[1] for p in pts], label=name, marker=markers[k % len(markers)],
                 linewidth=0.75)
    loc = "upper right" if ("loss" in y_field or "learning rate" in y_field) else "lower right"
    plt.legend(loc=loc, ncol=1)
    plt.title(CHART_TYPES[chart_type])
    plt.xlabel(x_field)
    plt.ylabel(y_field)
    plt.savefig(path_to_png)
    plt.close(fig)


def _help() -> str:
    lines = ["Usage:", f"    ./plot_training_log.py chart_type[0-{len(CHART_TYPES) - 1}] /where/to/save.png "
             "/path/to/first.log ...", "Notes:", "    1. Supporting multiple logs.",
             '    2. Log file name must end with the lower-cased ".log".', "Supported chart types:"]
    return "\n".join(lines + [f"    {i}: {t}" for i, t in enumerate(CHART_TYPES)])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3:
        print(_help())
        return 1
    try:
        chart_type = int(args[0])
    except ValueError:
        chart_type = -1
    if not 0 <= chart_type < len(CHART_TYPES):
        print(f"{args[0]} is not a valid chart type.\n{_help()}")
        return 1
    if not args[1].endswith(".png"):
        print(f"Path must end with png: {args[1]}")
        return 1
    for log in args[2:]:
        if not os.path.exists(log):
            print(f"Path does not exist: {log}")
            return 1
        if not log.endswith(".log"):
            print(f"Log file must end in .log.\n{_help()}")
            return 1
    plot_chart(chart_type, args[1], args[2:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
