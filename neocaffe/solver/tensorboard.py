"""TensorBoard scalars of what the solver logs, for a run watched in TensorBoard.

Off unless asked: the ``Solver`` argument ``tensorboard=DIR`` (``caffe train -tensorboard DIR``) or, when
neither sets it, ``NEOCAFFE_TENSORBOARD=DIR``; ``tensorboard_histograms`` / ``-tensorboard_histograms`` /
``NEOCAFFE_TENSORBOARD_HISTOGRAMS=1`` adds a histogram of every learnable blob on snapshot iterations.
Needs the ``tensorboard`` package (``pip install neocaffe[tensorboard]``). The log is unchanged: the
writer receives the values the log lines print, on the iterations that print them.

======================================  ================================================================
tag                                     the log line it mirrors (display iterations unless said)
======================================  ================================================================
``train/loss``                          ``Iteration N, loss = X`` (the smoothed loss)
``train/<output>``                      ``Train net output #k: <output> = X`` (``<output>/<j>`` for an
                                        output of several values)
``train/lr``                            ``Iteration N, lr = X``
``sparsity/<layer>/<i>``                the fork's ``Sparsity %:`` line (weight-decayed blobs)
``regularization/<name>``               each regularizer's penalty (weight_decay, force, the SSL terms)
``regularization/total``                ``Total regularization terms: X``
``train/loss+regular``                  its ``loss+regular. : X``
``speed/images_per_s``                  images per second between display iterations, test and
                                        snapshot time left out (batch x iter_size x processes)
``test/<output>``, ``test/loss``        ``Test net output #k: ...``, ``Test loss: X`` (test net #0;
                                        ``test<i>/...`` for test net #i)
``weights/<layer>/<i>``                 histograms on snapshot iterations, when asked
======================================  ================================================================
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class TensorBoardError(RuntimeError):
    """TensorBoard logging was asked for but cannot run (package missing, bad setting)."""


def resolve(logdir: str | os.PathLike | None, histograms: bool | None) -> tuple[str, bool]:
    """The log directory (``""``: off) and the histogram switch: arguments given (not None) win, the rest
    come from ``NEOCAFFE_TENSORBOARD`` / ``NEOCAFFE_TENSORBOARD_HISTOGRAMS``."""
    if logdir is None:
        logdir = os.environ.get("NEOCAFFE_TENSORBOARD", "").strip()
    if histograms is None:
        v = os.environ.get("NEOCAFFE_TENSORBOARD_HISTOGRAMS", "").strip().lower()
        if v not in _TRUE + _FALSE:
            raise TensorBoardError(f"NEOCAFFE_TENSORBOARD_HISTOGRAMS must be one of 1/0/true/false/yes/no/on/off; "
                                   f"received '{v}'")
        histograms = v in _TRUE
    return os.fspath(logdir), bool(histograms)


def output_values(net: Any, means: Sequence[float]) -> dict[str, float]:
    """``{<output>: value}`` for the values the solver's ``net output #k`` lines printed, in their order
    (one per element of each output blob; ``<output>/<j>`` when a blob holds several)."""
    out: dict[str, float] = {}
    values = iter(means)
    for name in net.outputs:
        n = int(net.blob_data[name].numel())
        for j in range(n):
            v = next(values, None)
            if v is None:
                return out
            out[name if n == 1 else f"{name}/{j}"] = float(v)
    return out


def images_per_iteration(net: Any, iter_size: int, world_size: int) -> int:
    """Images one solver iteration consumes: the batch axis of the first layer's first top (the data
    layer's) x ``iter_size`` x processes; 0 when the net has no such blob."""
    for lp in net.plan.layers:
        for top in lp.tops:
            shape = net.blob_shapes.get(top)
            return int(shape[0]) * iter_size * world_size if shape else 0
    return 0


def writers(logdir: str | os.PathLike | None, histograms: bool | None, net: Any, iter_size: int, rank: int,
            world_size: int) -> list["TensorBoardWriter"]:
    """The solver's TensorBoard monitor (``resolve``'s logdir; none when off or on a rank other than 0)."""
    logdir, histograms = resolve(logdir, histograms)
    if not logdir or rank != 0:
        return []
    return [TensorBoardWriter(logdir, histograms, images_per_iteration(net, iter_size, world_size))]


class TensorBoardWriter:
    """A solver monitor (``Solver.monitors``) writing an event file in ``logdir``. ``images_per_iter``:
    for ``speed/images_per_s`` (0: not written)."""

    def __init__(self, logdir: str, histograms: bool = False, images_per_iter: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise TensorBoardError(f"TensorBoard logging to '{logdir}' needs the tensorboard package: "
                                   f"pip install neocaffe[tensorboard] (or pip install tensorboard); {e}") from None
        self.logdir = logdir
        self.histograms = histograms
        self.images_per_iter = images_per_iter
        self.writer = SummaryWriter(log_dir=logdir)
        self.last: tuple[int, float] | None = None  # (iteration, time) of the last display
        self.paused = 0.0  # seconds spent testing or snapshotting since the last display

    def on_display(self, iteration: int, values: dict[str, float]) -> None:
        """The scalars of a display iteration (tags as in the module docstring)."""
        now = time.perf_counter()
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, iteration)
        if self.images_per_iter and self.last is not None and iteration > self.last[0]:
            seconds = now - self.last[1] - self.paused
            if seconds > 0:
                rate = (iteration - self.last[0]) * self.images_per_iter / seconds
                self.writer.add_scalar("speed/images_per_s", rate, iteration)
        self.last, self.paused = (iteration, now), 0.0
        self.writer.flush()

    def on_test(self, iteration: int, index: int, values: dict[str, float], seconds: float = 0.0) -> None:
        """What test net ``index`` logged (``{"loss": .., <output>: ..}``), and how long it ran."""
        prefix = "test" if index == 0 else f"test{index}"
        for tag, v in values.items():
            self.writer.add_scalar(f"{prefix}/{tag}", v, iteration)
        self.paused += seconds
        self.writer.flush()

    def on_snapshot(self, iteration: int, net: Any, seconds: float = 0.0) -> None:
        """Histograms of every learnable blob (when asked) after a snapshot of ``iteration``."""
        start = time.perf_counter()
        if self.histograms:
            for info in net.learnable:
                self.writer.add_histogram(f"weights/{info.name}", info.param.detach().float().cpu(), iteration)
            self.writer.flush()
        self.paused += seconds + time.perf_counter() - start

    def close(self) -> None:
        self.writer.close()


__all__ = ["TensorBoardWriter", "TensorBoardError", "resolve", "output_values", "images_per_iteration"]
