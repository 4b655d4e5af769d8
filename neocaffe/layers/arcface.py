"""xialuxi/arcface-caffe's margin layers: ``CosinAddm`` (ArcFace, and SV-X-Softmax under the same type),
``CombinedMargin`` and AdaCos's ``AdaCosAddmScale``.

Source: xialuxi/arcface-caffe @ 30ba26ad (``cosin_add_m_layer.{cpp,cu}``, ``SV_X_Softmax/sv-x-softmax.cpp``,
``combined_margin_layer.cpp``, ``AdaCos/adacos_add_m_scale_layer.{cpp,cu}``). Each layer takes the cosine
scores (N, ...; row i is the flattened item, ``dim = count / N``) and the labels (N values, read as
``static_cast<int>``), and writes one top shaped like the scores. A row whose label is negative is left
alone (the fork's ``if (gt < 0) continue``); a label >= dim is an error (the fork reads past the row).
The labels get no diff.

**CosinAddm** (``cosin_add_m_param { m transform_test }``): at the label, with ``c`` the cosine
(``c > 1`` read as 1, as the ``.cpp``; the ``.cu`` leaves such a ``c`` unchanged):
``cos(acos(c) + m) = c cos m - sqrt(1 - c^2) sin m`` where ``c > cos(pi - m)``, else ``c - m sin(pi - m)``
(the .cpp's easy-margin branch; the two branches do not meet at the threshold). Other entries pass.
Backward, the fork's (the true gradient within each branch): ``cos m + sin m * c / sin(theta)`` at the
label (1 where the low branch was taken or ``sin(theta) = 0``), 1 elsewhere. TEST phase: the scores pass
unchanged, as the ``.cu`` (its ``transform_test`` is ANDed with ``phase == TRAIN``, so it never acts; the
``.cpp`` applies the margin in TEST too). Deviation: the ``.cpp`` does not skip negative labels.

**SV-X-Softmax** (the fork's ``sv-x-softmax.cpp`` registers the same class name and type ``CosinAddm``; its
readme adds ``optional float t = 1.2 [default = 1.2]`` to ``CosinAddmParameter``, number 3 here): a
``CosinAddm`` whose ``cosin_add_m_param`` sets ``t`` is SV-X-Softmax. After the margin at the label, every
other entry ``j`` whose score exceeds the label's margined score becomes ``t * x_j + t - 1`` (backward ``t``).
It has only a CPU file, which applies in every phase (followed here). The fork's file does not compile as
committed (``j`` undeclared); the loop is read as ``for (int j = 0; ...)``.

**CombinedMargin** (``combined_margin_param { m1 m2 m3 }``): at the label ``cos(m1 * acos(c) + m2) - m3``;
backward ``m1 * (1 - c^2)^(-1/2) * sin(m1 acos(c) + m2)`` at the label (the true gradient; infinite at
``|c| = 1``, as the fork), 1 elsewhere. CPU only in the fork; every phase (``transform_test`` is read, unused).

**AdaCosAddmScale** (``adacos_add_m_scale_param { m num_classes }``): the ArcFace margin of the ``.cpp`` at
the label, then every entry times the adaptive scale ``s``. ``s`` is layer state, first
``sqrt(2) log(num_classes - 1)``; each forward (every phase, as the fork) sets
``B = sum_{i,j} exp(s_prev * x_ij * [j != y_i])`` (the label entries count as ``exp(0) = 1``, as the fork),
``theta_med = min(mean over every entry of acos(x), pi/4)`` (the mean, not the paper's median of the label
angles) and ``s = log(B / N) / cos(theta_med)``, then scales by the new ``s``. Backward, the fork's (``s`` is
treated as a constant): ``s * top_diff``, times the margin coefficient at the label. Follows the ``.cpp``:
the ``.cu`` takes ``acos`` of only the first N entries (``ComputeAcos`` launched over ``num``) and averages
them with the other raw cosines, and leaves ``c >= 1`` unmargined. ``s`` is the layer's resume state.

In place: ``CosinAddm`` only (the ``.cpp``'s in-place backward is the one above; the ``.cu`` then skips the
margin's coefficient, not followed). ``CombinedMargin`` and ``AdaCosAddmScale`` refuse it: their ``.cpp`` read
the bottom (then the margined top) after writing the top.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import TEST, TRAIN, Example, Layer, Shape
from neocaffe.layers.registry import register_layer

f32 = np.float32


def _const(v: float, dtype: torch.dtype) -> float:
    """A constant as the fork stores it (a ``Dtype`` member): rounded to float for float32 work."""
    return float(f32(v)) if dtype != torch.float64 else float(v)


def _rows_and_labels(layer: Layer, x: Tensor, label: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(N, dim) rows, the labels made safe to gather (negatives -> 0) and the mask of rows to change."""
    n = x.shape[0]
    rows = x.reshape(n, -1)
    lab = label.detach().reshape(-1).to(torch.int64)
    if lab.device.type == "cpu" and lab.numel() and int(lab.max()) >= rows.shape[1]:
        raise layer.error(f"label {int(lab.max())} out of range; expected labels < {rows.shape[1]} "
                          f"(the scores' count / num)")
    valid = lab >= 0
    return rows, torch.where(valid, lab, torch.zeros_like(lab)), valid


