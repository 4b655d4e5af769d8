"""glog-format logging for the command-line tools.

Every record of the ``neocaffe`` loggers is written to stderr the way glog writes Caffe's lines::

    I1121 21:49:00.123456  1234 solver.py:42] Iteration 20, loss = 0.5

(severity letter, month and day, wall-clock time to the microsecond, thread id, source file:line),
so Caffe's ``parse_log.py``, ``plot_training_log.py`` and the fork's scripts read neocaffe logs as they
read Caffe's. ``GLOG_minloglevel`` (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL) is honoured, and
``GLOG_log_dir`` adds glog's per-severity log files there (``neocaffe.cli.log_files``).

A one-line progress bar is drawn under the log only when stderr is an interactive terminal; it is
cleared before each log line and redrawn after it, so captured logs never contain it.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, TextIO

from neocaffe.cli.log_files import file_handlers

__all__ = ["GlogFormatter", "GlogHandler", "setup", "teardown", "glog_to_stderr", "run_logged", "Progress"]

_LETTERS = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E", logging.CRITICAL: "F"}
_MIN_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}


def glog_prefix(levelno: int, created: float, filename: str, lineno: int, tid: int | None = None) -> str:
    """``I1121 21:49:00.123456  1234 file.py:42] `` for a record made at ``created``."""
    letter = _LETTERS.get(levelno, "I" if levelno < logging.WARNING else "E")
    t = time.localtime(created)
    usec = int((created - int(created)) * 1e6)
    tid = threading.get_native_id() if tid is None else tid
    return f"{letter}{t.tm_mon:02d}{t.tm_mday:02d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{usec:06d} {tid:5d} {filename}:{lineno}] "


class GlogFormatter(logging.Formatter):
    """Formats a LogRecord as glog does (the prefix on the first line only, as glog)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            msg = f"{msg}\n{record.exc_text}"
        tid = getattr(record, "native_tid", None)
        return glog_prefix(record.levelno, record.created, record.filename, record.lineno, tid) + msg


class GlogHandler(logging.StreamHandler):
    """Writes glog lines to a stream (stderr), keeping an optional progress line below them."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self.setFormatter(GlogFormatter())
        self.progress: Callable[[], str] | None = None
        self._shown = False
        self.files: list[logging.Handler] = []  # GLOG_log_dir's files, added by ``setup``

    def emit(self, record: logging.LogRecord) -> None:
        record.native_tid = threading.get_native_id()  # type: ignore[attr-defined]
        try:
            text = self.format(record)
            with self.lock:  # type: ignore[union-attr]
                if self._shown:
                    self.stream.write("\r\033[K")
                self.stream.write(text + "\n")
                self._draw()
                self.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)

    def _draw(self) -> None:
        self._shown = False
        if self.progress is not None:
            line = self.progress()
            if line:
                self.stream.write(line)
                self._shown = True

    def redraw(self) -> None:
        """Redraw the progress line in place."""
        with self.lock:  # type: ignore[union-attr]
            if self._shown:
                self.stream.write("\r\033[K")
            self._draw()
            self.flush()

    def clear_progress(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._shown:
                self.stream.write("\r\033[K")
                self.flush()
            self.progress = None
            self._shown = False


_handler: GlogHandler | None = None
_saved: dict[int, tuple[int, bool]] = {}


def setup(stream: TextIO | None = None, level: int | None = None) -> GlogHandler:
    """Route the ``neocaffe`` loggers to ``stream`` (stderr) in glog format; returns the handler
    (``teardown(handler)`` puts the logger back as it was)."""
    global _handler
    root = logging.getLogger("neocaffe")
    if _handler is not None:
        for h in (_handler, *_handler.files):
            root.removeHandler(h)
    _handler = GlogHandler(stream)
    _saved[id(_handler)] = (root.level, root.propagate)
    if level is None:
        try:
            level = _MIN_LEVELS.get(int(os.environ.get("GLOG_minloglevel", "0")), logging.INFO)
        except ValueError:
            level = logging.INFO
    root.addHandler(_handler)
    _handler.files = list(file_handlers(_handler.formatter))  # type: ignore[arg-type]
    for f in _handler.files:
        root.addHandler(f)
    root.setLevel(level)
    root.propagate = False
    return _handler


def current_handler() -> GlogHandler | None:
    """The handler ``setup`` installed (None outside it)."""
    return _handler


def teardown(handler: GlogHandler) -> None:
    """Remove ``handler`` and restore the ``neocaffe`` logger's level and propagation."""
    global _handler
    root = logging.getLogger("neocaffe")
    root.removeHandler(handler)
    for f in handler.files:
        root.removeHandler(f)
        f.close()
    level, propagate = _saved.pop(id(handler), (root.level, True))
    root.setLevel(level)
    root.propagate = propagate
    if _handler is handler:
        _handler = None


@contextmanager
def glog_to_stderr(level: int | None = None) -> Iterator[GlogHandler]:
    """The command-line tools' logging (Caffe's tools log to stderr): while inside, the ``neocaffe``
    loggers write glog lines to stderr at ``level`` (None: ``GLOG_minloglevel``, as glog). Unlike
    ``setup``, records still reach the root logger's handlers as before (a program that calls a tool's
    ``main``, pytest's caplog)."""
    root = logging.getLogger("neocaffe")
    propagate = root.propagate
    handler = setup(sys.stderr, level)
    root.propagate = propagate
    try:
        yield handler
    finally:
        teardown(handler)


def run_logged(call: Callable[[], Any], errors: tuple[type[BaseException], ...], log: logging.Logger) -> int:
    """A tool's work under ``glog_to_stderr``: ``call()``; an exception of ``errors`` is one ERROR line
    (the message names what failed). Returns the exit status (0, or 1 after an error)."""
    with glog_to_stderr():
        try:
            call()
        except errors as e:
            log.error("%s", e)
            return 1
    return 0


class Progress:
    """Solver callback drawing ``[#####.....] iter/max  loss  it/s`` under the log on a terminal."""

    WIDTH = 30

    def __init__(self, solver: Any, handler: GlogHandler) -> None:
        self.solver = solver
        self.handler = handler
        self.t0 = time.monotonic()
        self.start_iter = solver.iter
        handler.progress = self.render

    @staticmethod
    def wanted(stream: TextIO | None = None) -> bool:
        stream = stream if stream is not None else sys.stderr
        try:
            return bool(stream.isatty()) and os.environ.get("TERM", "") != "dumb"
        except (AttributeError, ValueError):
            return False

    def render(self) -> str:
        s = self.solver
        total = max(int(s.param.max_iter), 1)
        done = min(int(s.iter), total)
        fill = int(self.WIDTH * done / total)
        dt = time.monotonic() - self.t0
        rate = (s.iter - self.start_iter) / dt if dt > 0 else 0.0
        return f"[{'#' * fill}{'.' * (self.WIDTH - fill)}] {done}/{total}  loss {s.smoothed_loss:.4g}  {rate:.2f} it/s"

    def on_start(self) -> None:
        pass

    def on_gradients_ready(self) -> None:
        self.handler.redraw()

    def close(self) -> None:
        self.handler.clear_progress()
