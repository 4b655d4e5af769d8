"""Faster R-CNN's region proposals as a native layer: ``Proposal``.

Semantics of rbgirshick/py-faster-rcnn @ 781a917b (``lib/rpn/proposal_layer.py``, ``generate_anchors.py``,
``lib/fast_rcnn/bbox_transform.py``, and its default NMS ``lib/nms/gpu_nms.pyx`` + ``nms_kernel.cu``
since ``cfg.USE_GPU_NMS`` is true), in torch and in the bottoms' dtype (float32 in nets) as NumPy
computes them there:

1. anchors: ``generate_anchors(base_size, ratios, scales)`` (NumPy's half-to-even ``round``), shifted by
   ``feat_stride`` over the score map, ordered (h, w, anchor);
2. ``bbox_transform_inv`` with widths ``x2 - x1 + 1`` and centres ``x1 + 0.5 * w``; clipped to
   ``[0, im_w - 1] x [0, im_h - 1]`` (``im_info`` = height, width, scale);
3. boxes narrower or lower than ``min_size * im_info[2]`` (``w = x2 - x1 + 1``) are dropped;
4. sorted by foreground score (channels ``A..2A-1`` of bottom 0), highest first, the first ``pre_nms_topn``;
5. greedy NMS: a box goes when a kept, better one overlaps it by IoU ``> nms_thresh`` (float32, ``+1``
   areas: the CUDA kernel's ``devIoU``); the first ``post_nms_topn`` kept.

Top 0: ``(n, 5)`` RoIs ``(0, x1, y1, x2, y2)``; optional top 1: their ``(n, 1)`` scores. ``n`` varies
with the data (the Python layer's tops do as well); only batch size 1 is supported (py-faster-rcnn's
assertion). Ties in score keep anchor order, as a stable sort gives in both of py-faster-rcnn's sorts
(NumPy's default quicksort leaves their order unspecified). The NMS loops only over the kept boxes
(``post_nms_topn`` at most), each computing its IoU with every remaining candidate at once.

Configuration: ``proposal_param`` (OpenCV's ``ProposalParameter``: ``feat_stride base_size min_size
ratio scale pre_nms_topn post_nms_topn nms_thresh``), or, when this layer stands in for py-faster-rcnn's
``Python`` layer ``rpn.proposal_layer.ProposalLayer`` (see ``python_layer.NATIVE_STAND_INS``), its
``param_str`` (``'feat_stride': 16``, optional ``'scales'``, and ``'ratios'`` which some forks add;
``parse_param_str``)
with py-faster-rcnn's ``cfg.TRAIN``/``cfg.TEST`` values for the net's phase.

OpenCV's own Proposal layer differs (measured in tests/test_zoo.py): no min-size filter, and its top
is always ``post_nms_topn x 5``, zero-padded.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import TRAIN, Example, Layer, Shape
from neocaffe.layers.registry import register_layer

#: py-faster-rcnn's lib/fast_rcnn/config.py: (RPN_PRE_NMS_TOP_N, RPN_POST_NMS_TOP_N, RPN_NMS_THRESH, RPN_MIN_SIZE)
RPN_CONFIG = {"TRAIN": (12000, 2000, 0.7, 16.0), "TEST": (6000, 300, 0.7, 16.0)}


@dataclass(frozen=True)
class ProposalConfig:
    """What one Proposal layer does; see the module docstring."""

    feat_stride: float = 16.0
    base_size: float = 16.0
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    scales: tuple[float, ...] = (8.0, 16.0, 32.0)
    pre_nms_topn: int = 6000
    post_nms_topn: int = 300
    nms_thresh: float = 0.7
    min_size: float = 16.0
    anchors: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "anchors", generate_anchors(self.base_size, self.ratios, self.scales))


def generate_anchors(base_size: float = 16, ratios=(0.5, 1, 2), scales=(8, 16, 32)) -> np.ndarray:
    """py-faster-rcnn's ``generate_anchors``: ``len(ratios) * len(scales)`` boxes (ratio-major) around the
    ``(0, 0, base_size - 1, base_size - 1)`` window, float64."""
    def whctrs(a):
        w, h = a[..., 2] - a[..., 0] + 1, a[..., 3] - a[..., 1] + 1
        return w, h, a[..., 0] + 0.5 * (w - 1), a[..., 1] + 0.5 * (h - 1)

    def mk(ws, hs, x, y):
        return np.stack([x - 0.5 * (ws - 1), y - 0.5 * (hs - 1), x + 0.5 * (ws - 1), y + 0.5 * (hs - 1)], axis=-1)

    base = np.array([1, 1, base_size, base_size], np.float64) - 1
    w, h, x, y = whctrs(base)
    ratios, scales = np.asarray(ratios, np.float64), np.asarray(scales, np.float64)
    ws = np.round(np.sqrt(w * h / ratios))
    hs = np.round(ws * ratios)
    per_ratio = mk(ws, hs, x, y)                                  # [len(ratios), 4]
    w, h, x, y = whctrs(per_ratio)
    out = mk(w[:, None] * scales, h[:, None] * scales, x[:, None], y[:, None])  # [ratios, scales, 4]
    return out.reshape(-1, 4)


def bbox_transform_inv(boxes: Tensor, deltas: Tensor) -> Tensor:
    """py-faster-rcnn's ``bbox_transform_inv`` for one class: ``boxes`` [K, 4], ``deltas`` [K, 4]."""
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    px = deltas[:, 0] * widths + ctr_x
    py = deltas[:, 1] * heights + ctr_y
    pw = torch.exp(deltas[:, 2]) * widths
    ph = torch.exp(deltas[:, 3]) * heights
    return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], dim=1)