class _MarginFn(torch.autograd.Function):
    """``y`` (computed without autograd) with the fork's backward: ``g * scale * mult`` everywhere, and at the
    label of each valid row ``g * scale * coef`` instead."""

    @staticmethod
    def forward(ctx, rows: Tensor, y: Tensor, lab: Tensor, valid: Tensor, coef: Tensor,  # type: ignore[override]
                scale: Tensor | None, mult: Tensor | None) -> Tensor:
        ctx.save_for_backward(lab, valid, coef, scale, mult)
        return y

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        lab, valid, coef, scale, mult = ctx.saved_tensors
        gs = g if scale is None else g * scale
        gx = gs if mult is None else gs * mult
        at = torch.where(valid, gs.gather(1, lab[:, None])[:, 0] * coef, gx.gather(1, lab[:, None])[:, 0])
        return gx.scatter(1, lab[:, None], at[:, None]), None, None, None, None, None, None


def arc_margin(c: Tensor, m: float) -> tuple[Tensor, Tensor, Tensor]:
    """The ``.cpp``'s ArcFace margin on the label cosines ``c``: (margined value, backward coefficient, the
    low-branch flag)."""
    dt = c.dtype
    cos_m, sin_m = _const(math.cos(m), dt), _const(math.sin(m), dt)
    thr = _const(math.cos(math.pi - m), dt)
    one = torch.ones_like(c)
    ce = torch.where(c > 1, one, c)                      # cos_t > 1: read as 1
    low = ce <= thr
    sin = (1 - ce * ce).clamp(min=0).sqrt()
    easy = (ce.double() - math.sin(math.pi - m) * m).to(dt)  # c - sin(M_PI - m_) * m_, in double
    val = torch.where(low, easy, ce * cos_m - sin * sin_m)
    safe = torch.where(sin == 0, one, sin)
    coef = torch.where(low | (sin == 0), one, cos_m + sin_m * ce / safe)
    return val, coef, low


class _ScoreLabelLayer(Layer):
    """Scores and labels in (the fork's MinNumBottomBlobs 2: later bottoms are ignored), scores out."""

    min_bottoms = 2
    exact_tops = 1
    allow_in_place = False  # CombinedMargin's and AdaCos's .cpp read the bottom after writing the top

    def allow_force_backward(self, bottom: int) -> bool:
        """The labels (and any later bottom) get no diff."""
        return bottom == 0

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s, ls = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(s) < 1 or s[0] == 0 or math.prod(ls) != s[0]:
            raise self.error(f"needs one label per item of the scores; received scores {s}, labels {ls}")
        return [s]


