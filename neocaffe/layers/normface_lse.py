"""happynear's ``GlobalLSEMargin``: a margin on the target logit estimated from the batch's log-sum-exp
(an experimental layer of NormFace's author, beside ``LabelSpecificAdd``).

Source: happynear/caffe-windows @ 0f293af5 (``src/caffe/layers/global_lse_margin_layer.cpp``, ``.cu``,
``include/caffe/layers/global_lse_margin_layer.hpp``). The fork runs it on the GPU only (its CPU forward
and backward are ``NOT_IMPLEMENTED``); here both devices run the ``.cu``'s arithmetic.

Bottoms: the logits x (num x dim after flattening past axis 0; cosines in NormFace's use), the labels
(num values, read as ``static_cast<int>``) and, optionally, per-item scales (num values: the feature norms,
"original norm"). Tops: y (x's shape) and, optionally, five statistics (5,). Blobs: the scale s (1,)
(``scale_param.filler``, else 30) and the margin m (1,), initial 0. Without ParamSpecs, as the fork's
setup: s learns with ``lr_mult`` 1 (0 with three bottoms, where s is not used), ``decay_mult`` 0; m takes
``lr_mult: 0 decay_mult: 0``.

Forward, every call (TEST too: the fork has no phase test), in x's precision:

1. s is clamped in place to [``scale_param.min_value`` (0), ``max_value`` (FLT_MAX)];
2. per item: the target logit ``t_i = x[i, y_i]``; the largest other logit ``g_i = max(-1, max_{j != y_i}
   x_ij)`` (the fork starts its search at -1); ``lse_i = log(sum_{j != y_i} exp(a_i (x_ij - g_i))) / a_i
   + g_i`` with ``a_i`` = s, or the item's scale with three bottoms; ``margin_i = t_i - lse_i``;
3. m, on the host in float: the first time (m == 0) the mean shift of the margins started at their mean
   with 20 rounds, later ``0.9 m + 0.1 shift`` with one round started at m (a NaN result leaves m as it
   is). One round: the mean of the margins within 0.1 of mu becomes mu (stop when it moved by < 0.001);
   no margin within 0.1: mu restarts at the mean of all margins without using up the round;
4. ``y = a_i (x - m onehot(y_i))`` where m > 0, ``y = a_i x`` otherwise;
5. top 1: (s or the mean item scale, mean t, mean lse, mean g, m).

Backward (the ``.cu``): dx = ``a_i dy``; ds = ``sum(dy * y) / s`` (two bottoms); d(item scale)_i =
``sum_j dy_ij y_ij / a_i`` (three bottoms); the labels, m and top 1 take none. That is the gradient of
step 4 with m held fixed, which autograd computes here.

Deviations: (a) where no margin lies within 0.1 of the mean of all margins, the fork's mean shift restarts
there forever (the process hangs); here it returns that mean. (b) The fork assigns s's diff (a dot product
written over the blob's diff), so with ``iter_size`` > 1 only the last pass counts; here it accumulates
over the passes as every learned blob does. (c) Labels outside [0, dim) are an error (the fork reads out
of range), and dim must be at least 2 (one class has no other logit: the log-sum-exp is -inf).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import TRAIN, Example, Layer, Shape
from neocaffe.layers.face_losses import _labels
from neocaffe.layers.fillers import fill
from neocaffe.layers.registry import register_layer

f32 = np.float32
FLT_MAX = float(np.finfo(np.float32).max)
DEFAULT_SCALE = 30.0  # global_lse_margin_layer.cpp: s without scale_param.filler
WINDOW = 0.1  # MeanShift: margins within this distance of mu count
SETTLED = 0.001  # MeanShift: stop once mu moved by less
FIRST_ROUNDS = 20  # the first forward's MeanShift rounds (later ones: 1, the header's default)


def mean_shift(margins: np.ndarray, mu: float, rounds: int) -> float:
    """The fork's ``MeanShift`` on float32 ``margins`` from ``mu`` (float sums in the fork's order)."""
    m = np.asarray(margins, dtype=f32).reshape(-1)
    mu, last = f32(mu), f32(mu)
    restarted = False
    while rounds > 0:
        rounds -= 1
        near = m[np.abs(m - mu).astype(np.float64) < WINDOW]  # float differences, compared in double
        if near.size == 0:
            if restarted:  # deviation (a): the fork restarts at the same mean forever
                return float(mu)
            mu = f32(np.cumsum(m, dtype=f32)[-1] / f32(m.size))
            last, restarted, rounds = mu, True, rounds + 1
            continue
        restarted = False
        mu = f32(np.cumsum(near, dtype=f32)[-1] / f32(near.size))
        if abs(float(f32(last - mu))) < SETTLED:
            break
        last = mu
    return float(mu)


@register_layer("GlobalLSEMargin")
class GlobalLSEMarginLayer(Layer):
    """happynear's ``GlobalLSEMargin`` (see the module docstring)."""

    min_bottoms = 2
    max_bottoms = 3
    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.scale_param
        self.item_scales = self.n_bottoms == 3
        self.bounds = (float(f32(p.min_value)) if p.HasField("min_value") else 0.0,
                       float(f32(p.max_value)) if p.HasField("max_value") else FLT_MAX)
        self.add_blob(fill(p.filler, (1,)) if p.HasField("filler") else torch.full((1,), DEFAULT_SCALE))
        self.add_blob(torch.zeros(1))
        if not len(self.param.param):  # the fork's LayerSetUp
            self.param.param.add(lr_mult=0.0 if self.item_scales else 1.0, decay_mult=0.0)
        if len(self.param.param) == 1:
            self.param.param.add(lr_mult=0.0, decay_mult=0.0)
        if self.param.param[1].lr_mult != 0:
            raise self.error("the margin (blob 1) is a running estimate: its param { lr_mult } must be 0 "
                             f"(received {self.param.param[1].lr_mult})")
        self.reshape(bottom_shapes)

    @property
    def n_bottoms(self) -> int:
        return len(self.param.bottom)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = tuple(bottom_shapes[0])
        if len(x) < 1 or x[0] < 1:
            raise self.error(f"bottom 0 needs at least one item; received shape {x}")
        num = x[0]
        dim = math.prod(x) // num
        if dim < 2:
            raise self.error(f"bottom 0 needs at least 2 logits per item (a target and another); received {x}")
        for i, what in ((1, "label"), (2, "scale"))[: self.n_bottoms - 1]:
            got = tuple(bottom_shapes[i])
            if math.prod(got) != num:
                raise self.error(f"bottom {i} needs one {what} per item of bottom 0 ({num}); received shape {got}")
        return [x, (5,)][: self.n_tops]

    def _update_margin(self, margins: Tensor) -> None:
        """Step 3 of the module docstring, on the margin blob."""
        blob = self.blobs[1]
        m = float(blob.detach()[0])
        host = margins.detach().to("cpu", torch.float32).numpy()
        if m == 0.0:
            start = f32(np.sum(host, dtype=f32) / f32(host.size))
            new = mean_shift(host, float(start), FIRST_ROUNDS)
        else:
            shift = mean_shift(host, m, 1)
            new = 0.9 * m + 0.1 * shift if not math.isnan(shift) else float("nan")
        if not math.isnan(new):
            blob.data.fill_(float(f32(new)))

    def forward(self, x: Tensor, label: Tensor, *scales: Tensor):  # type: ignore[override]
        num = x.shape[0]
        x2 = x.reshape(num, -1)
        dim = x2.shape[1]
        lab = _labels(self, label, dim).to(x.device)
        s = self.blobs[0]
        with torch.no_grad():
            s.data.clamp_(self.bounds[0], self.bounds[1])
            xd = x2.detach()
            a = scales[0].detach().reshape(num, 1).to(x.dtype) if self.item_scales else s.detach().to(x.dtype)
            target = xd.gather(1, lab[:, None])[:, 0]
            onehot = torch.zeros_like(xd, dtype=torch.bool).scatter_(1, lab[:, None], True)
            others = xd.masked_fill(onehot, -math.inf)
            top_other = torch.clamp(others.max(1).values, min=-1.0)
            e = torch.exp(a * (xd - top_other[:, None])).masked_fill(onehot, 0.0)
            a_item = a.reshape(-1) if self.item_scales else a
            lse = torch.log(e.sum(1)) / a_item + top_other
            self._update_margin(target - lse)
            m = float(self.blobs[1].detach()[0])
        shifted = x2 - onehot.to(x.dtype) * m if m > 0 else x2
        factor = scales[0].reshape(num, 1).to(x.dtype) if self.item_scales else s.to(x.dtype)
        y = (shifted * factor).reshape(x.shape)
        if self.n_tops == 1:
            return y
        with torch.no_grad():
            first = a.mean() if self.item_scales else a.reshape(())
            stats = torch.stack([first.to(x.dtype), target.mean(), lse.mean(), top_other.mean(),
                                 torch.tensor(m, dtype=x.dtype, device=x.device)])
        return y, stats

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(217)

        def low_targets(n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
            """Cosines whose targets sit below every other logit: every margin is negative, m stays <= 0
            and y = a x, so the gradient check holds (a positive m moves with x, as a statistic)."""
            x = r.uniform(-0.5, 0.9, (n, d))
            y = r.integers(0, d, n)
            x[np.arange(n), y] = -0.9
            return x, y.astype(np.float64)

        p = 'name: "lse" type: "GlobalLSEMargin" bottom: "x" bottom: "label" top: "y"'
        x, y = low_targets(4, 5)
        x3, y3 = low_targets(3, 4)
        return [Example(p, [x, y], grad_bottoms=(0,), phase=TRAIN),
                Example(f'{p} top: "stats" scale_param {{ min_value: 2 max_value: 40 }}', [x, y],
                        grad_bottoms=(0,), phase=TRAIN),
                Example(p.replace('bottom: "label"', 'bottom: "label" bottom: "norm"'),
                        [x3, y3, r.uniform(1.0, 3.0, (3,))], grad_bottoms=(0, 2), phase=TRAIN)]


__all__ = ["GlobalLSEMarginLayer", "mean_shift"]
