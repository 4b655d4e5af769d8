#!/usr/bin/env python3
"""Caffe's tools/extra/parse_log.py: LOGFILE OUTPUT_DIR [--verbose] [--delimiter D] -> OUTPUT_DIR/LOGFILE.train
and OUTPUT_DIR/LOGFILE.test (CSV: NumIters,Seconds,LearningRate,<outputs>).

Kept at Caffe's path so scripts written for Caffe run unchanged from a neocaffe checkout; runs
neocaffe.tools.parse_log. Importing it (``sys.path.append('tools/extra'); import parse_log``) gives Caffe's
``parse_log(path_to_log)`` and ``save_csv_files(...)``."""
import datetime
import os
import sys
from pathlib import Path

try:
    import neocaffe.tools.parse_log as tool
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    import neocaffe.tools.parse_log as tool


def parse_log(path_to_log):
    """(train_dict_list, test_dict_list) of the log at ``path_to_log``, as Caffe's parse_log returns."""
    year = datetime.datetime.fromtimestamp(os.path.getctime(path_to_log)).year
    with open(path_to_log, errors="replace") as f:
        return tool.parse_log(f.read(), year=year, seconds=True)


def save_csv_files(logfile_path, output_dir, train_dict_list, test_dict_list, delimiter=",", verbose=False):
    """OUTPUT_DIR/<log name>.train and .test, as Caffe's save_csv_files writes them."""
    name = os.path.basename(logfile_path)
    for rows, suffix in ((train_dict_list, "train"), (test_dict_list, "test")):
        tool.write_csv(rows, Path(output_dir) / f"{name}.{suffix}", delimiter)
        if verbose:
            print(f"Wrote {os.path.join(output_dir, name + '.' + suffix)}")


if __name__ == "__main__":
    sys.exit(tool.main(sys.argv[1:]))
