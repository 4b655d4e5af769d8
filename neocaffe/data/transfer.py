"""Host-to-device copies of batch tensors that do not stall the GPU's queue.

A CUDA copy from pageable host memory first waits for the stream's queued work to finish (CUDA's rule
for pageable transfers), so a label or crop-offset tensor copied that way each batch keeps the host
from queueing the next iteration while the GPU still runs this one. ``to_device`` copies CPU tensors
bound for CUDA through pinned memory, asynchronously; PyTorch's pinned-memory cache keeps each buffer
until its copy has run. ``PinAhead`` does the pinning of a data layer's batches in a thread, ahead of
the training thread.
"""
from __future__ import annotations

import queue
import threading
import weakref
from typing import Any, Callable

import torch
from torch import Tensor

from neocaffe.data.prefetch import Prefetcher


def to_device(t: Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> Tensor:
    """``t`` on ``device`` (as ``dtype`` when given, converted on the host first)."""
    device = torch.device(device)
    if dtype is not None and t.dtype != dtype and t.device.type == "cpu":
        t = t.to(dtype)
    if t.device.type == "cpu" and device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    elif t.device != device:
        t = t.to(device)
    return t.to(dtype) if dtype is not None and t.dtype != dtype else t


def _pin_loop(source: Prefetcher, ready: queue.Queue, stop: threading.Event, pin: Callable[[Tensor], Tensor],
              device: torch.device) -> None:
    """The pinning thread's work. It holds no reference to its PinAhead, so a PinAhead dropped without
    ``close`` is collected, its finalizer sets ``stop``, this loop ends and the source's workers follow."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device.index)
    while not stop.is_set():
        try:
            batch = source.next()
            data = batch.get("data") if isinstance(batch, dict) else None
            if isinstance(data, Tensor):
                pinned = pin(data)
                source.release(batch)  # the worker's shared buffer is free once copied
                batch["data"] = pinned
            out: tuple = ("ok", batch)
        except BaseException as e:  # handed to the training thread, which raises it
            out = ("error", e)
        while not stop.is_set():
            try:
                ready.put(out, timeout=0.1)
                break
            except queue.Full:
                continue
        if out[0] == "error":
            return


class PinAhead:
    """A pin-memory thread in front of a :class:`~neocaffe.data.prefetch.Prefetcher`, as PyTorch's
    DataLoader has one: while batch ``k`` trains, batch ``k + 1``'s host data is copied into pinned
    (page-locked) memory and its shared buffer goes back to its worker at once, so the training
    thread's ``to_device`` starts an asynchronous copy without first copying 40 MB (a batch of 256
    CaffeNet crops) itself. Other fields (labels, offsets) stay as they are; ``to_device`` pins them.

    ``position`` counts the batches handed out, not those pinned ahead, so a snapshot taken between
    iterations records the batch the next forward reads, as without the thread. ``pin`` makes a
    pinned copy of a tensor (``Tensor.pin_memory`` unless given); ``device``: the CUDA device the
    thread works for (set in the thread, so that pinning creates no context on GPU 0)."""

    def __init__(self, source: Prefetcher, device: torch.device | str, ahead: int = 2,
                 pin: Callable[[Tensor], Tensor] | None = None) -> None:
        self.source = source
        self.device = torch.device(device)
        self._pin = pin if pin is not None else Tensor.pin_memory
        self._first = int(source.position)
        self._handed = 0
        self._ready: queue.Queue = queue.Queue(maxsize=max(1, int(ahead)))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        weakref.finalize(self, self._stop.set)  # dropped without close(): the thread ends

    @property
    def position(self) -> int:
        """The index of the batch the next ``next()`` returns."""
        return self._first + self._handed

    def next(self) -> Any:
        """The next batch, its ``data`` pinned; an error of the source is raised here, in order."""
        if self._thread is None:
            self.source.start()  # workers fork from this thread, not from the pinning one
            self._thread = threading.Thread(
                target=_pin_loop, args=(self.source, self._ready, self._stop, self._pin, self.device),
                name=f"neocaffe-pin-{self.source.name}", daemon=True)
            self._thread.start()
        while True:
            try:
                kind, item = self._ready.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError(f"{self.source.name}: the pin-memory thread stopped "
                                       f"before delivering batch {self.position}") from None
        if kind == "error":
            self.close()
            raise item
        self._handed += 1
        return item

    def release(self, batch: Any) -> None:
        """Give back what the source lent with ``batch`` (its data buffer went back when pinned)."""
        self.source.release(batch)

    def close(self) -> None:
        """Stop the thread, then the source's workers; the batches pinned ahead are dropped, and the
        source is set back to ``position``, so a later ``next()`` reads on from there."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        while not self._ready.empty():
            self._ready.get_nowait()
        self._stop.clear()
        self.source.seek(self.position)


__all__ = ["PinAhead", "to_device"]