def clip_boxes(boxes: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """``max(min(x, im_w - 1), 0)`` and the same for y (``clip_boxes``)."""
    zero = boxes.new_zeros(())
    xmax, ymax = (width - 1).to(boxes.dtype), (height - 1).to(boxes.dtype)
    x = torch.maximum(torch.minimum(boxes[:, 0::2], xmax), zero)
    y = torch.maximum(torch.minimum(boxes[:, 1::2], ymax), zero)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def _descending(scores: Tensor) -> Tensor:
    """``scores.argsort()[::-1]`` with a stable sort: highest first, ties in reverse index order."""
    return torch.sort(scores, stable=True).indices.flip(0)


def nms(boxes: Tensor, scores: Tensor, thresh: float, max_keep: int = 0) -> Tensor:
    """py-faster-rcnn's ``gpu_nms``: indices (into ``boxes``) of the kept boxes, best first; at most
    ``max_keep`` (> 0) of them. IoU in the boxes' dtype with ``+1`` sides; suppressed when ``> thresh``."""
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = _descending(scores)
    b = boxes[order]
    x1, y1, x2, y2 = b.unbind(1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    thr = float(np.float32(thresh))  # the kernel's float threshold
    alive = torch.ones(n, dtype=torch.bool, device=b.device)
    pos = torch.arange(n, device=b.device)
    zero = b.new_zeros(())
    kept: list[int] = []
    i = 0
    while i < n and (max_keep <= 0 or len(kept) < max_keep):
        kept.append(i)
        w = torch.maximum(torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1) + 1, zero)
        h = torch.maximum(torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1) + 1, zero)
        inter = w * h
        alive &= ~(inter / (areas[i] + areas - inter) > thr)
        alive &= pos > i
        nxt = torch.nonzero(alive[i + 1:])
        if nxt.numel() == 0:
            break
        i = i + 1 + int(nxt[0, 0])
    return order[torch.tensor(kept, dtype=torch.int64, device=b.device)]


def propose(scores: Tensor, deltas: Tensor, im_info: Tensor, cfg: ProposalConfig) -> tuple[Tensor, Tensor]:
    """RoIs ``(n, 5)`` and scores ``(n, 1)`` from one image's ``scores`` [1, 2A, H, W], ``deltas``
    [1, 4A, H, W] and ``im_info`` [1, >=3] (see the module docstring)."""
    dtype, dev = deltas.dtype, deltas.device
    a = cfg.anchors.shape[0]
    h, w = scores.shape[-2:]
    fg = scores[0, a:].permute(1, 2, 0).reshape(-1)              # (h, w, anchor)
    d = deltas[0].permute(1, 2, 0).reshape(-1, 4)
    sx = torch.arange(w, device=dev, dtype=torch.float64) * cfg.feat_stride
    sy = torch.arange(h, device=dev, dtype=torch.float64) * cfg.feat_stride
    shift_y, shift_x = torch.meshgrid(sy, sx, indexing="ij")
    shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)
    anchors = (torch.from_numpy(cfg.anchors).to(dev).unsqueeze(0) + shifts).reshape(-1, 4).to(dtype)
    info = im_info.reshape(-1)
    boxes = clip_boxes(bbox_transform_inv(anchors, d), info[0], info[1])
    min_size = cfg.min_size * float(info[2])                      # float64, as py-faster-rcnn's NumPy had it
    keep = (((boxes[:, 2] - boxes[:, 0] + 1).double() >= min_size)
            & ((boxes[:, 3] - boxes[:, 1] + 1).double() >= min_size))
    boxes, fg = boxes[keep], fg[keep]
    order = _descending(fg)
    if cfg.pre_nms_topn > 0:
        order = order[: cfg.pre_nms_topn]
    boxes, fg = boxes[order], fg[order]
    kept = nms(boxes, fg, cfg.nms_thresh, cfg.post_nms_topn)
    rois = torch.cat([torch.zeros(kept.numel(), 1, dtype=dtype, device=dev), boxes[kept]], dim=1)
    return rois, fg[kept].unsqueeze(1)


