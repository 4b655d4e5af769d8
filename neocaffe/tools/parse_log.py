"""Parse a Caffe (or neocaffe) training log into train and test rows, as Caffe's
``tools/extra/parse_log.py`` does: one row per iteration with the learning rate and every
``Train net output`` / ``Test net output`` value.

Usage: parse_log LOGFILE [OUTPUT_DIR]   ->  LOGFILE.train and LOGFILE.test (CSV)
"""
from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

RE_ITERATION = re.compile(r"Iteration (\d+)")
RE_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
RE_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
RE_LR = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
RE_TIME = re.compile(r"^[IWEF](\d{4} \d{2}:\d{2}:\d{2}\.\d+)")


def parse_log(text: str) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """(train rows, test rows); each row has NumIters, LearningRate and the named outputs."""
    train: dict[int, dict[str, float]] = {}
    test: dict[int, dict[str, float]] = {}
    iteration = -1
    lr = float("nan")
    for line in text.splitlines():
        m = RE_ITERATION.search(line)
        if m:
            iteration = int(m.group(1))
        if iteration < 0:
            continue
        m = RE_LR.search(line)
        if m:
            lr = float(m.group(1))
        for regex, rows in ((RE_TRAIN_OUTPUT, train), (RE_TEST_OUTPUT, test)):
            m = regex.search(line)
            if m:
                row = rows.setdefault(iteration, {"NumIters": float(iteration), "LearningRate": lr})
                row[m.group(2)] = float(m.group(3))
    rows = [train[k] for k in sorted(train)], [test[k] for k in sorted(test)]
    for part in rows:  # Caffe's fix_initial_nan_learning_rate: lr is logged after iteration 0's outputs
        first = next((r["LearningRate"] for r in part if r["LearningRate"] == r["LearningRate"]), None)
        for r in part:
            if r["LearningRate"] != r["LearningRate"] and first is not None:
                r["LearningRate"] = first
    return rows


def _write(rows: list[dict[str, float]], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logfile_path")
    ap.add_argument("output_dir", nargs="?", default=None)
    args = ap.parse_args(argv)
    log = Path(args.logfile_path)
    if not log.is_file():
        ap.error(f"{log}: no such log file")
    train, test = parse_log(log.read_text(errors="replace"))
    out = Path(args.output_dir) if args.output_dir else log.parent
    _write(train, out / f"{log.name}.train")
    _write(test, out / f"{log.name}.test")
    print(f"{log}: {len(train)} train rows, {len(test)} test rows -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
