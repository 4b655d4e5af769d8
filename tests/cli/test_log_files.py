"""glog's log files in ``GLOG_log_dir`` (neocaffe/cli/log_files.py): one per severity, opened at its
first line, with glog's header and links; none without the variable or with ``GLOG_logtostderr``."""
from __future__ import annotations

import logging
import os

import pytest

from neocaffe.cli import log as cli_log
from neocaffe.cli.log_files import program_name


def test_program_name():
    assert program_name("/a/build/tools/caffe.bin") == "caffe.bin" and program_name("/x/caffe.py") == "caffe"
    assert program_name("/usr/bin/convert_imageset") == "convert_imageset"


@pytest.fixture
def glog_env(monkeypatch, tmp_path):
    for name in ("GLOG_log_dir", "GLOG_logtostderr", "GLOG_minloglevel", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.argv", ["/x/build/tools/convert_imageset.bin"])
    return tmp_path


def _log_through_setup(*records: tuple[int, str]) -> None:
    handler = cli_log.setup()
    try:
        log = logging.getLogger("neocaffe.tests.glog")
        for level, msg in records:
            log.log(level, msg)
    finally:
        cli_log.teardown(handler)


def test_log_files_by_severity(glog_env, monkeypatch, capsys):
    monkeypatch.setenv("GLOG_log_dir", str(glog_env))
    _log_through_setup((logging.INFO, "first"), (logging.WARNING, "careful"), (logging.INFO, "second"))
    names = {p.name for p in glog_env.iterdir()}
    assert {"convert_imageset.bin.INFO", "convert_imageset.bin.WARNING"} <= names
    assert "convert_imageset.bin.ERROR" not in names          # opened at its severity's first line only
    info = (glog_env / "convert_imageset.bin.INFO").read_text().splitlines()[3:]
    assert [line.split("] ", 1)[1] for line in info] == ["first", "careful", "second"]
    assert [line[0] for line in info] == ["I", "W", "I"]
    warning = (glog_env / "convert_imageset.bin.WARNING").read_text().splitlines()[3:]
    assert [line.split("] ", 1)[1] for line in warning] == ["careful"]
    assert os.readlink(glog_env / "convert_imageset.bin.INFO").startswith(
        f"convert_imageset.bin.{os.uname().nodename}.")
    assert "careful" in capsys.readouterr().err
    # the handlers are gone after teardown: nothing more is written
    before = (glog_env / "convert_imageset.bin.INFO").read_text()
    logging.getLogger("neocaffe.tests.glog").error("after")
    assert (glog_env / "convert_imageset.bin.INFO").read_text() == before


def test_no_files_without_log_dir_or_with_logtostderr(glog_env, monkeypatch):
    _log_through_setup((logging.ERROR, "x"))
    assert list(glog_env.iterdir()) == []
    monkeypatch.setenv("GLOG_log_dir", str(glog_env))
    monkeypatch.setenv("GLOG_logtostderr", "1")
    _log_through_setup((logging.ERROR, "x"))
    assert list(glog_env.iterdir()) == []


def test_only_rank_0_of_a_data_parallel_run_writes_files(glog_env, monkeypatch):
    monkeypatch.setenv("GLOG_log_dir", str(glog_env))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    _log_through_setup((logging.WARNING, "rank 1"))
    assert list(glog_env.iterdir()) == []
    monkeypatch.setenv("RANK", "0")
    _log_through_setup((logging.INFO, "rank 0"))
    assert "rank 0" in (glog_env / "convert_imageset.bin.INFO").read_text()


def test_minloglevel_applies_to_files(glog_env, monkeypatch):
    monkeypatch.setenv("GLOG_log_dir", str(glog_env))
    monkeypatch.setenv("GLOG_minloglevel", "1")
    _log_through_setup((logging.INFO, "quiet"), (logging.ERROR, "loud"))
    info = (glog_env / "convert_imageset.bin.INFO").read_text()
    assert "loud" in info and "quiet" not in info
    assert "loud" in (glog_env / "convert_imageset.bin.ERROR").read_text()


def test_missing_log_dir_is_reported_once_and_logging_goes_on(glog_env, monkeypatch, capsys):
    missing = glog_env / "nowhere"
    monkeypatch.setenv("GLOG_log_dir", str(missing))
    _log_through_setup((logging.INFO, "a"), (logging.INFO, "b"))
    err = capsys.readouterr().err
    assert err.count("COULD NOT CREATE LOGFILE") == 1 and f"GLOG_log_dir='{missing}'" in err
    assert "] a" in err and "] b" in err