@register_layer("CosinAddm")
class CosinAddmLayer(_ScoreLabelLayer):
    """ArcFace's additive angular margin, or SV-X-Softmax where ``cosin_add_m_param.t`` is set (see the
    module docstring)."""

    allow_in_place = True  # the .cpp works in place (its backward reads its own copy of the cosines)

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.cosin_add_m_param
        self.m = float(f32(p.m))
        self.svx = p.HasField("t")
        self.t = float(f32(p.t))
        self.reshape(bottom_shapes)

    def forward(self, x: Tensor, label: Tensor, *rest: Tensor) -> Tensor:  # type: ignore[override]
        if self.phase == TEST and not self.svx:
            return x
        rows, lab, valid = _rows_and_labels(self, x, label)
        with torch.no_grad():
            val, coef, _ = arc_margin(rows.gather(1, lab[:, None])[:, 0], self.m)
            y = rows.scatter(1, lab[:, None], torch.where(valid, val, rows.gather(1, lab[:, None])[:, 0])[:, None])
            mult = None
            if self.svx:
                t = _const(self.t, x.dtype)
                hard = (y > torch.where(valid, val, torch.full_like(val, math.inf))[:, None])
                hard = hard.scatter(1, lab[:, None], torch.zeros_like(hard[:, :1]))
                y = torch.where(hard, y * t + (t - 1), y)
                mult = torch.where(hard, torch.full_like(y, t), torch.ones_like(y))
        return _MarginFn.apply(rows, y, lab, valid, coef, None, mult).reshape(x.shape)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(179)
        cos = r.uniform(-0.7, 0.95, (4, 6))
        label = np.array([0.0, 3.0, 5.0, 3.0])
        cos[1, 3] = -0.95                                     # the low branch
        svx = r.uniform(-0.7, 0.95, (4, 6))
        svx[:, 2] = [0.2, 0.5, 0.9, -0.3]                     # the labels' cosines
        for i in range(4):                                    # keep the others off the margined score
            v = arc_margin(torch.tensor(svx[i, 2]), 0.3)[0].item()
            svx[i] = np.where(np.abs(svx[i] - v) < 0.05, v + 0.1, svx[i])
            svx[i, 2] = [0.2, 0.5, 0.9, -0.3][i]
        p = 'name: "cosin_add_m" type: "CosinAddm" bottom: "fc6" bottom: "label" top: "fc6_margin" {}'
        return [Example(p.format("cosin_add_m_param { m: 0.5 }"), [cos, label], phase=TRAIN),
                Example(p.format(""), [cos.reshape(4, 6, 1, 1), label.reshape(4, 1)], phase=TEST),
                Example(p.format("cosin_add_m_param { m: 0.3 t: 1.2 }"), [svx, np.full(4, 2.0)], phase=TRAIN),
                Example(p.format("cosin_add_m_param { m: 0.3 t: 1.2 }"), [svx, np.full(4, 2.0)], phase=TEST)]


class _CombinedFn(torch.autograd.Function):
    """``cos(m1 acos(c) + m2) - m3`` at the labels, the fork's backward."""

    @staticmethod
    def forward(ctx, rows: Tensor, lab: Tensor, valid: Tensor, m: tuple[float, float, float]) -> Tensor:  # type: ignore[override]
        m1, m2, m3 = (_const(v, rows.dtype) for v in m)
        c = rows.gather(1, lab[:, None])[:, 0]
        ang = m1 * torch.acos(c) + m2                       # m1_arccos_x_add_m2, in Dtype
        y = rows.scatter(1, lab[:, None], torch.where(valid, torch.cos(ang) - m3, c)[:, None])
        ctx.save_for_backward(c, ang, lab, valid)
        ctx.m1 = m1
        return y

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        c, ang, lab, valid = ctx.saved_tensors
        cd = c.double()  # m1 * pow(1 - pow(x, 2), -0.5) * sin(...): pow in double
        coef = (ctx.m1 * (1 - cd * cd).pow(-0.5) * torch.sin(ang).double()).to(g.dtype)
        gl = g.gather(1, lab[:, None])[:, 0]
        return g.scatter(1, lab[:, None], torch.where(valid, gl * coef, gl)[:, None]), None, None, None