def parse_param_str(param_str: str) -> dict:
    """py-faster-rcnn's ``param_str``, which it reads as YAML: a flow mapping (``'feat_stride': 16``,
    ``{...}``) or one ``'key': value`` per line; ``!!python/tuple`` tags are read as lists. Parsed as
    Python literals (PyYAML is not needed)."""
    text = param_str.replace("!!python/tuple", "").strip()
    if not text.startswith("{"):
        text = "{" + ", ".join(line.strip().rstrip(",") for line in text.splitlines() if line.strip()) + "}"
    try:
        params = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read python_param.param_str {param_str!r} as a mapping: {e}") from None
    if not isinstance(params, dict):
        raise ValueError(f"python_param.param_str must be a mapping; received {param_str!r}")
    return params


def _python_param_config(param_str: str, phase: int) -> ProposalConfig:
    """The configuration py-faster-rcnn's ProposalLayer reads: ``param_str`` and ``cfg[phase]``."""
    params = parse_param_str(param_str)
    if "feat_stride" not in params:
        raise ValueError(f"python_param.param_str must give 'feat_stride' (py-faster-rcnn's ProposalLayer); "
                         f"received {param_str!r}")
    pre, post, thresh, min_size = RPN_CONFIG["TRAIN" if phase == TRAIN else "TEST"]
    return ProposalConfig(feat_stride=float(params["feat_stride"]),
                          ratios=tuple(float(r) for r in params.get("ratios", (0.5, 1, 2))),
                          scales=tuple(float(s) for s in params.get("scales", (8, 16, 32))),
                          pre_nms_topn=pre, post_nms_topn=post, nms_thresh=thresh, min_size=min_size)


def proposal_config(param, phase: int) -> ProposalConfig:
    """The configuration of the Proposal layer (or py-faster-rcnn ``Python`` layer) ``param`` in
    ``phase``: ``proposal_param``, or ``python_param.param_str`` with ``cfg[phase]``. ValueError when
    ``param_str`` cannot be read."""
    if param.type == "Python":
        return _python_param_config(param.python_param.param_str, phase)
    p = param.proposal_param
    return ProposalConfig(
        feat_stride=float(p.feat_stride), base_size=float(p.base_size), min_size=float(p.min_size),
        ratios=tuple(p.ratio) or (0.5, 1.0, 2.0), scales=tuple(p.scale) or (8.0, 16.0, 32.0),
        pre_nms_topn=int(p.pre_nms_topn), post_nms_topn=int(p.post_nms_topn), nms_thresh=float(p.nms_thresh))


@register_layer("Proposal")
class Proposal(Layer):
    """py-faster-rcnn's ProposalLayer, native (see the module docstring). Bottoms: RPN class
    probabilities ``1 x 2A x H x W``, box deltas ``1 x 4A x H x W``, ``im_info``; tops: RoIs and,
    optionally, their scores. No backward (the original's is empty)."""

    value_dependent_shape = True

    exact_bottoms = 3
    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        try:
            self.cfg = proposal_config(self.param, self.phase)
        except ValueError as e:
            raise self.error(str(e)) from None

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s, d = bottom_shapes[0], bottom_shapes[1]
        a = self.cfg.anchors.shape[0]
        if len(s) != 4 or s[0] != 1 or s[1] != 2 * a or tuple(d) != (1, 4 * a, *s[2:]):
            raise self.error(f"needs one image's scores 1 x {2 * a} x H x W and deltas 1 x {4 * a} x H x W "
                             f"({a} anchors); received {tuple(s)} and {tuple(d)}")
        if int(np.prod(bottom_shapes[2])) < 3:
            raise self.error(f"im_info (bottom 2) must hold height, width, scale; received shape {tuple(bottom_shapes[2])}")
        return [(1, 5), (1, 1)][: self.n_tops]  # as py-faster-rcnn's setup; forward gives the real count

    def forward(self, scores: Tensor, deltas: Tensor, im_info: Tensor):  # type: ignore[override]
        if scores.shape[0] != 1:
            raise self.error(f"only single item batches are supported; received batch {scores.shape[0]}")
        with torch.no_grad():
            rois, s = propose(scores.detach(), deltas.detach(), im_info.detach(), self.cfg)
        return [rois, s][: self.n_tops]

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(143)
        prob = r.uniform(0, 1, (1, 4, 3, 4))
        deltas = 0.3 * r.standard_normal((1, 8, 3, 4))
        info = np.array([[48, 64, 1.0]])
        return [Example('name: "prop" type: "Proposal" bottom: "s" bottom: "d" bottom: "im" top: "rois" top: "sc" '
                        'proposal_param { feat_stride: 16 ratio: 1 scale: 2 scale: 4 post_nms_topn: 1 min_size: 4 }',
                        [prob, deltas, info], grad_bottoms=())]
