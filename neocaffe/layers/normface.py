"""happynear's face-recognition layers, the Caffe of AM-Softmax (happynear/AMSoftmax) and NormFace
(happynear/NormFace): happynear's ``Normalize`` (a lineage of its own under SSD's type name, see below),
``LabelSpecificAdd``, ``ChannelScale`` and ``Flip``.

Source: happynear/caffe-windows, branch ``ms`` @ 967eedf2 (``src/caffe/layers/normalize_layer.cpp``,
``label_specific_add.cpp``, ``channel_scale_layer.cpp``/``.cu``, ``flip_layer.cpp``); every file is the
same at 504d8a85, the commit AMSoftmax pins as its ``Caffe-AM-Softmax`` submodule, except that
normalize_layer.cpp's ``sign`` macro lacks its outer parentheses there (its CPU L1 backward then computes
``dy - [x > 0] - [x < 0] * a``; the ``.cu`` and the later ``.cpp`` compute ``dy - sign(x) * a``, as here).

**Normalize (happynear).** ``normalize_param { normalize_type ("L2"/"L1") fix_gradient bp_norm }``; no
blobs; one bottom read as Caffe's legacy (N, C, H, W) (at most 4 axes). Over the channels at each position:
L2 ``norm = sqrt(sum_c x^2 + 1e-6)``, L1 ``norm = sum_c |x| + 1e-6`` (the eps added to the float sum in
double, as the ``.cpp``; the ``.cu`` adds 1e-12 for L2), ``y = x / norm``. Top 0 has the legacy shape
(N, C, H, W) (4 axes also for a 2-axis bottom, as the fork's Reshape), the optional top 1 the norm
(N, 1, H, W). Backward (the true gradient, the fork's formula): ``dx = (dy - g * sum_c(y dy)) / norm``
with ``g = y`` (L2) or ``sign(x)`` (L1); with ``bp_norm`` and two tops, ``+ dnorm * g`` (without
``bp_norm`` the norm top passes no diff back, as in the fork). ``fix_gradient`` leaves out the division by
the norm, as the ``.cu`` does (the ``.cpp`` ignores the field; the fork's commit says not to use it).

Which ``Normalize`` a layer is (NUMBERING.md rule 6: SSD's and happynear's ``NormalizeParameter`` are one
message, SSD's LayerParameter field ``norm_param`` = 206, happynear's ``normalize_param`` = 214), in order:

1. ``norm_param`` present: SSD's; ``normalize_param`` present: happynear's; both: an error. A message that
   sets a field of the other lineage (``norm_param { bp_norm: true }``) is an error too.
2. Neither present: two tops mean happynear's (SSD's has exactly one: the GNAP prototxt's feature-map
   normalization outputs the norm); a 2-axis bottom means happynear's (AM-Softmax's ``norm1`` on ``fc5``,
   NormFace's on the last inner product; SSD's normalizes conv feature maps, and every SSD prototxt sets
   ``norm_param``).
3. Anything else (one top, a bottom of 3 or 4 axes, no parameter message) is ambiguous: an error asking
   for ``norm_param { }`` (SSD's: a learned scale blob) or ``normalize_param { }`` (happynear's: no blob).

A weight file of either fork loads: happynear's layer has no blobs, SSD's one (the scale).

**LabelSpecificAdd** (AM-Softmax's additive margin). Bottoms: scores (N, ...; row i is the flattened item)
and labels (N values, read as ``static_cast<int>``); tops: the scores and, optionally, the margin (1,).
TRAIN: ``top[i, y_i] += bias`` where ``top[i, y_i] > -bias`` (a negative margin never pushes a score below 0);
TEST: the scores unchanged (the fork's ``transform_test`` is ANDed with ``phase == TRAIN`` in its setup,
so it never acts) and the margin top left at 0 (the fork does not write it). ``bias``, or with
``bias_base`` set the schedule ``bias = clamp(bias_base + (1 + bias_gamma * iter)^bias_power - 1,
bias_min, bias_max)`` in float (pow correctly rounded), ``iter`` counting TRAIN forwards from
``iteration`` (the first uses ``iteration``). Backward: identity to the scores (the true gradient).
The counter is layer state (``resume_state``), where Caffe restarts it from ``iteration``.

**ChannelScale** (AM-Softmax without feature normalization, GNAP). Bottoms: x (legacy N, C, H, W) and
s (N*H*W values); top ``y[n, c, p] = s[n, p] * x[n, c, p]`` (``do_forward: false``: ``y = x``).
Backward, the fork's: ``dx = s * dy`` (``do_backward_feature: false``: ``dx = dy``), ``ds = sum_c x dy``
(``do_backward_scale: false``: 0): the true gradient with the three defaults. ``global_scale`` follows the
``.cu`` (the ``.cpp`` only clamps the blob's initial -1): a blob (1,), initial -1, lr_mult forced to 0;
each TRAIN forward sets it to ``mean |s|`` the first time, then ``0.99 * it + 0.01 * mean |s|``, clamped
to [``min_global_scale``, ``max_global_scale``]; ``y = blob * x``, optional top 1 the blob's value; the
backward stays the per-item formula above.

**Flip** (NormFace's mirror face). ``y`` = x mirrored along W (``flip_width``, default) and/or H
(``flip_height``) of the legacy (N, C, H, W); backward the mirrored diff.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import TEST, TRAIN, Example, Layer, Shape, legacy_shape
from neocaffe.layers.face_losses import ScheduledByForwards, _labels
from neocaffe.layers.normalization import caffe_sqrt, plus_eps
from neocaffe.layers.registry import register_layer

f32 = np.float32
SSD_FIELDS = ("across_spatial", "scale_filler", "channel_shared", "eps")
HAPPYNEAR_FIELDS = ("normalize_type", "fix_gradient", "bp_norm")
NORM_EPS = 1e-6  # normalize_layer.cpp: added to the sum of squares (L2) or of absolute values (L1)


# -- Normalize: which lineage, and happynear's ---------------------------------------------------
def normalize_lineage(param: Any, bottom_shape: Shape, n_tops: int) -> str:
    """``"ssd"`` or ``"happynear"`` for a ``Normalize`` LayerParameter (the rules of the module
    docstring); a ValueError says why neither or both."""
    ssd, hn = param.HasField("norm_param"), param.HasField("normalize_param")
    if ssd and hn:
        raise ValueError("sets both norm_param (SSD's Normalize) and normalize_param (happynear's): "
                         "one Normalize layer is of one lineage")
    if ssd or hn:
        msg, name, other, who = ((param.norm_param, "norm_param", HAPPYNEAR_FIELDS, "happynear's") if ssd else
                                 (param.normalize_param, "normalize_param", SSD_FIELDS, "SSD's"))
        stray = [f for f in other if msg.HasField(f)]
        if stray:
            raise ValueError(f"{name} sets {who} fields {stray}; SSD's Normalize reads norm_param "
                             f"{{{' '.join(SSD_FIELDS)}}}, happynear's normalize_param {{{' '.join(HAPPYNEAR_FIELDS)}}}")
        return "ssd" if ssd else "happynear"
    if n_tops == 2 or len(bottom_shape) == 2:
        return "happynear"
    raise ValueError(f"sets neither norm_param nor normalize_param, and a Normalize with one top on a "
                     f"{len(bottom_shape)}-axis bottom {tuple(bottom_shape)} may be SSD's (a learned scale "
                     f"blob, L2 over C*H*W by default) or happynear's (no blob, L2 over C per position); "
                     f"add `norm_param {{ }}` for SSD's or `normalize_param {{ }}` for happynear's")


class _NormalizeFn(torch.autograd.Function):
    """happynear's Normalize on x viewed as (N, C, S): tops y (N, C, S) and norm (N, 1, S)."""

    @staticmethod
    def forward(ctx, x: Tensor, l1: bool, fix_gradient: bool, bp_norm: bool):  # type: ignore[override]
        if l1:
            norm = plus_eps(x.abs().sum(1, keepdim=True), NORM_EPS)
        else:
            norm = caffe_sqrt(plus_eps((x * x).sum(1, keepdim=True), NORM_EPS))
        y = x / norm
        ctx.save_for_backward(x, y, norm)
        ctx.l1, ctx.fix_gradient, ctx.bp_norm = l1, fix_gradient, bp_norm
        if not bp_norm:
            ctx.mark_non_differentiable(norm)
        return y, norm

    @staticmethod
    def backward(ctx, dy: Tensor, dnorm: Tensor | None):  # type: ignore[override]
        x, y, norm = ctx.saved_tensors
        g = torch.sign(x) if ctx.l1 else y
        dx = dy - g * (y * dy).sum(1, keepdim=True)
        if not ctx.fix_gradient:
            dx = dx / norm
        if ctx.bp_norm and dnorm is not None:
            dx = dx + dnorm * g
        return dx, None, None, None


