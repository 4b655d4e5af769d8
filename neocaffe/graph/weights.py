"""Weights in and out of a Net: Caffe's CopyTrainedLayersFrom, ShareTrainedLayersWith and ToProto.

``copy_from`` matches layers by name (source layers the net lacks are skipped, as Caffe's "Ignoring
source layer"); a blob count or shape that disagrees raises a ``NetError`` naming the layer and both
shapes. A layer with a ``copy_blobs(arrays)`` method takes the stored blobs itself (lmb-freiburg/flownet2's
``Layer::CustomCopyBlobs`` for ``DoesUseCustomCopyBlobs()`` layers: its DataAugmentation fits a mean stored at
the train net's crop size to a deploy net's); one that returns a note has it logged once per load with the
names of the layers that gave it. ``share_with`` makes a net read another's parameter storage (a solver's test nets).
``ignore_shape_mismatch`` (a solver that sets caffe-jacinto's field to true, mathmanu/caffe-jacinto caffe-0.17
``Net::CopyTrainedLayersFrom``): a blob of another shape but the same count is copied in the target's shape, one of
another count is skipped, and a BatchNorm layer may hold fewer or more blobs (the common ones are copied), each
with one WARNING line naming the layer (and both shapes).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from neocaffe.graph.errors import NetError

if TYPE_CHECKING:
    from neocaffe.graph.net import Net

log = logging.getLogger("neocaffe.weights")


def _shape_text(shape: Any) -> str:
    return " ".join(str(int(d)) for d in shape) + f" ({int(np.prod(shape, dtype=np.int64))})"


def copy_from(net: "Net", weights: Any, source: str | None = None, *, ignore_shape_mismatch: bool = False) -> list[str]:
    """Copy learned blobs from a weight file (path) or a list of ``LayerWeights`` into the layers
    of the same name, in place (so shared parameters stay shared). Source layers this net lacks
    are skipped; a blob count or shape that disagrees raises, naming the layer and both shapes.
    Legacy 4-D blobs fit as Caffe's ``Blob::ShapeEquals`` allows. Returns the layers copied."""
    from neocaffe.io.weights import fit_blob, load_weights, shape_equals

    path = None
    if isinstance(weights, (str, bytes)) or hasattr(weights, "__fspath__"):
        path = str(weights)
        weights = load_weights(path)
    where = source or path
    names = net.layer_names
    copied: list[str] = []
    notes: dict[str, list[str]] = {}  # a custom copy's note -> the layers that gave it
    for lw in weights:
        if lw.name not in names:
            continue  # Caffe: "Ignoring source layer"
        layer = net.layers[names.index(lw.name)]
        custom = getattr(layer, "copy_blobs", None)  # a layer with its own copy rule (FlowNet's CustomCopyBlobs)
        if custom is not None:
            note = custom([np.asarray(b) for b in lw.blobs])
            if note:
                notes.setdefault(note, []).append(lw.name)
            copied.append(lw.name)
            continue
        if len(layer.blobs) != len(lw.blobs) and ignore_shape_mismatch and layer.param.type == "BatchNorm":
            log.warning("Incompatible number of blobs for layer %s target(%d) vs source(%d)", lw.name,
                        len(layer.blobs), len(lw.blobs))  # caffe-jacinto: the common blobs are copied
        elif len(layer.blobs) != len(lw.blobs):
            raise NetError(
                f"{where or net.source}: Incompatible number of blobs for layer '{lw.name}': the net "
                f"'{net.name}' has {len(layer.blobs)}, the weights have {len(lw.blobs)}"
            )
        legacy = list(lw.legacy_shapes) + [None] * (len(lw.blobs) - len(lw.legacy_shapes))
        for k, (param, arr, leg) in enumerate(zip(layer.blobs, lw.blobs, legacy)):
            if ignore_shape_mismatch and not shape_equals(tuple(param.shape), arr.shape, leg):
                shapes = (_shape_text(leg if leg is not None else arr.shape), _shape_text(param.shape))
                if arr.size != param.numel():
                    log.warning("Cannot copy param %d weights from layer '%s'; shape mismatch.  Source param shape "
                                "is %s; target param shape is %s. To learn this layer's parameters from scratch "
                                "rather than copying from a saved net, rename the layer.", k, lw.name, *shapes)
                    continue
                log.warning("During copy param %d weights from layer '%s'; Ignoring shape mismatch and copying "
                            "forcefully.  Source param shape is %s; target param shape is %s. ", k, lw.name, *shapes)
            fitted = fit_blob(arr, tuple(param.shape), leg, layer=lw.name, index=k, path=where,
                              strict=not ignore_shape_mismatch)
            with torch.no_grad():
                param.data.copy_(torch.as_tensor(fitted).to(param.device, param.dtype))
        copied.append(lw.name)
    for note, layers in notes.items():
        shown = ", ".join(f"'{n}'" for n in layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
        log.warning("%s: %s (layer%s %s)", where or net.source, note, "s" if len(layers) > 1 else "", shown)
    for info in net.learnable:
        if info.layer in copied:
            info.loads += 1
    return copied

def share_with(net: "Net", other: "Net") -> None:
    """Make this net's layers use the parameter storage of ``other``'s layers of the same name
    (a solver's test nets read the train net's weights without copies)."""
    mine = net.layer_names
    for name, src in zip(other.layer_names, other.layers):
        if name not in mine:
            continue
        dst = net.layers[mine.index(name)]
        if len(dst.blobs) != len(src.blobs):
            raise NetError(
                f"{net.source}: Incompatible number of blobs for layer '{name}': {len(dst.blobs)} in "
                f"net '{net.name}' (phase {net.phase}), {len(src.blobs)} in the net it shares with"
            )
        for k, (d, s) in enumerate(zip(dst.blobs, src.blobs)):
            if d is s:
                continue
            if tuple(d.shape) != tuple(s.shape):
                raise NetError(
                    f"{net.source}: Cannot share param {k} weights from layer '{name}'; shape mismatch. "
                    f"Source param shape is {tuple(s.shape)}; target param shape is {tuple(d.shape)}"
                )
            if d.data.data_ptr() != s.data.data_ptr():
                d.data = s.data

def after_move(net: "Net", asked: Any) -> torch.device:
    """After ``nn.Module.to``: parameter diffs left on the old device start again as zeros beside their
    parameter; returns the net's device (its tensors', else the device ``asked`` for, else unchanged)."""
    for info in net.learnable:
        if info.param.grad is not None and info.param.grad.device != info.param.device:
            info.param.grad = torch.zeros_like(info.param)
    t = next(iter(list(net.parameters()) + list(net.buffers())), None)
    if t is not None:
        return t.device
    return torch.device(asked) if isinstance(asked, (str, torch.device)) else net.device


def to_weights(net: "Net", with_diffs: bool = False) -> list[Any]:
    """Every layer's blobs as ``LayerWeights`` (host float32 arrays) in layer order, for writing
    a ``.caffemodel[.h5]``; ``with_diffs`` adds each parameter's current diff."""
    from neocaffe.io.caffemodel import LayerWeights

    out = []
    for name, layer in zip(net.layer_names, net.layers):
        blobs = [p.detach().to("cpu", torch.float32).numpy().copy() for p in layer.blobs]
        diffs: list[Any] = []
        if with_diffs:
            diffs = [
                (p.grad.detach().to("cpu", torch.float32).numpy().copy() if p.grad is not None else None)
                for p in layer.blobs
            ]
        out.append(LayerWeights(name, layer.type_name, blobs, [None] * len(blobs), diffs))
    return out
