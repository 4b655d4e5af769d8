"""Parse a Caffe (or neocaffe) training log into train and test rows, as Caffe's
``tools/extra/parse_log.py`` does: one row per iteration with the seconds since the solver started,
the learning rate and every ``Train net output`` / ``Test net output`` value.

Usage: parse_log [--verbose] [--delimiter D] LOGFILE [OUTPUT_DIR]   ->  LOGFILE.train and LOGFILE.test (CSV), columns
``NumIters,Seconds,LearningRate,<outputs>`` as Caffe's.

Seconds are counted, as in Caffe's ``extract_seconds.py``, from the glog timestamp of the ``Solving``
line (the first timestamped line when there is none) to that of the row's first output line. glog's
``I1121`` prefix carries no year: it is the log file's (its ctime's, as Caffe takes it), and a month
smaller than the previous line's starts the next year. A ``I20261121`` prefix (glog 0.6+, whose
year Caffe's script cannot read) gives its own year.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import re
from pathlib import Path

RE_ITERATION = re.compile(r"Iteration (\d+)")
RE_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
RE_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
RE_LR = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
# glog prefix: severity, [year] month day, time with microseconds
RE_TIME = re.compile(r"^\s*[IWEF](\d{4})?(\d{2})(\d{2}) (\d{1,2}):(\d{2}):(\d{2})\.(\d{1,6})\b")

class LogClock:
    """Datetimes of glog lines read in order, carrying the year across a year end."""

    def __init__(self, year: int) -> None:
        self.year = year
        self.last_month = 0

    def read(self, line: str) -> datetime.datetime | None:
        m = RE_TIME.match(line)
        if not m:
            return None
        year, month, day, hour, minute, second, micros = m.groups()
        month_n = int(month)
        if year is not None:
            self.year = int(year)
        elif month_n < self.last_month:
            self.year += 1
        try:
            t = datetime.datetime(self.year, month_n, int(day), int(hour), int(minute), int(second), int(micros))
        except ValueError:  # not a date: not a glog line
            return None
        self.last_month = month_n
        return t


def parse_log(text: str, year: int | None = None,
              seconds: bool = False) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """(train rows, test rows); each row has NumIters, LearningRate and the named outputs. With
    ``seconds``, Caffe's Seconds column follows NumIters (NaN for a row whose line has no glog time);
    ``year`` is the year of lines whose prefix has none (default: this year)."""
    train: dict[int, dict[str, float]] = {}
    test: dict[int, dict[str, float]] = {}
    times: dict[tuple[str, int], datetime.datetime | None] = {}  # each row's first line
    clock = LogClock(datetime.date.today().year if year is None else int(year))
    start: datetime.datetime | None = None  # the "Solving" line (else the first timestamped line)
    solving = False
    iteration = -1
    lr = float("nan")
    for line in text.splitlines():
        t = clock.read(line)
        if t is not None and not solving and (start is None or "Solving" in line):
            start, solving = t, "Solving" in line
        m = RE_ITERATION.search(line)
        if m:
            iteration = int(m.group(1))
        if iteration < 0:
            continue
        m = RE_LR.search(line)
        if m:
            lr = float(m.group(1))
        for kind, regex, rows in (("train", RE_TRAIN_OUTPUT, train), ("test", RE_TEST_OUTPUT, test)):
            m = regex.search(line)
            if m:
                if iteration not in rows:
                    rows[iteration] = {"NumIters": float(iteration), "LearningRate": lr}
                    times[kind, iteration] = t
                rows[iteration][m.group(2)] = float(m.group(3))
    result: tuple[list[dict[str, float]], list[dict[str, float]]] = ([], [])
    for kind, rows, part in (("train", train, result[0]), ("test", test, result[1])):
        for k in sorted(rows):
            row = rows[k]
            if seconds:
                t = times[kind, k]
                secs = (t - start).total_seconds() if t is not None and start is not None else float("nan")
                row = {"NumIters": row.pop("NumIters"), "Seconds": secs, **row}
            part.append(row)
        # Caffe's fix_initial_nan_learning_rate: lr is logged after iteration 0's outputs
        known = next((r["LearningRate"] for r in part if r["LearningRate"] == r["LearningRate"]), None)
        for r in part:
            if r["LearningRate"] != r["LearningRate"] and known is not None:
                r["LearningRate"] = known
    return result


def write_csv(rows: list[dict[str, float]], path: Path, delimiter: str = ",") -> None:
    """Caffe's ``write_csv``: a header of every column, then the rows (csv.excel, ``delimiter``)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logfile_path")
    ap.add_argument("output_dir", nargs="?", default=None)
    ap.add_argument("--verbose", action="store_true", help="Print the output file names")
    ap.add_argument("--delimiter", default=",", help="Column delimiter in output files (default: ',')")
    args = ap.parse_args(argv)
    log = Path(args.logfile_path)
    if not log.is_file():
        ap.error(f"{log}: no such log file")
    year = datetime.datetime.fromtimestamp(os.path.getctime(log)).year  # Caffe's get_log_created_year
    train, test = parse_log(log.read_text(errors="replace"), year=year, seconds=True)
    out = Path(args.output_dir) if args.output_dir else log.parent
    for rows, suffix in ((train, "train"), (test, "test")):
        write_csv(rows, out / f"{log.name}.{suffix}", args.delimiter)
        if args.verbose:
            print(f"Wrote {out / f'{log.name}.{suffix}'}")
    print(f"{log}: {len(train)} train rows, {len(test)} test rows -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