class HappynearNormalize:
    """The configuration and arithmetic of happynear's Normalize, for the registered ``Normalize`` layer
    (``neocaffe.layers.detection``), which holds SSD's too."""

    def __init__(self, layer: Layer, shape: Shape) -> None:
        p = layer.param.normalize_param
        if p.normalize_type not in ("L2", "L1"):
            raise layer.error(f"normalize_param.normalize_type '{p.normalize_type}' unknown; expected 'L2' or 'L1'")
        legacy_shape(shape, layer)
        self.l1 = p.normalize_type == "L1"
        self.fix_gradient = bool(p.fix_gradient)
        self.bp_norm = bool(p.bp_norm) and layer.n_tops == 2  # as the fork's LayerSetUp

    @staticmethod
    def top_shapes(layer: Layer, shape: Shape) -> list[Shape]:
        n, c, h, w = legacy_shape(shape, layer)
        return [(n, c, h, w), (n, 1, h, w)][: layer.n_tops]

    def __call__(self, x: Tensor, n_tops: int) -> Tensor | tuple[Tensor, Tensor]:
        n, c, h, w = (tuple(x.shape) + (1, 1, 1))[:4]
        y, norm = _NormalizeFn.apply(x.reshape(n, c, h * w), self.l1, self.fix_gradient, self.bp_norm)
        y = y.reshape(n, c, h, w)
        return y if n_tops == 1 else (y, norm.reshape(n, 1, h, w))


