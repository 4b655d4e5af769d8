"""A Net as a ``torch.export`` ExportedProgram (``.pt2``) that loads with ``torch.export.load`` alone.

``CaffeModule`` runs the net's own layers in the order of its plan, inputs as arguments (the Input
blobs, in ``net.inputs`` order), outputs as a dict blob name -> tensor. ``torch.export`` traces it
down to ATen operators, so the program holds Caffe's semantics exactly as neocaffe computes them (the
same operators on the same weights) and no neocaffe code: it runs where neocaffe is not installed.
"""
from __future__ import annotations

import os
import re
from typing import Any

import torch
from torch import Tensor, nn

from neocaffe.export.registry import ExportError
from neocaffe.graph.jacinto_quant import refusal


def _key(name: str, taken: set[str]) -> str:
    """A module key from a layer name (no dots; unique)."""
    base = re.sub(r"[^0-9A-Za-z_]", "_", name) or "layer"
    key, k = base, 1
    while key in taken:
        key, k = f"{base}_{k}", k + 1
    taken.add(key)
    return key


class CaffeModule(nn.Module):
    """The layers of ``net`` (shared, not copied) wired as its plan says; ``forward(*inputs)``
    returns {output blob: tensor}. Parameters are named ``<layer>.blobs.<i>``."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleDict()
        self.steps: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []
        taken: set[str] = set()
        for lp, layer in zip(net.plan.layers, net.layers):
            if lp.param.type == "Input":
                continue
            key = _key(lp.param.name, taken)
            self.layers[key] = layer
            self.steps.append((key, tuple(lp.bottoms), tuple(lp.tops)))
        self.input_names = list(net.inputs)
        self.output_names = list(net.outputs)

    def forward(self, *inputs: Tensor) -> dict[str, Tensor]:  # noqa: D102
        blobs = dict(zip(self.input_names, inputs))
        for key, bottoms, tops in self.steps:
            out = self.layers[key](*[blobs[b] for b in bottoms])
            outs = [out] if isinstance(out, Tensor) else list(out)
            blobs.update(zip(tops, outs))
        return {name: blobs[name] for name in self.output_names}


def export_pt2(net: Any, path: str | os.PathLike[str] | None = None, *, dynamic_batch: bool = False) -> Any:
    """``torch.export`` of ``net`` (TEST phase, weights loaded) on inputs of its blob shapes; with
    ``dynamic_batch`` axis 0 of every input is the symbolic ``batch``. Writes ``path`` when given.

    As every ``torch.export`` program, it is bound to the device it was exported on: a net on CUDA gives
    a program whose weights and device checks are CUDA's (``caffe export`` exports from the CPU);
    ``torch.export.passes.move_to_device_pass(program, "cpu")`` moves one."""
    why = refusal(net, "a torch.export program")
    if why is not None:
        raise ExportError(why)
    module = CaffeModule(net).eval()
    example = tuple(torch.zeros(net.blob_shapes[name], device=net.device) for name in module.input_names)
    dynamic_shapes = None
    if dynamic_batch:
        dim = torch.export.Dim("batch", min=1)
        dynamic_shapes = (tuple({0: dim} if len(x.shape) else None for x in example),)  # forward(*inputs)
    try:
        with torch.no_grad():
            program = torch.export.export(module, example, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as e:  # torch raises many kinds; say which net and why
        raise ExportError(f"net '{net.name}': torch.export failed{' with a dynamic batch' if dynamic_batch else ''}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if path is not None:
        tmp = f"{os.fspath(path)}.tmp.pt2"
        torch.export.save(program, tmp)
        os.replace(tmp, path)
    return program
