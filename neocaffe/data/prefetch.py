"""Batches made ahead of time in worker processes, handed out in order through bounded queues.

A *batch maker* is a small picklable object with ``open()`` (called in the process that makes batches:
open databases there, never share handles across ``fork``), ``make(k)`` (batch ``k``, deterministic in
``k`` alone, so the order and the random crops do not depend on the number of workers) and
``close()``. ``Prefetcher`` runs ``workers`` processes; worker ``j`` makes batches ``j, j + W, ...``
into its own queue of at most ``ceil(depth / W)`` batches, and batch ``k`` is taken from queue
``k % W``. With ``workers=0`` batches are made in the calling process (tests, tiny data).

Batches travel in shared memory (torch.multiprocessing). A maker that takes an ``alloc`` attribute
gets its output arrays from a ring of shared buffers per worker, reused once the main process
``release``s a batch (fresh shared memory costs as much as the crop itself: the kernel zeroes and
maps every page), so after warm-up a batch crosses without allocating or copying.

Workers: what the net's build asks for (``BuildContext.data_workers``, passed to ``default_workers``),
else ``NEOCAFFE_DATA_WORKERS``; by default tiny sources (at most 16 batches) are read in process and
larger ones by ``min(8, cpus - 2)`` workers (at least 1).
"""
from __future__ import annotations

import math
import os
import queue as queue_mod
import traceback
import weakref
from dataclasses import is_dataclass
from typing import Any, Protocol

import numpy as np
import torch

__all__ = ["BatchMaker", "Prefetcher", "default_workers", "register_error"]

_ERRORS: dict[str, type[Exception]] = {}


class BatchMaker(Protocol):
    def open(self) -> None: ...  # noqa: D102,E704
    def make(self, k: int) -> Any: ...  # noqa: D102,E704
    def close(self) -> None: ...  # noqa: D102,E704


def default_workers(n_batches: int | None = None, requested: int | None = None) -> int:
    """The number of workers for a source of about ``n_batches`` batches (None: unknown): ``requested``
    (the net's ``BuildContext.data_workers``) when given, else ``NEOCAFFE_DATA_WORKERS``, else automatic."""
    if requested is not None:
        return max(0, int(requested))
    env = os.environ.get("NEOCAFFE_DATA_WORKERS", "").strip()
    if env:
        try:
            return max(0, int(env))
        except ValueError:
            raise ValueError(f"NEOCAFFE_DATA_WORKERS must be an integer; received '{env}'") from None
    if n_batches is not None and n_batches <= 16:
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus - 2))


def register_error(cls: type[Exception]) -> type[Exception]:
    """Let an exception type raised in a worker be raised again, as itself, in the main process."""
    _ERRORS[cls.__name__] = cls
    return cls


def _register_known() -> None:
    from neocaffe.data.datum import DatumError
    from neocaffe.data.sources import DataSourceError

    register_error(DatumError)
    register_error(DataSourceError)


class _Stop(Exception):
    """The worker was told to stop (or lost its parent) while waiting."""


def _alive(stop: Any, parent: int) -> bool:
    return not stop.is_set() and os.getppid() == parent


class _Ring:
    """One worker's reusable shared-memory buffers; slot ids come back through ``free``."""

    def __init__(self, size: int, free: Any, stop: Any, parent: int) -> None:
        self.slots: list[torch.Tensor | None] = [None] * size
        self.free, self.stop, self.parent = free, stop, parent
        self.spare: list[int] = []
        self.last: tuple[int, torch.Tensor] | None = None

    def alloc(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        if self.spare:
            slot = self.spare.pop()
        else:
            while True:
                if not _alive(self.stop, self.parent):
                    raise _Stop
                try:
                    slot = self.free.get(timeout=0.5)
                    break
                except queue_mod.Empty:
                    continue
        tdtype = torch.from_numpy(np.empty(0, dtype)).dtype
        t = self.slots[slot]
        if t is None or tuple(t.shape) != tuple(shape) or t.dtype != tdtype:
            t = torch.empty(tuple(shape), dtype=tdtype).share_memory_()
            self.slots[slot] = t
        self.last = (slot, t)
        return t.numpy()

    def take_last(self) -> tuple[int, torch.Tensor] | None:
        last, self.last = self.last, None
        return last

    def give_back_last(self) -> None:
        last = self.take_last()
        if last is not None:
            self.spare.append(last[0])


def _to_transport(batch: Any) -> dict:
    d = {f: getattr(batch, f) for f in batch.__dataclass_fields__} if is_dataclass(batch) else dict(batch)
    return {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v) for k, v in d.items()}


