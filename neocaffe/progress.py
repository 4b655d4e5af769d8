"""Progress of long, otherwise silent work (the dataset tools, ``caffe test``, ``caffe export``).

On an interactive terminal (stderr is a TTY and ``TERM`` is not ``dumb``) a tqdm bar is drawn on stderr,
and while it is shown the ``neocaffe`` log lines written to that terminal go through ``tqdm.write``, so
a line never lands inside the bar. Anywhere else (a pipe, a file, ``caffe ... 2> train.log``) no bar and
no control characters: a plain log line ``<what>: n/total <unit> (p%), r <unit>/s`` at most every
``NEOCAFFE_PROGRESS_SECONDS`` seconds (default 30; so runs shorter than that add nothing to the log).
``NEOCAFFE_PROGRESS=0`` turns both off. The training loop has its own line (``neocaffe.cli.log.Progress``).
Used by convert_imageset, convert_annoset, convert_mnist_data, compute_image_mean, prune, ``caffe test`` and
``caffe export``.

    with Progress(len(items), "convert_imageset", "images", log) as bar:
        for item in items:
            ...
            bar.update()
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "on_terminal"]

DEFAULT_SECONDS = 30.0


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (stderr) is an interactive terminal a bar may be drawn on."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty()) and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


def _enabled() -> bool:
    return os.environ.get("NEOCAFFE_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def _seconds() -> float:
    v = os.environ.get("NEOCAFFE_PROGRESS_SECONDS", "").strip()
    try:
        return float(v) if v else DEFAULT_SECONDS
    except ValueError:
        raise ValueError(f"NEOCAFFE_PROGRESS_SECONDS must be a number of seconds; received '{v}'") from None


class _BarWriter(logging.Handler):
    """Stands in for a console handler while a bar is shown: formats as it does, writes via tqdm.write."""

    def __init__(self, inner: logging.StreamHandler, tqdm_class: Any) -> None:
        super().__init__(inner.level)
        self.inner = inner
        self.tqdm_class = tqdm_class
        for f in inner.filters:
            self.addFilter(f)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.tqdm_class.write(self.inner.format(record), file=self.inner.stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class Progress:
    """Progress of ``total`` steps (None: unknown) of ``what``, counted in ``unit``; ``log``: the logger
    for the plain lines. ``stream``: where a bar goes (stderr)."""

    def __init__(self, total: int | None, what: str, unit: str = "it", log: logging.Logger | None = None,
                 stream: TextIO | None = None) -> None:
        self.total, self.what, self.unit = total, what, unit
        self.log = log if log is not None else logging.getLogger("neocaffe")
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self.start = self.last = time.monotonic()
        self.every = _seconds()
        self.bar: Any = None
        self.swapped: list[tuple[logging.Logger, logging.Handler, logging.Handler]] = []
        if _enabled() and on_terminal(self.stream):
            self._open_bar()
        self.plain = _enabled() and self.bar is None

    def _open_bar(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, desc=self.what, unit=f" {self.unit}" if self.unit != "it" else "it",
                        file=self.stream, leave=False, dynamic_ncols=True)
        for logger in (logging.getLogger("neocaffe"), logging.getLogger()):
            for i, h in enumerate(logger.handlers):
                if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is self.stream:
                    w = _BarWriter(h, tqdm)
                    logger.handlers[i] = w
                    self.swapped.append((logger, h, w))

    def update(self, n: int = 1) -> None:
        """``n`` more steps done."""
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.plain:
            now = time.monotonic()
            if now - self.last >= self.every:
                self.last = now
                self.log.info("%s", self.line(now))

    def stage(self, text: str) -> None:
        """Name the step under way (shown beside the bar; a plain line off a terminal when due)."""
        if self.bar is not None:
            self.bar.set_postfix_str(text)
        elif self.plain and time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            self.log.info("%s: %s", self.what, text)

    def line(self, now: float | None = None) -> str:
        """The plain progress line: ``what: n/total unit (p%), r unit/s``."""
        dt = (now if now is not None else time.monotonic()) - self.start
        rate = f", {self.n / dt:.1f} {self.unit}/s" if dt > 0 else ""
        if self.total:
            return f"{self.what}: {self.n}/{self.total} {self.unit} ({100.0 * self.n / self.total:.0f}%){rate}"
        return f"{self.what}: {self.n} {self.unit}{rate}"

    def close(self) -> None:
        """Remove the bar (nothing stays on the terminal) and give the log its handlers back."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        for logger, original, writer in reversed(self.swapped):
            logger.handlers = [original if h is writer else h for h in logger.handlers]
        self.swapped = []

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

