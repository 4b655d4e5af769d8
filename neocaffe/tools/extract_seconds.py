"""Caffe's ``tools/extra/extract_seconds.py``: the seconds since the ``Solving`` line of every log
line that contains ``Iteration``, one ``%f`` per line.

Usage: extract_seconds INPUT_LOG OUTPUT_FILE

The year of glog's ``I1121`` prefix is the log file's (its ctime's), as Caffe takes it; unlike Caffe's
script a month smaller than the previous line's starts the next year, and a year-prefixed line
(``I20261121``, glog 0.6+) is read.
"""
from __future__ import annotations

import datetime
import os
import sys
from typing import Sequence

from neocaffe.tools.parse_log import LogClock

__all__ = ["extract_seconds", "elapsed_seconds", "main"]


def elapsed_seconds(lines: Sequence[str], year: int, where: str = "log") -> list[float]:
    """Seconds from the first ``Solving`` line to each line containing ``Iteration`` (Caffe's
    ``extract_seconds`` loop); raises ValueError naming the line when a time cannot be read."""
    clock = LogClock(year)
    start: datetime.datetime | None = None
    times: list[tuple[int, str, datetime.datetime | None]] = []
    for n, line in enumerate(lines, 1):
        t = clock.read(line.strip())
        if start is None and "Solving" in line:
            if t is None:
                raise ValueError(f"{where}:{n}: unexpected line, no glog time: {line.strip()!r}")
            start = t
        if "Iteration" in line:
            times.append((n, line, t))
    if start is None:
        raise ValueError(f"{where}: start time not found (no 'Solving' line)")
    out = []
    for n, line, t in times:
        if t is None:
            raise ValueError(f"{where}:{n}: unexpected line, no glog time: {line.strip()!r}")
        out.append((t - start).total_seconds())
    return out


def extract_seconds(input_file: str, output_file: str) -> list[float]:
    """Write ``elapsed_seconds`` of ``input_file`` to ``output_file`` as Caffe does ('%f' lines)."""
    with open(input_file, errors="replace") as f:
        lines = f.readlines()
    year = datetime.datetime.fromtimestamp(os.path.getctime(input_file)).year
    seconds = elapsed_seconds(lines, year, input_file)
    with open(output_file, "w") as out:
        out.writelines(f"{s:f}\n" for s in seconds)
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print("Usage: ./extract_seconds input_file output_file")
        return 1
    try:
        extract_seconds(args[0], args[1])
    except ValueError as e:
        print(f"extract_seconds: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
