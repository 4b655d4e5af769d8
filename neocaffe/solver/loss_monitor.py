"""The smoothed training loss (Caffe's ``Solver::UpdateSmoothedLoss``, window ``average_loss``) and the
losses still on the device: each iteration's loss is kept as a tensor and read back, all pending at
once, when the solver asks (one host-device synchronisation); the window is then updated in Caffe's
float32 order, so the logged ``loss = ...`` is Caffe's. Owned by ``neocaffe.solver.solver.Solver``
(``solver.loss_monitor``); its window travels in the ``.resume.pt`` companion of a snapshot."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

f32 = np.float32
DEFAULT_GPU_LOSS_CHECK_INTERVAL = 50  # iterations between read-backs on a GPU (the CPU reads every iteration)


def check_interval(value: int | None, device: torch.device, plateau: bool) -> int:
    """The solver's ``loss_check_interval`` (None: 1 on the CPU or under the ``plateau`` policy, which reads the
    smoothed loss every iteration, else ``DEFAULT_GPU_LOSS_CHECK_INTERVAL``); a ValueError when below 1, or other
    than 1 under ``plateau``."""
    if value is None:
        value = 1 if device.type == "cpu" or plateau else DEFAULT_GPU_LOSS_CHECK_INTERVAL
    if value < 1 or (plateau and value != 1):
        raise ValueError(f"loss_check_interval must be at least 1 (exactly 1 under lr_policy 'plateau', which "
                         f"reads the smoothed loss every iteration); received {value}")
    return int(value)


def divergence(loss: float, iteration: int | None, current: int, interval: int, good: str) -> str:
    """The error line of a diverged run: the loss of ``iteration`` is not finite (None: another data-parallel
    process's was), seen at iteration ``current`` (losses read back every ``interval``); ``good``: which
    snapshot is the last good one."""
    if iteration is None:
        return (f"Iteration {current}: the loss of another data-parallel process is not finite; stopping. "
                f"No snapshot is written for this state; {good}.")
    when = ("stopping before the update" if iteration == current else
            f"seen at iteration {current} (losses are read back from the device every {interval} iterations), "
            "stopping there")
    return (f"Iteration {iteration}, loss = {loss}: the loss is not finite; {when}. No snapshot is written for "
            f"this state; {good}.")


class SmoothedLoss:
    """The mean of the last ``average_loss`` iteration losses (SolverParameter ``average_loss``), each the
    sum of ``iter_size`` forward losses divided by ``iter_size`` (SolverParameter ``iter_size``)."""

    def __init__(self, average_loss: int, iter_size: int = 1) -> None:
        self.average_loss = int(average_loss)
        self.iter_size = int(iter_size)
        self.losses: list[float] = []
        self.value = 0.0
        self.origin = 0  # the iteration the window started at
        self.continuing = False  # restored from a snapshot: the next start continues the window
        self.pending: list[tuple[int, Any]] = []

    def start(self, iteration: int) -> None:
        """A new ``Solver::Step`` at ``iteration``: Caffe starts a new window, unless the window was just
        restored (``load_state``), which then continues."""
        if not self.continuing:
            self.losses, self.value, self.origin = [], 0.0, iteration
        self.continuing = False
        self.pending = []

    def add(self, loss: float, iteration: int) -> None:
        """Caffe's UpdateSmoothedLoss with the loss of ``iteration``."""
        if len(self.losses) < self.average_loss:
            self.losses.append(loss)
            size = len(self.losses)
            self.value = float((f32(self.value) * f32(size - 1) + f32(loss)) / f32(size))
        else:
            idx = (iteration - self.origin) % self.average_loss
            self.value = float(f32(self.value) + (f32(loss) - f32(self.losses[idx])) / f32(self.average_loss))
            self.losses[idx] = loss

    def push(self, iteration: int, total: Any) -> None:
        """The sum of iteration ``iteration``'s ``iter_size`` losses (a tensor, maybe on the device)."""
        self.pending.append((iteration, total))

    def read_back(self) -> tuple[list[int], tuple[float, int] | None]:
        """Read the pending losses back (one synchronisation) and fold them into the window in order,
        up to the first that is not finite. Returns the iterations read and (loss, iteration) of that
        first bad one (None when all were finite); the bad one and those after it are not folded."""
        pending, self.pending = self.pending, []
        if not pending:
            return [], None
        values = torch.stack([t if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float32)
                              for _, t in pending]).cpu().numpy()
        for it, v in zip((it for it, _ in pending), values):
            loss = float(f32(v) / f32(self.iter_size))
            if not math.isfinite(loss):
                return [it for it, _ in pending], (loss, it)
            self.add(loss, it)
        return [it for it, _ in pending], None

    def state(self) -> dict:
        """The window, for a snapshot's resume companion."""
        return {"losses": [float(v) for v in self.losses], "smoothed_loss": float(self.value),
                "loss_origin": int(self.origin)}

    def load_state(self, state: dict) -> None:
        """Continue ``state()``'s window at the next ``start``."""
        self.losses, self.value = [float(v) for v in state["losses"]], float(state["smoothed_loss"])
        self.origin, self.continuing = int(state["loss_origin"]), True
