"""pycaffe's Blob: ``.data`` / ``.diff`` as writable NumPy arrays over neocaffe tensors.

On the CPU the arrays are views of the tensors themselves; a blob hands out one tensor per blob that
later forwards and backwards update in place, so an array taken from ``blob.data`` shows the next
forward's values, as BVLC's does (until a reshape). On CUDA they are host mirrors: writes are pushed
back to the device before the next forward, backward or solver step, and a later access refreshes
the same host memory (Caffe's SyncedMemory, made explicit).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor


class HostMirrors:
    """Host copies of device tensors handed out as NumPy arrays, synchronised as Caffe's SyncedMemory.

    One host copy per device *storage*, not per tensor object: ``blob.data`` and ``param.data``
    hand out a new tensor object on every access, and tensors viewing one storage (a blob and a
    reshaped view of it) must show each other's writes, as they do on the device. Each view is a
    NumPy view of that copy with the tensor's offset, shape and strides.

    A copy lives as long as its storage is handed out, so arrays taken earlier stay views of the
    blob: ``push()`` (before a forward, backward or solver step) writes every copy accessed since
    the last push to the device; ``device_wrote()`` (after one) marks every copy stale, and the next
    access refreshes it in place from the device (Caffe's ``cpu_data()`` after a GPU forward).
    """

    #: use host copies for CPU tensors too (normally views of the tensors): the tests exercise the
    #: CUDA path this way on machines without a GPU
    copy_on_cpu = False

    def __init__(self) -> None:
        # (device, storage address, dtype) -> [the whole storage as a flat device tensor, its host
        # copy, whether the host copy is what the user last saw and may have written]
        self._items: dict[tuple[Any, ...], list[Any]] = {}

    def view(self, t: Tensor) -> np.ndarray:
        if t.requires_grad:
            t = t.detach()
        if t.is_cpu and not self.copy_on_cpu:
            return t.numpy()
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr(), t.dtype)
        item = self._items.get(key)
        if item is None:
            # the whole storage, so every view into it (any offset, shape, stride) reads one copy;
            # holding the device tensor keeps the storage (and so the key's address) alive
            flat = t.data.as_strided((storage.nbytes() // t.element_size(),), (1,), 0)
            item = [flat, flat.to("cpu", copy=True), True]
            self._items[key] = item
        elif not item[2]:
            item[1].copy_(item[0])
            item[2] = True
        return item[1].as_strided(t.shape, t.stride(), t.storage_offset()).numpy()

    def push(self) -> None:
        """Write the host copies accessed since the last push to the device."""
        if not self._items:  # on the CPU, always: the arrays are the tensors themselves
            return
        with torch.no_grad():
            for item in self._items.values():
                if item[2]:
                    item[0].copy_(item[1])

    def device_wrote(self) -> None:
        """The device may hold newer values: the next access of each copy refreshes it."""
        for item in self._items.values():
            item[2] = False

    def clear(self) -> None:
        """Write pending copies back and let every copy go (after a reshape)."""
        self.push()
        self._items.clear()


def write_array(t: Tensor, value: Any) -> None:
    """Copy ``value`` (array-like, broadcast to ``t``'s shape as NumPy would) into ``t`` in place,
    straight to its device: no host copy of ``t`` is made only to be overwritten."""
    arr = np.asarray(value)
    if arr.shape == t.shape and arr.dtype == np.float32 and t.dtype == torch.float32 and arr.flags.c_contiguous:
        t.data.copy_(torch.from_numpy(arr))  # the usual case: an input of the blob's shape (.data: no graph)
        return
    extra = arr.ndim - t.dim()
    if extra > 0 and all(d == 1 for d in arr.shape[:extra]):  # NumPy assigns (1, 3, 4) into (3, 4)
        arr = arr.reshape(arr.shape[extra:])
    np.broadcast_to(arr, tuple(t.shape))  # NumPy's ValueError for shapes that do not fit
    if not arr.flags.c_contiguous:  # torch.from_numpy refuses negative strides
        arr = np.ascontiguousarray(arr).reshape(arr.shape)
    with torch.no_grad():
        t.data.copy_(torch.from_numpy(arr).to(t.dtype))  # .data: as a NumPy write, no version bump


class Blob:
    """A named tensor pair (data, diff) with pycaffe's interface."""

    def __init__(self, get_data: Callable[[], Tensor], get_diff: Callable[[], Tensor],
                 mirrors: HostMirrors, reshape: Callable[[tuple[int, ...]], None] | None = None,
                 get_shape: Callable[[], tuple[int, ...]] | None = None,
                 on_data: Callable[[], None] | None = None) -> None:
        self._get_data = get_data
        self._on_data = on_data  # told each time ``data`` is handed out (its array may be written)
        self._get_diff = get_diff
        self._mirrors = mirrors
        self._reshape = reshape
        self._get_shape = get_shape  # the shape without its data (a blob not yet written is not allocated)
        # the last CPU tensor handed out and its array (a blob hands out one tensor until it is reshaped:
        # the same array again, without a new view per access)
        self._cpu_tensor: Tensor | None = None
        self._cpu_array: np.ndarray | None = None

    @property
    def data(self) -> np.ndarray:
        if self._on_data is not None:
            self._on_data()
        t = self._get_data()
        if t is self._cpu_tensor:
            return self._cpu_array  # type: ignore[return-value]
        a = self._mirrors.view(t)
        if t.is_cpu and not self._mirrors.copy_on_cpu:
            self._cpu_tensor, self._cpu_array = t, a
        return a

    def cpu_array(self) -> np.ndarray | None:
        """The data array when it is the CPU tensor itself (no host mirror), else None (nothing mirrored)."""
        if self._mirrors.copy_on_cpu or not self._get_data().is_cpu:
            return None
        return self.data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        return self._mirrors.view(self._get_diff())

    @diff.setter
    def diff(self, value: np.ndarray) -> None:
        self.diff[...] = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._get_shape() if self._get_shape is not None else self._get_data().shape)

    @property
    def count(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    def _legacy(self, i: int) -> int:
        s = self.shape
        return s[i] if len(s) > i else 1

    @property
    def num(self) -> int:
        return self._legacy(0)

    @property
    def channels(self) -> int:
        return self._legacy(1)

    @property
    def height(self) -> int:
        return self._legacy(2)

    @property
    def width(self) -> int:
        return self._legacy(3)

    def reshape(self, *shape: int) -> None:
        """Change this blob's shape (inputs; call ``net.reshape()`` to propagate)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if self._reshape is None:
            if tuple(int(d) for d in shape) == tuple(self.shape):
                return  # Caffe's Blob::Reshape to the shape it has changes nothing
            raise ValueError(f"this blob cannot be reshaped directly (received {tuple(shape)}, it is "
                             f"{tuple(self.shape)}); reshape the net's inputs instead")
        self._reshape(tuple(int(d) for d in shape))

    def __repr__(self) -> str:
        return f"<caffe.Blob shape={self.shape}>"


def param_blob(p: torch.nn.Parameter, mirrors: HostMirrors, exposed: Callable[[], None] | None = None) -> Blob:
    """A Blob over a learnable parameter: data is the weight, diff its gradient; ``exposed`` is called
    whenever the data array is handed out (writes to it are invisible to torch)."""

    def diff() -> Tensor:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        return p.grad

    def reshape(shape: tuple[int, ...]) -> None:
        with torch.no_grad():
            p.data = torch.zeros(shape, dtype=p.dtype, device=p.device)
            p.grad = torch.zeros_like(p)

    return Blob(lambda: p.data, diff, mirrors, reshape, on_data=exposed)
