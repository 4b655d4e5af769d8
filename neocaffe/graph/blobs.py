"""The runtime state of a net: each blob's value and diff, one home for both (Caffe's ``Blob``).

``values[name]`` is the blob's data after the last forward (a blob rewritten in place shows the last
writer's value). ``diffs[name]`` is the blob's diff as Caffe's single Blob holds it: written by the
backward of the layer that reads the blob (for an in-place chain, the lowest layer's write wins, so
the diff is the gradient at the value the first writer produced), kept as it is where no layer writes
it, and settable by the user (an output's diff seeds the backward; a loss top's starts as its loss
weight, as Caffe's ``SetLossWeights`` leaves it).

Arrays handed out stay live (pycaffe's ``blob.data`` / ``blob.diff`` are views of the blob's memory in
BVLC): ``hold_data`` / ``hold_diff`` return one tensor per blob that later forwards and backwards write
into in place, until the blob's shape changes. Blobs nobody holds cost nothing: their values and
diffs are whatever tensors the executor produced.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from neocaffe.graph.grad_mode import no_grad

Shape = tuple[int, ...]


class BlobState:
    """Values, diffs and held buffers of every blob of one net (see the module docstring).

    ``shape_of(name)``: the blob's planned shape (for blobs not computed yet); ``loss_weight(name)``:
    its loss weight (the initial diff of a loss top); ``device``: where new buffers live.
    """

    def __init__(self, shape_of: Callable[[str], Shape], loss_weight: Callable[[str], float],
                 device: torch.device) -> None:
        self.values: dict[str, Tensor] = {}
        self.diffs: dict[str, Tensor] = {}
        self._held_data: dict[str, Tensor] = {}
        self._held_diff: set[str] = set()
        self._shape_of = shape_of
        self._loss_weight = loss_weight
        self.device = device

    # -- data ------------------------------------------------------------------------------------
    def value(self, name: str) -> Tensor:
        """The blob's data (zeros of its planned shape before any forward wrote it)."""
        t = self.values.get(name)
        if t is None:
            t = torch.zeros(self._shape_of(name), device=self.device)
            self.values[name] = t
        return t

    def hold_data(self, name: str) -> Tensor:
        """The blob's data as a tensor that later forwards update in place (a live view)."""
        held = self._held_data.get(name)
        if held is not None and self.values.get(name) is held:  # as the last publish left it
            return held
        t = self.value(name)
        if t.requires_grad:
            t = t.detach()  # else the tensor itself: an Input's buffer stays the blob's value at the next forward
        if held is not None and held.shape == t.shape and held.dtype == t.dtype and held.device == t.device:
            if held.data_ptr() != t.data_ptr():
                held.copy_(t)
            self.values[name] = held
            return held
        self._held_data[name] = t
        self.values[name] = t
        return t

    def publish(self) -> None:
        """After a forward: copy each held blob's new value into its held tensor (so arrays handed
        out show it); a blob whose shape changed is let go (its old arrays keep the old values)."""
        values = self.values
        stale: list[str] = []
        with no_grad():
            for name, held in self._held_data.items():
                t = values.get(name)
                if t is None or t is held:
                    continue
                if t.shape == held.shape and t.dtype == held.dtype and t.device == held.device:
                    if t.data_ptr() != held.data_ptr():
                        held.data.copy_(t)  # .data: no version bump (a graph may have saved the held tensor)
                    values[name] = held
                else:
                    stale.append(name)
        for name in stale:
            del self._held_data[name]

    def reset_values(self, keep: set[str]) -> None:
        """Forget every value but those of ``keep`` (after a reshape: new shapes come from the plan)."""
        for name in [n for n in self.values if n not in keep]:
            del self.values[name]
            self._held_data.pop(name, None)
        for name in [n for n in self.diffs if n not in keep]:
            del self.diffs[name]
            self._held_diff.discard(name)

    # -- diffs -----------------------------------------------------------------------------------
    def diff(self, name: str) -> Tensor:
        """The blob's diff. Before any backward wrote it: zeros, or the loss weight for a loss top."""
        d = self.diffs.get(name)
        shape = self._current_shape(name)
        if d is None or tuple(d.shape) != shape:
            d = torch.full(shape, self._loss_weight(name), device=self.device)
            self.diffs[name] = d
        return d

    def hold_diff(self, name: str) -> Tensor:
        """The blob's diff as a tensor that later backwards write into in place (a live view)."""
        d = self.diff(name)
        self._held_diff.add(name)
        return d

    def write_diff(self, name: str, g: Tensor) -> None:
        """A layer's backward wrote ``g`` as the blob's diff (into the held tensor when there is one)."""
        d = self.diffs.get(name)
        if name in self._held_diff and d is not None and d.shape == g.shape and d.dtype == g.dtype:
            if d.data_ptr() != g.data_ptr():
                with torch.no_grad():
                    d.copy_(g)
            return
        self.diffs[name] = g

    def set_diff(self, name: str, g: Tensor) -> None:
        """Write ``g`` (broadcast to the blob's shape) into the blob's diff."""
        d = self.diff(name)
        with torch.no_grad():
            d.copy_(g.to(d.device, d.dtype).reshape(d.shape) if g.numel() == d.numel() else g.to(d.device, d.dtype))

    def shape(self, name: str) -> Shape:
        """The blob's shape: its value's, or the planned one before a forward wrote it (nothing allocated)."""
        return self._current_shape(name)

    def _current_shape(self, name: str) -> Shape:
        t = self.values.get(name)
        return tuple(t.shape) if t is not None else tuple(self._shape_of(name))


__all__ = ["BlobState"]
