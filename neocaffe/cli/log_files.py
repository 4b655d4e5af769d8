"""glog's log files, written when ``GLOG_log_dir`` is set (as Caffe's tools write them there).

Caffe's tools log to stderr and, through glog, to one file per severity in ``GLOG_log_dir``::

    <dir>/<program>.<host>.<user>.log.INFO.<yyyymmdd-hhmmss>.<pid>     every line
    <dir>/<program>.<host>.<user>.log.WARNING.<...>                   W, E and F lines
    <dir>/<program>.<host>.<user>.log.ERROR.<...>                     E and F lines
    <dir>/<program>.<host>.<user>.log.FATAL.<...>                     F lines
    <dir>/<program>.INFO -> <the INFO file's name>                     (and .WARNING, .ERROR, .FATAL)

each opened at its severity's first line, with glog's three header lines, so scripts that read
``$GLOG_log_dir/caffe.INFO`` (``parse_log.py``, ``plot_training_log.py``, the fork's ``train.info``
readers) find it. ``GLOG_logtostderr=1`` writes no file, as glog. Unlike glog, nothing is written when
``GLOG_log_dir`` is unset (glog then writes to ``/tmp``). ``<program>`` is the name the tool was run
by (``caffe``, ``caffe.bin``, ``convert_imageset``, ...). In data-parallel training (one process per GPU
under torchrun, where Caffe runs one process) only rank 0 writes files, so ``caffe.INFO`` is its log.
"""
from __future__ import annotations

import getpass
import logging
import os
import socket
import sys
import threading
import time
from typing import TextIO

__all__ = ["GlogFileHandler", "file_handlers", "program_name"]

_SEVERITIES = (("INFO", logging.DEBUG), ("WARNING", logging.WARNING), ("ERROR", logging.ERROR),
               ("FATAL", logging.CRITICAL))
_TRUE = {"1", "true", "t", "yes", "y"}


def program_name(argv0: str | None = None) -> str:
    """glog's short program name: the last path component of ``argv[0]`` (``.py`` dropped)."""
    name = os.path.basename(sys.argv[0] if argv0 is None else argv0) or "python"
    return name[:-3] if name.endswith(".py") else name


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "invalid-user"


class GlogFileHandler(logging.Handler):
    """One severity's log file in ``folder``, opened at its first record; a file that cannot be made
    is reported once on stderr and logging goes on without it (as glog)."""

    def __init__(self, folder: str, program: str, severity: str, level: int, formatter: logging.Formatter) -> None:
        super().__init__(level)
        self.setFormatter(formatter)
        self.folder, self.program, self.severity = folder, program, severity
        self.path: str | None = None
        self._file: TextIO | None = None
        self._failed = False

    def _open(self, created: float) -> TextIO | None:
        if self._file is not None or self._failed:
            return self._file
        t = time.localtime(created)
        host = socket.gethostname() or "(unknown)"
        stamp = time.strftime("%Y%m%d-%H%M%S", t)
        name = f"{self.program}.{host}.{_user()}.log.{self.severity}.{stamp}.{os.getpid()}"
        path = os.path.join(self.folder, name)
        try:
            f = open(path, "a", encoding="utf-8", errors="surrogateescape")
        except OSError as e:
            self._failed = True
            sys.stderr.write(f"Could not create log file in GLOG_log_dir={self.folder!r}: {e.strerror or e}\n"
                             f"COULD NOT CREATE LOGFILE '{path}'!\n")
            return None
        f.write(f"Log file created at: {time.strftime('%Y/%m/%d %H:%M:%S', t)}\n"
                f"Running on machine: {host}\n"
                "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg\n")
        link = os.path.join(self.folder, f"{self.program}.{self.severity}")
        try:
            if os.path.islink(link) or os.path.exists(link):
                os.unlink(link)
            os.symlink(name, link)
        except OSError:
            pass  # glog goes on without its link too
        self.path, self._file = path, f
        return f

    def emit(self, record: logging.LogRecord) -> None:
        if not hasattr(record, "native_tid"):
            record.native_tid = threading.get_native_id()  # type: ignore[attr-defined]
        try:
            with self.lock:  # type: ignore[union-attr]
                f = self._open(record.created)
                if f is not None:
                    f.write(self.format(record) + "\n")
                    f.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._file is not None:
                self._file.close()
                self._file = None
        super().close()


def file_handlers(formatter: logging.Formatter, environ: dict[str, str] | None = None,
                  program: str | None = None) -> list[GlogFileHandler]:
    """The INFO/WARNING/ERROR/FATAL file handlers ``GLOG_log_dir`` asks for (none when it is unset or empty,
    ``GLOG_logtostderr`` is true, or in a data-parallel worker of rank > 0)."""
    env = os.environ if environ is None else environ
    folder = env.get("GLOG_log_dir", "")
    if not folder or env.get("GLOG_logtostderr", "").strip().lower() in _TRUE:
        return []
    if "WORLD_SIZE" in env and env.get("RANK", "0") != "0":  # a data-parallel worker other than rank 0
        return []
    name = program_name() if program is None else program
    return [GlogFileHandler(folder, name, severity, level, formatter) for severity, level in _SEVERITIES]