def happynear_examples() -> list[Example]:
    """Contract examples of happynear's lineage, for the registered ``Normalize``."""
    r = np.random.default_rng(211)
    head = 'name: "norm1" type: "Normalize" bottom: "x" top: "y"'
    away = r.uniform(0.3, 1.5, (3, 4, 2, 3)) * np.where(r.random((3, 4, 2, 3)) < 0.5, -1, 1)  # no x at 0 (L1)
    # L2 and L1 (and bp_norm through the norm top): the fork's backward is the true gradient. Without
    # bp_norm the norm top passes no diff (it is a constant to autograd); fix_gradient drops the division.
    return [Example(head, [r.standard_normal((4, 6))], phase=TRAIN),
            Example(f'{head} top: "norm" normalize_param {{ bp_norm: true }}', [r.standard_normal((2, 5, 2, 3))]),
            Example(f'{head} normalize_param {{ normalize_type: "L1" }}', [away]),
            Example(f'{head} top: "norm" normalize_param {{ normalize_type: "L1" bp_norm: true }}', [away]),
            Example(f'{head} top: "norm"', [r.standard_normal((3, 4, 2))]),  # y checked; the norm is a constant
            Example(f'{head} normalize_param {{ fix_gradient: true }}', [r.standard_normal((3, 4))], grad_bottoms=())]


# -- LabelSpecificAdd --------------------------------------------------------------------------------
def label_specific_bias(p: Any, iteration: int) -> float:
    """The annealed bias at ``iteration``, in float as the fork computes it (label_specific_add.cpp:41-43)."""
    t = f32(f32(1) + f32(p.bias_gamma) * f32(iteration))
    powed = f32(np.float64(t) ** np.float64(f32(p.bias_power)))
    b = f32(f32(f32(p.bias_base) + powed) - f32(1))
    return float(min(max(b, f32(p.bias_min)), f32(p.bias_max)))


