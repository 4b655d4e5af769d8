"""Data-parallel training over ``torch.distributed``, with Caffe's meaning of ``caffe train -gpu 0,1``.

One process per GPU (or per CPU process with ``-cpu_procs N``), launched by ``torchrun``; each builds
the whole solver, reads its own slice of the train data (``neocaffe.data.shard``: a run of W processes
with batch B equals one process with batch W*B) and takes ``batch_size`` per iteration. Per iteration,
in Caffe's order (``Solver::Step`` then ``SGDSolver::ApplyUpdate``; Caffe's ``NCCL::on_gradients_ready``):

    forward/backward (x iter_size) -> all-reduce SUM of every parameter diff -> x (1/W)
    -> clip -> / iter_size -> regularize -> update rule                       (the same in every process)

so every process applies the same update to the same weights. Rank 0 broadcasts its weights and solver
history at start (after ``-weights``/``-snapshot``); only rank 0 tests, logs and writes snapshots. Stop
and snapshot requests (signals) and a non-finite loss are agreed between the processes over a small
CPU (gloo) group, so they all stop or snapshot at the same iteration.

Backends: NCCL between GPUs, gloo on the CPU. Gradients travel in flat buckets of
``BUCKET_BYTES`` (all buckets in flight at once, then scaled and copied back); the all-reduce starts
after backward, not overlapped with it (DDP's hooks overlap the two: not done here).
"""
from __future__ import annotations

import atexit
import datetime
import os
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["DataParallel", "launched", "launch_env"]

BUCKET_BYTES = 64 << 20


def launched() -> bool:
    """True inside a ``torchrun`` (or ``torch.distributed.run``) worker."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; (0, 1, 0) outside one."""
    if not launched():
        return 0, 1, 0
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def _buckets(tensors: Sequence[Tensor], limit: int) -> list[list[Tensor]]:
    out: list[list[Tensor]] = []
    size = limit
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if size + nbytes > limit or not out or out[-1][0].dtype != t.dtype:
            out.append([])
            size = 0
        out[-1].append(t)
        size += nbytes
    return out


class DataParallel:
    """This process's part in data-parallel training (joins the process group if not yet joined).

    ``device``: this process's device (NCCL for CUDA, gloo for the CPU unless ``backend`` says).
    ``init_method``, ``world_size``, ``rank``: where and as whom to join when the process is not started
    by a launcher (pycaffe's ``caffe.NCCL(solver, uid)``: the uid's address, ``solver_count``,
    ``solver_rank``); left out, ``torch.distributed`` reads them from the launcher's environment.
    """

    def __init__(self, device: torch.device | str, backend: str | None = None, timeout_s: float = 1800,
                 init_method: str | None = None, world_size: int | None = None, rank: int | None = None) -> None:
        import torch.distributed as dist

        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._owned = False
        if not dist.is_initialized():
            backend = backend or ("nccl" if self.device.type == "cuda" else "gloo")
            kwargs: dict = {"timeout": datetime.timedelta(seconds=timeout_s)}
            if init_method is not None:
                kwargs["init_method"] = init_method
            if world_size is not None and rank is not None:
                if not 0 <= rank < world_size:
                    raise ValueError(f"DataParallel: rank {rank} is not in [0, {world_size}); "
                                     f"received world_size = {world_size}, rank = {rank}")
                kwargs.update(world_size=world_size, rank=rank)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
                kwargs["device_id"] = self.device
            dist.init_process_group(backend, **kwargs)
            self._owned = True
            # left to interpreter shutdown, gloo's threads are torn down in any order: abort() at exit
            atexit.register(self.close)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.backend = str(dist.get_backend())
        # requests and NaN flags are agreed on the CPU: no device synchronisation for them
        self.control = dist.new_group(backend="gloo") if self.backend != "gloo" else None
        self.scale = float(np.float32(1.0) / np.float32(self.world_size))  # Caffe: (Dtype)1.0 / solver_count

    def broadcast(self, tensors: Sequence[Tensor], src: int = 0) -> None:
        """Every process takes ``src``'s values of ``tensors`` (in place)."""
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        for bucket in _buckets(list(tensors), BUCKET_BYTES):
            flat = _flatten_dense_tensors(bucket)
            dist.broadcast(flat, src)
            with torch.no_grad():
                torch._foreach_copy_(bucket, list(_unflatten_dense_tensors(flat, bucket)))

    def average_gradients(self, grads: Sequence[Tensor | None]) -> None:
        """Sum every gradient over the processes, then scale by 1/W (in place), as Caffe's NCCL does."""
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        present = [g for g in grads if g is not None]
        if self.world_size == 1 or not present:
            return
        work = []
        for bucket in _buckets(present, BUCKET_BYTES):
            flat = _flatten_dense_tensors(bucket)
            work.append((bucket, flat, dist.all_reduce(flat, async_op=True)))
        with torch.no_grad():
            for bucket, flat, handle in work:
                handle.wait()
                flat.mul_(self.scale)
                torch._foreach_copy_(bucket, list(_unflatten_dense_tensors(flat, bucket)))

    def agree(self, *flags: bool | int) -> list[int]:
        """Sum small host-side flags over the processes (e.g. "stop requested here"): > 0 means some
        process raised it. A CPU collective (gloo), so it never waits for the GPU."""
        import torch.distributed as dist

        t = torch.tensor([int(f) for f in flags], dtype=torch.int64)
        if self.world_size > 1:
            dist.all_reduce(t, group=self.control)
        return [int(x) for x in t.tolist()]

    def close(self) -> None:
        """Leave the process group (when this object joined it)."""
        import torch.distributed as dist

        if self._owned and dist.is_initialized():
            dist.destroy_process_group()
        self._owned = False
