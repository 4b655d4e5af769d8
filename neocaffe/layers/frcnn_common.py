"""Shared pieces of D-X-Y/caffe-faster-rcnn's FRCNN layers (``dev`` @ 1ae964d1): which configuration a
layer reads, the fork's box arithmetic (``src/caffe/FRCNN/util/frcnn_bbox.cpp``,
``frcnn_bbox_transform.cpp``: ``+1`` widths, centres ``x1 + 0.5 * w``) vectorised in torch, and the seeded
draws that stand in for the fork's ``caffe_rng_rand()`` / ``std::shuffle``.

Which configuration (``FrcnnConfig``): the fork's layers read the process-wide ``FrcnnParam`` that the
last ``FrcnnRoiData`` setup (or ``test_frcnn --default_c``) loaded. Here a layer reads, once at setup:
its own ``window_data_param.config`` when set (a neocaffe addition: the fork's layers other than the
data layer ignore the field), else the file named by the last layer before it in its net that sets
``window_data_param.config`` (the train net's ``FrcnnRoiData``), else the fork's
``default_config.json`` values (a deploy net such as ``models/FRCNN/zf/test.prototxt``, whose config the
fork's tools pass on the command line: give it to the layer through ``window_data_param.config``).
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from neocaffe import rng
from neocaffe.data.frcnn_config import FrcnnConfig, load_frcnn_config
from neocaffe.layers.base import Layer


def layer_config(layer: Layer) -> FrcnnConfig:
    """The :class:`FrcnnConfig` ``layer`` reads (see the module docstring); errors name the layer."""
    path = layer.param.window_data_param.config if layer.param.HasField("window_data_param") else ""
    if not path and layer.net_so_far is not None:
        for p in reversed(layer.net_so_far.layers):
            if p.HasField("window_data_param") and p.window_data_param.config:
                path = p.window_data_param.config
                break
    if not path:
        return FrcnnConfig()
    try:
        return load_frcnn_config(path)
    except (OSError, ValueError) as e:
        raise layer.error(f"cannot read the FRCNN config file (window_data_param.config): {e}") from None


def anchor_grid(cfg: FrcnnConfig, height: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The shifted anchors ``[H * W * A, 4]`` in the fork's (h, w, anchor) order: ``anchors[k] + (w, h) *
    feat_stride`` (float arithmetic as the fork's ``float x1 = w * feat_stride_ + anchors_[k]``)."""
    base = torch.tensor(cfg.anchors[: 4 * cfg.n_anchors], dtype=torch.float32, device=device).reshape(1, 1, -1, 4)
    sy = torch.arange(height, device=device, dtype=torch.float32) * cfg.feat_stride
    sx = torch.arange(width, device=device, dtype=torch.float32) * cfg.feat_stride
    shift = torch.stack(torch.broadcast_tensors(sx[None, :], sy[:, None], sx[None, :], sy[:, None]), dim=-1)
    return (base + shift[:, :, None, :]).reshape(-1, 4).to(dtype)


def ious(a: Tensor, b: Tensor) -> Tensor:
    """``get_ious(A, B)`` ``[len(a), len(b)]``: ``+1`` sides, ``inter / (areaA + areaB - inter)``."""
    xx1 = torch.maximum(a[:, None, 0], b[None, :, 0])
    yy1 = torch.maximum(a[:, None, 1], b[None, :, 1])
    xx2 = torch.minimum(a[:, None, 2], b[None, :, 2])
    yy2 = torch.minimum(a[:, None, 3], b[None, :, 3])
    zero = a.new_zeros(())
    inter = torch.maximum(zero, xx2 - xx1 + 1) * torch.maximum(zero, yy2 - yy1 + 1)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def bbox_transform(ex: Tensor, gt: Tensor) -> Tensor:
    """``bbox_transform(ex_roi, gt_roi)`` row by row: ``(dx, dy, log dw, log dh)``."""
    ew, eh = ex[:, 2] - ex[:, 0] + 1, ex[:, 3] - ex[:, 1] + 1
    gw, gh = gt[:, 2] - gt[:, 0] + 1, gt[:, 3] - gt[:, 1] + 1
    ex_cx, ex_cy = ex[:, 0] + 0.5 * ew, ex[:, 1] + 0.5 * eh
    gt_cx, gt_cy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    return torch.stack([(gt_cx - ex_cx) / ew, (gt_cy - ex_cy) / eh, torch.log(gw / ew), torch.log(gh / eh)], dim=1)


def bbox_transform_inv(box: Tensor, delta: Tensor) -> Tensor:
    """``bbox_transform_inv(box, delta)`` row by row."""
    w, h = box[:, 2] - box[:, 0] + 1, box[:, 3] - box[:, 1] + 1
    cx, cy = box[:, 0] + 0.5 * w, box[:, 1] + 0.5 * h
    px, py = delta[:, 0] * w + cx, delta[:, 1] * h + cy
    pw, ph = torch.exp(delta[:, 2]) * w, torch.exp(delta[:, 3]) * h
    return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], dim=1)


def random_order(n: int, device: torch.device) -> Tensor:
    """A random permutation of ``range(n)`` from neocaffe's seeded generator for ``device`` (the fork's
    ``std::shuffle`` / ``caffe_rng_rand() % n`` draws; its exact stream is not reproduced)."""
    return torch.randperm(n, generator=rng.generator(device), device=device)


def drop_random(labels: Tensor, value: int, keep: int) -> Tensor:
    """The fork's subsampling: when more than ``keep`` entries of ``labels`` equal ``value``, a uniformly
    random set of the surplus is set to -1 (``ind_set`` of ``caffe_rng_rand() % n`` draws)."""
    idx = torch.nonzero(labels == value).reshape(-1)
    surplus = idx.numel() - keep
    if surplus <= 0:
        return labels
    out = labels.clone()
    out[idx[random_order(idx.numel(), labels.device)[:surplus]]] = -1
    return out


def descending(scores: Tensor) -> Tensor:
    """``std::sort`` of ``(score, index)`` pairs with ``std::greater``: highest score first, ties by the
    higher index first."""
    return torch.sort(scores, stable=True).indices.flip(0)


def write_frcnn_config(path: str, **values) -> str:
    """Write a complete FRCNN JSON config (the defaults of ``FrcnnConfig`` with ``values`` over them)."""
    import dataclasses
    import json

    cfg = dataclasses.replace(FrcnnConfig(), **values)
    obj = {f.name: (", ".join(repr(float(v)) for v in getattr(cfg, f.name)) if isinstance(getattr(cfg, f.name), tuple)
                    else str(int(getattr(cfg, f.name))) if isinstance(getattr(cfg, f.name), bool)
                    else str(getattr(cfg, f.name)))
           for f in dataclasses.fields(cfg) if f.name != "path"}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    return path


def example_config() -> str:
    """The contract examples' config (written once under the examples folder): the fork's defaults with
    scales 24, max_size 40, flipping on, 3 classes, and one RoI out of FrcnnProposal (TEST) and
    FrcnnProposalTarget (batch_size 1), so their tops have the shapes ``reshape`` reports."""
    from neocaffe.data.examples import example_folder

    folder = os.path.join(example_folder(), "frcnn")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        write_frcnn_config(path, scales=(24.0,), max_size=40.0, use_flipped=True, n_classes=3,
                           test_rpn_post_nms_top_n=1, batch_size=1.0)
    return path