def _worker_loop(maker: BatchMaker, k: int, n: int, q: Any, free: Any, ring_size: int, stop: Any, parent: int,
                 forked: bool = False) -> None:
    torch.set_num_threads(1)
    if not forked:
        # Never in a forked child: once the parent has run OpenCV's thread pool, cv2.setNumThreads in
        # the child waits forever for pool threads that fork did not copy (OpenCV 4.14; a hung run).
        try:
            import cv2

            cv2.setNumThreads(1)
        except Exception:  # pragma: no cover
            pass
    ring = _Ring(ring_size, free, stop, parent)
    try:
        if hasattr(maker, "alloc"):
            maker.alloc = ring.alloc  # type: ignore[attr-defined]
        maker.open()
    except Exception as e:  # report, then wait to be stopped
        q.put(("error", k, type(e).__name__, str(e), traceback.format_exc()))
        while _alive(stop, parent):
            stop.wait(0.5)
        return
    try:
        while _alive(stop, parent):
            try:
                payload = _to_transport(maker.make(k))
                last = ring.take_last()
                if last is not None:  # the data array is a view of this slot: send the tensor itself
                    payload["data"], payload["_slot"] = last[1], last[0]
                item: tuple = ("ok", k, payload)
            except _Stop:
                return
            except Exception as e:
                ring.give_back_last()
                item = ("error", k, type(e).__name__, str(e), traceback.format_exc())
            while True:
                if not _alive(stop, parent):
                    return
                try:
                    q.put(item, timeout=0.5)
                    break
                except queue_mod.Full:
                    continue
            if item[0] == "error":
                # stay until told to stop: batches still queued share their memory through this
                # process (torch's file-descriptor strategy), so it must outlive their delivery
                while _alive(stop, parent):
                    stop.wait(0.5)
                return
            k += n
    finally:
        maker.close()


def _shutdown(procs: list, stop: Any, queues: list) -> None:
    stop.set()
    for q in queues:
        try:
            while True:
                q.get_nowait()
        except Exception:
            pass
    for p in procs:
        p.join(timeout=2.0)
        if p.is_alive():
            p.terminate()
            p.join(timeout=1.0)
    for q in queues:
        q.cancel_join_thread()
        q.close()


class Prefetcher:
    """Batch ``k`` of ``maker`` on the ``k``-th call of ``next()``, made ahead by ``workers`` processes
    (``depth`` batches in flight at most). Processes start on the first ``next()``. Call
    ``release(batch)`` once a batch's data has been consumed, so its buffer is reused. ``start``: the
    first batch handed out (a resumed run continues at the batch it stopped before)."""

    def __init__(self, maker: BatchMaker, workers: int = 0, depth: int = 4, name: str = "data",
                 start: int = 0) -> None:
        self.maker = maker
        self.workers = max(0, int(workers))
        self.depth = max(1, int(depth))
        self.name = name
        self.k = max(0, int(start))
        self._procs: list = []
        self._queues: list = []
        self._free: list = []
        self._stop: Any = None
        self._opened = False
        self._finalizer: Any = None
        self._base = 0

    def start(self) -> None:
        """Start the worker processes now (else the first ``next()`` does), e.g. from the main thread
        before another thread takes the batches."""
        if self.workers and not self._procs:
            self._start()

    def _start(self) -> None:
        import torch.multiprocessing as tmp

        _register_known()
        methods = tmp.get_all_start_methods()
        method = "fork" if "fork" in methods else "spawn"
        ctx = tmp.get_context(method)
        per = max(1, math.ceil(self.depth / self.workers))
        ring_size = per + 2  # queued + in use by the main process + being made
        self._stop = ctx.Event()
        self._base = self.k
        for j in range(self.workers):
            q = ctx.Queue(maxsize=per)
            free = ctx.Queue()
            for slot in range(ring_size):
                free.put(slot)
            p = ctx.Process(
                target=_worker_loop,
                args=(self.maker, self._base + j, self.workers, q, free, ring_size, self._stop, os.getpid(),
                      method == "fork"),
                name=f"neocaffe-{self.name}-{j}", daemon=True,
            )
            p.start()
            self._procs.append(p)
            self._queues.append(q)
            self._free.append(free)
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._stop, self._queues + self._free)

    @property
    def position(self) -> int:
        """The index of the batch the next ``next()`` returns (batches made ahead do not count)."""
        return self.k

    def next(self) -> Any:
        """The next batch (the maker's result in process; a dict of tensors from workers)."""
        k = self.k
        if self.workers == 0:
            if not self._opened:
                self.maker.open()
                self._opened = True
            out = self.maker.make(k)
            self.k += 1
            return out
        if not self._procs:
            self._start()
        j = (k - self._base) % self.workers
        q, p = self._queues[j], self._procs[j]
        while True:
            try:
                item = q.get(timeout=1.0)
                break
            except queue_mod.Empty:
                if not p.is_alive():
                    raise RuntimeError(
                        f"{self.name}: data worker {j} exited (code {p.exitcode}) before delivering batch {k}"
                    ) from None
        if item[0] == "error":
            _, _, cls_name, message, tb = item
            self.close()
            cls = _ERRORS.get(cls_name)
            if cls is not None:
                raise cls(message)
            raise RuntimeError(f"{self.name}: data worker {j} failed on batch {k}: {cls_name}: {message}\n{tb}")
        if item[1] != k:  # pragma: no cover - a logic error, never expected
            raise RuntimeError(f"{self.name}: expected batch {k} from worker {j}, received {item[1]}")
        self.k += 1
        batch = item[2]
        if "_slot" in batch:
            batch["_worker"] = j
        return batch

    def release(self, batch: Any) -> None:
        """The caller is done with ``batch``'s data: its worker may reuse the buffer."""
        if isinstance(batch, dict) and "_slot" in batch and self._free:
            slot = batch.pop("_slot")
            self._free[batch.pop("_worker")].put(slot)

    def seek(self, k: int) -> None:
        """Hand out batch ``k`` next: stops the workers, whose batches ahead came from the old position."""
        self.close()
        self.k = max(0, int(k))

    def close(self) -> None:
        """Stop the workers (or close the in-process maker)."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
            self._procs, self._queues, self._free = [], [], []
        if self._opened:
            self.maker.close()
            self._opened = False
