"""parse_log against Caffe 1.0's tools/extra/parse_log.py (ported below, Python 3): same CSV files,
Seconds column included, on Caffe's own training log and across a year end."""
from __future__ import annotations

import csv
import datetime
import os
import re
from collections import OrderedDict
from pathlib import Path

import pytest

from neocaffe.tools.parse_log import main, parse_log
from tests.conftest import shared_path


def _caffe_datetime(line, year):  # extract_seconds.extract_datetime_from_line
    line = line.strip().split()
    month, day = int(line[0][1:3]), int(line[0][3:])
    timestamp = line[1]
    pos = timestamp.rfind(".")
    hour, minute, second = (int(x) for x in timestamp[:pos].split(":"))
    return datetime.datetime(year, month, day, hour, minute, second, int(timestamp[pos + 1:]))


def _caffe_output(regex_obj, row, row_dict_list, line, iteration, seconds, learning_rate):
    output_match = regex_obj.search(line)
    if output_match:
        if not row or row["NumIters"] != iteration:
            if row:
                row_dict_list.append(row)
            row = OrderedDict([("NumIters", iteration), ("Seconds", seconds), ("LearningRate", learning_rate)])
        row[output_match.group(2)] = float(output_match.group(3))
    if row and len(row_dict_list) >= 1 and len(row) == len(row_dict_list[0]):
        row_dict_list.append(row)
        row = None
    return row_dict_list, row


def caffe_parse_log(path_to_log):
    """tools/extra/parse_log.py's parse_log (Caffe 1.0) with extract_seconds' helpers."""
    regex_iteration = re.compile(r"Iteration (\d+)")
    regex_train_output = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
    regex_test_output = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
    regex_learning_rate = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
    iteration, learning_rate = -1, float("NaN")
    train_dict_list, test_dict_list, train_row, test_row = [], [], None, None
    logfile_year = datetime.datetime.fromtimestamp(os.path.getctime(path_to_log)).year
    with open(path_to_log) as f:
        start_time = None
        for line in f:  # get_start_time
            if line.strip().find("Solving") != -1:
                start_time = _caffe_datetime(line.strip(), logfile_year)
                break
        last_time = start_time
        for line in f:
            iteration_match = regex_iteration.search(line)
            if iteration_match:
                iteration = float(iteration_match.group(1))
            if iteration == -1:
                continue
            try:
                time = _caffe_datetime(line, logfile_year)
            except ValueError:
                continue
            if time.month < last_time.month:
                logfile_year += 1
                time = _caffe_datetime(line, logfile_year)
            last_time = time
            seconds = (time - start_time).total_seconds()
            learning_rate_match = regex_learning_rate.search(line)
            if learning_rate_match:
                learning_rate = float(learning_rate_match.group(1))
            train_dict_list, train_row = _caffe_output(regex_train_output, train_row, train_dict_list, line,
                                                       iteration, seconds, learning_rate)
            test_dict_list, test_row = _caffe_output(regex_test_output, test_row, test_dict_list, line,
                                                     iteration, seconds, learning_rate)
    for dict_list in (train_dict_list, test_dict_list):  # fix_initial_nan_learning_rate
        if len(dict_list) > 1:
            dict_list[0]["LearningRate"] = dict_list[1]["LearningRate"]
    return train_dict_list, test_dict_list


def _caffe_csv(rows, path):  # write_csv
    with open(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=rows[0].keys(), dialect=csv.excel)
        w.writeheader()
        w.writerows(rows)
    return Path(path).read_bytes()


def _compare(log: Path, out: Path) -> tuple[bytes, bytes]:
    out.mkdir(exist_ok=True)
    assert main([str(log), str(out)]) == 0
    train, test = caffe_parse_log(str(log))
    assert (out / f"{log.name}.train").read_bytes() == _caffe_csv(train, out / "caffe.train")
    assert (out / f"{log.name}.test").read_bytes() == _caffe_csv(test, out / "caffe.test")
    return (out / f"{log.name}.train").read_bytes(), (out / f"{log.name}.test").read_bytes()


def test_caffes_own_log_gives_caffes_csv_files(tmp_path):
    real = shared_path("fixtures", "logs", "train_binary.log")
    # the reference build's glog (0.6+) writes the year (I20261121), which Caffe's script cannot read;
    # without it (glog < 0.6, and neocaffe's lines) both parsers read the log
    classic = tmp_path / "train_binary.log"
    classic.write_text(re.sub(r"(?m)^([IWEF])\d{4}(\d{4} )", r"\1\2", real.read_text()))
    train, test = _compare(classic, tmp_path / "classic")
    assert train.decode().splitlines()[:2] == ["NumIters,Seconds,LearningRate,loss", "0.0,0.010924,0.002,1.46558"]
    assert test.decode().splitlines()[:2] == ["NumIters,Seconds,LearningRate,accuracy,loss",
                                              "0.0,0.005884,0.002,0.333333,1.41684"]
    # the year-prefixed original gives the same files
    assert main([str(real), str(tmp_path)]) == 0
    assert (tmp_path / "train_binary.log.train").read_bytes() == train
    assert (tmp_path / "train_binary.log.test").read_bytes() == test


def test_seconds_carry_across_the_year_end(tmp_path):
    log = tmp_path / "newyear.log"
    log.write_text(
        "I1231 23:59:58.500000  7 solver.py:1] Solving Net\n"
        "I1231 23:59:59.000000  7 solver.py:2] Iteration 0, Testing net (#0)\n"
        "I1231 23:59:59.250000  7 solver.py:3]     Test net output #0: accuracy = 0.5\n"
        "I0101 00:00:01.000000  7 solver.py:4] Iteration 0, loss = 2\n"
        "I0101 00:00:01.000001  7 solver.py:5]     Train net output #0: loss = 2 (* 1 = 2 loss)\n"
        "I0101 00:00:01.000002  7 solver.py:6] Iteration 0, lr = 0.01\n"
        "I0101 00:00:02.500000  7 solver.py:7] Iteration 1, loss = 1\n"
        "I0101 00:00:02.500001  7 solver.py:8]     Train net output #0: loss = 1 (* 1 = 1 loss)\n"
        "I0101 00:00:03.000000  7 solver.py:9] Iteration 2, Testing net (#0)\n"
        "I0101 00:00:03.750000  7 solver.py:10]     Test net output #0: accuracy = 1\n"
    )
    train, test = _compare(log, tmp_path / "out")
    assert train.decode().splitlines() == ["NumIters,Seconds,LearningRate,loss", "0.0,2.500001,0.01,2.0",
                                           "1.0,4.000001,0.01,1.0"]
    assert test.decode().splitlines() == ["NumIters,Seconds,LearningRate,accuracy", "0.0,0.75,0.01,0.5",
                                          "2.0,5.25,0.01,1.0"]
    rows = parse_log(log.read_text(), year=2023, seconds=True)[0]
    assert [r["Seconds"] for r in rows] == [2.500001, 4.000001]


@pytest.mark.parametrize("seconds", [False, True])
def test_rows_without_seconds_unless_asked(seconds):
    text = ("I1121 21:49:00.000000 1 solver.py:1] Iteration 30, Testing net (#0)\n"
            "I1121 21:49:00.500000 1 solver.py:1]     Test net output #0: accuracy = 0.75\n")
    (row,) = parse_log(text, seconds=seconds)[1]
    assert list(row) == (["NumIters", "Seconds", "LearningRate", "accuracy"] if seconds else
                         ["NumIters", "LearningRate", "accuracy"])
    if seconds:
        assert row["Seconds"] == 0.5  # no Solving line: counted from the first line