@register_layer("CombinedMargin")
class CombinedMarginLayer(_ScoreLabelLayer):
    """InsightFace's combined margin ``cos(m1 theta + m2) - m3`` at the label (see the module docstring)."""

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.combined_margin_param
        self.m = (float(f32(p.m1)), float(f32(p.m2)), float(f32(p.m3)))
        self.reshape(bottom_shapes)

    def forward(self, x: Tensor, label: Tensor, *rest: Tensor) -> Tensor:  # type: ignore[override]
        rows, lab, valid = _rows_and_labels(self, x, label)
        return _CombinedFn.apply(rows, lab, valid, self.m).reshape(x.shape)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(156)
        cos = r.uniform(-0.9, 0.9, (3, 5))
        p = ('name: "combined_margin" type: "CombinedMargin" bottom: "fc6" bottom: "label" top: "fc6_margin" '
             'combined_margin_param {{ {} }}')
        return [Example(p.format("m1: 1 m2: 0.3 m3: 0.2"), [cos, np.array([1.0, 4.0, -1.0])], phase=TRAIN),
                Example(p.format(""), [cos.reshape(3, 5, 1), np.array([0.0, 2.0, 2.0])], phase=TEST)]


@register_layer("AdaCosAddmScale")
class AdaCosAddmScaleLayer(_ScoreLabelLayer):
    """AdaCos's adaptive scale on ArcFace's margined cosines (see the module docstring)."""

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.adacos_add_m_scale_param
        self.m = float(f32(p.m))
        classes = float(f32(p.num_classes))
        if classes <= 2:
            raise self.error(f"adacos_add_m_scale_param.num_classes must be > 2 (the scale starts at "
                             f"sqrt(2) log(num_classes - 1)); received {classes:g}")
        self.s_d: float | Tensor = float(f32(math.sqrt(2) * math.log(classes - 1)))
        self.reshape(bottom_shapes)

    def scale(self) -> float:
        """The current adaptive scale ``s`` (a host sync when it lives on a device)."""
        return float(self.s_d)

    def resume_state(self) -> dict:
        """The adaptive scale."""
        return {"s_d": self.scale()}

    def load_resume_state(self, state: dict) -> None:
        """Continue from ``resume_state()``'s scale."""
        if not isinstance(state.get("s_d"), float):
            raise self.error(f"resume state needs a float 's_d'; received {state!r}")
        self.s_d = state["s_d"]

    def forward(self, x: Tensor, label: Tensor, *rest: Tensor) -> Tensor:  # type: ignore[override]
        rows, lab, valid = _rows_and_labels(self, x, label)
        n, dt = rows.shape[0], rows.dtype
        with torch.no_grad():
            c = rows.gather(1, lab[:, None])[:, 0]
            val, coef, _ = arc_margin(c, self.m)
            y = rows.scatter(1, lab[:, None], torch.where(valid, val, c)[:, None])
            s_prev = (self.s_d.to(device=x.device, dtype=dt) if isinstance(self.s_d, Tensor)
                      else torch.full((), self.s_d, dtype=dt, device=x.device))
            bi = torch.ones_like(rows).scatter(1, lab[:, None], valid.logical_not().to(dt)[:, None])
            b = torch.exp(rows * bi * s_prev).double().sum()
            theta = torch.acos(rows).double().mean().clamp(max=math.pi / 4)
            cos_med = torch.cos(theta).to(dt).double()
            s = (torch.log(b.to(dt).double() / n) / cos_med).to(dt)
            self.s_d = s
            y = y * s
        return _MarginFn.apply(rows, y, lab, valid, coef, s, None).reshape(x.shape)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(211)
        cos = r.uniform(-0.5, 0.95, (4, 7))
        p = ('name: "adacos_add_m_scale" type: "AdaCosAddmScale" bottom: "fc6" bottom: "label" '
             'top: "fc6_margin_scale" adacos_add_m_scale_param {{ m: 0.5 num_classes: {} }}')
        # the scale is state updated by every forward and its backward is not the true gradient: no gradcheck
        return [Example(p.format(7), [cos, np.array([0.0, 6.0, 2.0, -1.0])], grad_bottoms=(), phase=TRAIN),
                Example(p.format(10575), [cos.reshape(4, 7, 1, 1), np.array([1.0, 1.0, 5.0, 3.0])],
                        grad_bottoms=(), phase=TEST)]