@register_layer("LabelSpecificAdd")
class LabelSpecificAddLayer(ScheduledByForwards):
    """AM-Softmax's ``LabelSpecificAdd`` (see the module docstring)."""

    exact_bottoms = 2
    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.label_specific_add_param
        self.anneal = p.HasField("bias_base")
        self.bias = float(f32(p.bias))
        self.iteration = int(p.iteration)
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s, ls = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(s) < 1 or s[0] == 0 or math.prod(ls) != s[0]:
            raise self.error(f"needs one label per item of the scores: scores {s}, labels {ls}")
        return [s, (1,)][: self.n_tops]

    def forward(self, x: Tensor, label: Tensor):  # type: ignore[override]
        if self.phase == TEST:
            return x if self.n_tops == 1 else (x, x.new_zeros(1))
        if self.anneal:
            self.bias = label_specific_bias(self.param.label_specific_add_param, self.iteration)
            self.iteration += 1
        n = x.shape[0]
        rows = x.reshape(n, -1)
        lab = _labels(self, label, rows.shape[1])[:, None]
        bias = float(f32(self.bias)) if x.dtype == torch.float32 else self.bias
        with torch.no_grad():
            add = torch.zeros_like(rows).scatter_(1, lab, (rows.gather(1, lab) > -bias).to(x.dtype) * bias)
        y = (rows + add).reshape(x.shape)  # the added constant: the diff passes unchanged
        return y if self.n_tops == 1 else (y, torch.full((1,), bias, dtype=x.dtype, device=x.device))

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(212)
        cos = r.uniform(-0.9, 0.9, (4, 5))
        label = np.array([0.0, 3.0, 4.0, 3.0])
        p = ('name: "label_specific_margin" type: "LabelSpecificAdd" bottom: "fc6" bottom: "label" '
             'top: "fc6_margin" {} label_specific_add_param {{ {} }}')
        return [Example(p.format("", "bias: -0.35"), [cos, label], phase=TRAIN),
                Example(p.format('top: "margin"', "iteration: 3 bias_base: 0 bias_gamma: -0.05 bias_power: 1 "
                                 "bias_min: -0.4 bias_max: 0"), [cos.reshape(4, 5, 1, 1), label], phase=TRAIN),
                Example(p.format("", "bias: -0.35"), [cos, label], phase=TEST)]


# -- ChannelScale ------------------------------------------------------------------------------------
class _ChannelScaleFn(torch.autograd.Function):
    """``y = s * x`` over (N, C, P) x and (N, 1, P) s (or a global factor), with the fork's backward."""

    @staticmethod
    def forward(ctx, x: Tensor, s: Tensor, factor: Tensor | None, flags: tuple[bool, bool, bool]):  # type: ignore[override]
        do_forward, ctx.feature, ctx.scale = flags
        ctx.save_for_backward(x, s)
        if not do_forward:
            return x.clone()
        return x * (factor if factor is not None else s)

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        x, s = ctx.saved_tensors
        dx = ds = None
        if ctx.needs_input_grad[0]:
            dx = s * dy if ctx.feature else dy
        if ctx.needs_input_grad[1]:
            ds = (x * dy).sum(1, keepdim=True) if ctx.scale else torch.zeros_like(s)
        return dx, ds, None, None


@register_layer("ChannelScale")
class ChannelScaleLayer(Layer):
    """happynear's ``ChannelScale`` (see the module docstring)."""

    exact_bottoms = 2
    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.channel_scale_param
        self.flags = (bool(p.do_forward), bool(p.do_backward_feature), bool(p.do_backward_scale))
        self.global_scale = bool(p.global_scale)
        if self.n_tops == 2 and not self.global_scale:
            raise self.error("a second top (the global scale) needs channel_scale_param.global_scale: true")
        if self.global_scale:
            self.bounds = (float(f32(p.min_global_scale)), float(f32(p.max_global_scale)))
            self.add_blob(torch.full((1,), -1.0))
            if not len(self.param.param):  # the fork's LayerSetUp: a statistic, never learned
                self.param.param.add(lr_mult=0, decay_mult=0)
            elif self.param.param[0].lr_mult != 0:
                raise self.error("the global scale is a statistic: its param { lr_mult } must be 0 "
                                 f"(received {self.param.param[0].lr_mult})")
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s0, s1 = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        n, c, h, w = legacy_shape(s0, self)
        if not s1 or s1[0] != n or math.prod(s1) != n * h * w:
            raise self.error(f"bottom 1 needs one scale per item and position of bottom 0 {s0} "
                             f"({n} x {h * w} values, first axis {n}); received shape {s1}")
        return [s0, (1,)][: self.n_tops]

    def forward(self, x: Tensor, s: Tensor):  # type: ignore[override]
        n, c, h, w = legacy_shape(tuple(x.shape), self)
        factor = None
        if self.global_scale:
            blob = self.blobs[0]
            with torch.no_grad():
                if self.phase == TRAIN and self.flags[0]:
                    mean = s.detach().abs().sum() / s.numel()
                    value, mean = float(blob[0]), float(mean)
                    new = mean if value < 0 else value * 0.99 + mean * 0.01  # in double, as the .cu
                    new = float(f32(new)) if blob.dtype == torch.float32 else new
                    blob.data.fill_(min(max(new, self.bounds[0]), self.bounds[1]))
            factor = blob.detach().to(x.dtype)
        y = _ChannelScaleFn.apply(x.reshape(n, c, h * w), s.reshape(n, 1, h * w), factor, self.flags)
        y = y.reshape(x.shape)
        if self.n_tops == 1:
            return y
        # top 1: the factor used; the fork leaves it unwritten (0) when do_forward is false
        return y, (self.blobs[0].detach().to(x.dtype).clone() if self.flags[0] else x.new_zeros(1))

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(213)
        p = 'name: "fc6_margin_scale" type: "ChannelScale" bottom: "x" bottom: "s" top: "y"'
        return [Example(p, [r.standard_normal((4, 5)), r.uniform(0.5, 2, (4, 1, 1, 1))], grad_bottoms=(0, 1)),
                Example(p, [r.standard_normal((2, 3, 2, 2)), r.uniform(0.5, 2, (2, 1, 2, 2))], grad_bottoms=(0, 1)),
                # the fork's switches: not the gradient of the forward
                Example(f'{p} channel_scale_param {{ do_forward: false do_backward_scale: false }}',
                        [r.standard_normal((3, 4)), r.uniform(0.5, 2, (3,))], grad_bottoms=()),
                Example(f'{p} top: "g" channel_scale_param {{ global_scale: true }}',
                        [r.standard_normal((3, 4)), r.uniform(0.5, 2, (3,))], grad_bottoms=(), phase=TRAIN)]


# -- Flip --------------------------------------------------------------------------------------------
@register_layer("Flip")
class FlipLayer(Layer):
    """happynear's ``Flip`` (see the module docstring)."""

    exact_bottoms = 1
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.flip_param
        legacy_shape(bottom_shapes[0], self)
        self.dims = tuple(d for d, on in ((2, p.flip_height), (3, p.flip_width)) if on)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        legacy_shape(bottom_shapes[0], self)
        return [tuple(bottom_shapes[0])]

    def forward(self, x: Tensor) -> Tensor:
        dims = tuple(d for d in self.dims if d < x.dim())
        return x.flip(dims) if dims else x.clone()

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(214)
        x = r.standard_normal((2, 3, 4, 5))
        return [Example('name: "flip_data" type: "Flip" bottom: "data" top: "flip_data"', [x]),
                Example('name: "f" type: "Flip" bottom: "data" top: "f" flip_param { flip_width: false '
                        'flip_height: true }', [x]),
                Example('name: "f" type: "Flip" bottom: "data" top: "f" flip_param { flip_height: true }',
                        [r.standard_normal((2, 3, 4))])]
