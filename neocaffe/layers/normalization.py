"""Normalization layers: BatchNorm, Scale, Bias, MVN, with Caffe's formulas and blob layouts."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import PLAIN, TEST, TRAIN, Example, Layer, LayerCall, Shape
from neocaffe.layers.fillers import fill
from neocaffe.layers.nvcaffe_bn import NVCaffeBatchNorm, is_nvcaffe_bn
from neocaffe.layers.registry import register_layer

f32 = np.float32


def caffe_sqrt(t: Tensor) -> Tensor:
    """The square root correctly rounded, as Caffe's ``caffe_sqrt`` (``std::sqrt``/``vsSqrt``): PyTorch's
    vectorized float32 CPU sqrt is sometimes 1 ulp off, so float32 goes through float64 (exact: a
    double's 53 bits hold a float's square root rounded twice without error)."""
    return torch.sqrt(t.double()).to(t.dtype) if t.dtype == torch.float32 else torch.sqrt(t)


def plus_eps(s: Tensor, eps: float) -> Tensor:
    """``Dtype(sum) + eps`` with the eps a double, stored back in the data type (happynear's ``norm += 1e-6``
    on a float sum: the addition in double, then rounded once)."""
    return (s.double() + eps).to(s.dtype) if s.dtype == torch.float32 else s + eps


def unit_rows_(w: Tensor, eps: float = 1e-6) -> None:
    """happynear's in-place row normalization of a 2-D weight (InnerProduct's and InnerDistance's
    ``normalize``): each row times ``1 / sqrt(w.w + eps)``."""
    w.mul_((1 / caffe_sqrt(plus_eps((w * w).sum(1), eps)))[:, None])


def _canonical_axis(layer: Layer, axis: int, ndim: int) -> int:
    if not -ndim <= axis < max(ndim, 1):
        raise layer.error(f"axis {axis} out of range for a bottom with {ndim} axes")
    return axis + ndim if axis < 0 else axis


class _BatchStatsNorm(torch.autograd.Function):
    """``y = (x - mean) / sqrt(var + eps)`` over every axis but 1 (biased variance), with
    Caffe's backward ``(dy - (sum(dy) + y*sum(dy*y)) / m) / sqrt(var + eps)``."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: float):  # type: ignore[override]
        dims = (0,) + tuple(range(2, x.dim()))
        mean = x.mean(dims, keepdim=True)
        xc = x - mean
        var = (xc * xc).mean(dims, keepdim=True)
        std = caffe_sqrt(var + eps)
        y = xc / std
        ctx.dims = dims
        ctx.save_for_backward(y, std)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy: Tensor, _dmean, _dvar):  # type: ignore[override]
        y, std = ctx.saved_tensors
        m = y.numel() // y.shape[1]
        t = y * (dy * y).sum(ctx.dims, keepdim=True) + dy.sum(ctx.dims, keepdim=True)
        return (dy + t * float(f32(-1.0 / m))) / std, None


@register_layer("BatchNorm")
class BatchNormLayer(Layer):
    """``batch_norm_param``: ``use_global_stats`` (unset: true in TEST), ``moving_average_fraction``,
    ``eps``; NVCaffe's ``scale_bias`` (or ``scale_filler``/``bias_filler``) makes it NVCaffe's layer, five blobs
    and its own statistics (``neocaffe.layers.nvcaffe_bn``). Blobs: mean sum (C,), variance sum (C,), scale
    factor (1,); the stored statistics are divided by blob 2 (0 if blob 2 is 0). With batch statistics the forward updates the blobs
    (``b0 = maf*b0 + mean``, ``b1 = maf*b1 + m/(m-1)*var``, ``b2 = maf*b2 + 1``). The blobs never
    get a diff: as Caffe's LayerSetUp, missing ParamSpecs are added with ``lr_mult: 0``."""

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) < 2:
            raise self.error(f"needs a bottom with at least 2 axes (N, C, ...); received shape {shape}")
        p = self.param.batch_norm_param
        self.channels = shape[1]
        #: NVCaffe's BatchNorm with a learned scale and bias (``scale_bias``), else None: ``nvcaffe_bn``
        self.nv = NVCaffeBatchNorm(self, self.channels) if is_nvcaffe_bn(p) else None
        if self.nv is not None:
            self.use_global, self.maf, self.eps = False, self.nv.maf, self.nv.eps  # no BVLC kernel takes it
            return
        self.use_global = p.use_global_stats if p.HasField("use_global_stats") else self.phase == TEST
        self.maf = float(f32(p.moving_average_fraction))
        self.eps = float(f32(p.eps))
        for size in (self.channels, self.channels, 1):
            self.add_blob(torch.zeros(size))
        for i in range(3):
            if len(self.param.param) == i:
                self.param.param.add().lr_mult = 0
            elif self.param.param[i].lr_mult != 0:
                raise self.error(
                    f"cannot configure batch normalization statistics as layer parameters: "
                    f"param[{i}].lr_mult = {self.param.param[i].lr_mult}, expected 0"
                )

    def reshape(self, bottom_shapes):
        if len(bottom_shapes[0]) < 2 or bottom_shapes[0][1] != self.channels:
            raise self.error(f"bottom shape {bottom_shapes[0]} does not have {self.channels} channels")
        return [tuple(bottom_shapes[0])]

    def forward(self, x):  # type: ignore[override]
        if self.nv is not None:
            return self.nv.forward(self, x, self.phase == TRAIN)
        if self.use_global:
            view = (1, -1) + (1,) * (x.dim() - 2)
            mean, var = self._global_stats(x.dtype)
            return (x - mean.reshape(view)) / caffe_sqrt(var.reshape(view) + self.eps)
        return self._batch_stats(x)

    def _global_stats(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The stored mean and variance (blobs 0, 1 divided by blob 2, or 0), as ``dtype``."""
        b0, b1, b2 = (b.detach() for b in self.blobs)
        factor = torch.where(b2 == 0, torch.zeros_like(b2), 1 / b2)
        return (b0 * factor).to(dtype), (b1 * factor).to(dtype)

    def lean_kernel_in_place(self, bottoms: Sequence[Tensor]) -> Callable[..., Any] | None:
        """With ``use_global_stats``: ``x -= mean; x /= sqrt(var + eps)`` over the bottom, the
        statistics read from the blobs at each call."""
        if not self.use_global:
            return None
        view = (1, -1) + (1,) * (bottoms[0].dim() - 2)

        def norm_(x: Tensor) -> Tensor:
            mean, var = self._global_stats(x.dtype)
            return x.sub_(mean.reshape(view)).div_(caffe_sqrt(var.reshape(view) + self.eps))
        return norm_

    def _batch_stats(self, x: Tensor) -> Tensor:
        b0, b1, b2 = (b.detach() for b in self.blobs)
        y, mean, var = _BatchStatsNorm.apply(x, self.eps)
        m = x.numel() // self.channels
        corr = float(f32(m) / f32(m - 1)) if m > 1 else 1.0
        with torch.no_grad():
            b2.mul_(self.maf).add_(1)
            b0.mul_(self.maf).add_(mean.reshape(-1).to(b0.dtype))
            b1.mul_(self.maf).add_((var.reshape(-1) * corr).to(b1.dtype))
        return y

    @classmethod
    def examples(cls):
        x = np.random.default_rng(0).standard_normal((2, 3, 2, 2))
        return [
            Example('name: "bn" type: "BatchNorm" bottom: "x" top: "y"', [x], grad_params=False, phase=TRAIN),
            Example('name: "bn" type: "BatchNorm" bottom: "x" top: "x" batch_norm_param { eps: 0.01 }',
                    [x], grad_params=False),
        ]


def _param_shape(layer: Layer, shape: Shape, axis: int, num_axes: int) -> tuple[int, Shape]:
    axis = _canonical_axis(layer, axis, len(shape))
    if num_axes < -1:
        raise layer.error(f"num_axes must be non-negative, or -1 for all remaining axes; received {num_axes}")
    if num_axes != -1 and len(shape) < axis + num_axes:
        raise layer.error(f"axis {axis} + num_axes {num_axes} exceeds the bottom's {len(shape)} axes {shape}")
    return axis, tuple(shape[axis:] if num_axes == -1 else shape[axis:axis + num_axes])


def _broadcast(layer: Layer, x: Tensor, s: Tensor, axis: int) -> Tensor:
    """``s`` viewed to broadcast against ``x`` starting at ``axis`` (Caffe's outer/inner dims)."""
    axis = 0 if s.dim() == 0 else axis
    if tuple(x.shape[axis:axis + s.dim()]) != tuple(s.shape):
        raise layer.error(f"shape {tuple(s.shape)} does not match bottom shape {tuple(x.shape)} from axis {axis}")
    return s.reshape(tuple(s.shape) + (1,) * (x.dim() - axis - s.dim()))


def _filler(p, field: str, default_value: float):
    if p.HasField(field):
        return getattr(p, field)
    f = type(getattr(p, field))()
    f.type, f.value = "constant", default_value
    return f


def _check_operand(layer: Layer, bottom_shapes: list[Shape], axis: int) -> None:
    """Caffe's Reshape check: the scale/bias (bottom[1] or blob 0) matches bottom[0] from ``axis``."""
    shape0 = bottom_shapes[0]
    shape1 = tuple(bottom_shapes[1]) if len(bottom_shapes) > 1 else tuple(layer.blobs[0].shape)
    what = "bottom[1]" if len(bottom_shapes) > 1 else "parameter blob"
    a = 0 if len(shape1) == 0 else _canonical_axis(layer, axis, len(shape0))
    if tuple(shape0[a:a + len(shape1)]) != shape1:
        raise layer.error(f"{what} shape {shape1} does not match bottom[0] shape {tuple(shape0)} from axis {a}")


@register_layer("Scale")
class ScaleLayer(Layer):
    """``scale_param``: ``y = x * s (+ b)``, s = bottom[1] or a learned blob of
    ``x.shape[axis:axis+num_axes]`` (``filler`` default constant 1); ``bias_term`` adds a learned
    bias (``bias_filler``, default constant 0) of the scale's shape. Blob order: scale, bias.

    happynear's ``min_value`` / ``max_value`` (caffe-windows ms @ 967eedf2, ``scale_layer.cpp``, NormFace's
    learned softmax scale): each forward first clamps the scale in place, the learned blob itself (the
    solver then updates the clamped value); a bottom[1] scale is used clamped with its diff unmasked (the
    fork clamps that blob's data in place, which the layers before it would see too)."""

    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.scale_param
        shape0 = bottom_shapes[0]
        self.axis = _canonical_axis(self, p.axis, len(shape0))
        if len(bottom_shapes) == 1:
            _, shape = _param_shape(self, shape0, p.axis, p.num_axes)
            self.add_blob(fill(_filler(p, "filler", 1.0), shape))
        self.bias_term = p.bias_term
        if p.bias_term:
            n = len(bottom_shapes[1]) if len(bottom_shapes) > 1 else p.num_axes
            self.bias_axis, shape = _param_shape(self, shape0, p.axis, n)
            self.add_blob(fill(p.bias_filler, shape))
        _check_operand(self, bottom_shapes, p.axis)

    def reshape(self, bottom_shapes):
        _check_operand(self, bottom_shapes, self.param.scale_param.axis)
        return [tuple(bottom_shapes[0])]

    def _clamp_scale(self, s: Tensor | None) -> Tensor:
        p = self.param.scale_param
        lo = float(f32(p.min_value)) if p.HasField("min_value") else None
        hi = float(f32(p.max_value)) if p.HasField("max_value") else None
        if s is None:
            if lo is not None or hi is not None:
                self.blobs[0].data.clamp_(lo, hi)  # no version bump: as MarginInnerProduct's rewrite
            return self.blobs[0]
        if lo is None and hi is None:
            return s
        return s + (s.detach().clamp(lo, hi) - s.detach())  # the clamped value, the unmasked diff

    def forward(self, x, s=None):  # type: ignore[override]
        scale = self._clamp_scale(s)
        y = x * _broadcast(self, x, scale, self.axis)
        if self.bias_term:
            y = y + _broadcast(self, x, self.blobs[-1], self.bias_axis)
        return y

    def lean_kernel_in_place(self, bottoms: Sequence[Tensor]) -> Callable[..., Any] | None:
        """With a learned scale (one bottom): ``x *= s (+= b)`` over the bottom, the blobs read at
        each call."""
        x0 = bottoms[0]
        if len(bottoms) != 1 or any(b.dtype != x0.dtype for b in self.blobs):  # x * s would promote
            return None
        if self.param.scale_param.HasField("min_value") or self.param.scale_param.HasField("max_value"):
            return None  # forward clamps the blob first
        scale_view = _broadcast(self, x0, self.blobs[0], self.axis).shape
        bias_view = _broadcast(self, x0, self.blobs[-1], self.bias_axis).shape if self.bias_term else None
        s, b = self.blobs[0], self.blobs[-1]

        def scale_(x: Tensor) -> Tensor:
            x.mul_(s.reshape(scale_view))
            if bias_view is not None:
                x.add_(b.reshape(bias_view))
            return x
        return scale_

    @classmethod
    def examples(cls):
        r = np.random.default_rng(1)
        x = r.standard_normal((2, 3, 2, 2))
        return [
            Example('name: "s" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true '
                    'filler { type: "uniform" min: 0.5 max: 1.5 } bias_filler { type: "gaussian" } }', [x]),
            Example('name: "s" type: "Scale" bottom: "x" bottom: "s" top: "y" scale_param { axis: 0 }',
                    [x, r.standard_normal((2, 3))], grad_bottoms=(0, 1)),
            Example('name: "s" type: "Scale" bottom: "x" top: "x" scale_param { axis: 1 num_axes: -1 '
                    'filler { type: "gaussian" } }', [x]),
            Example('name: "s" type: "Scale" bottom: "x" top: "y" scale_param { num_axes: 0 bias_term: true '
                    'filler { type: "constant" value: 2 } }', [x]),
            # NormFace's cosine_scale: min_value clamps the blob (in range here: the gradient holds)
            Example('name: "cosine_scale" type: "Scale" bottom: "x" top: "x" scale_param { num_axes: 0 '
                    'min_value: 0.01 max_value: 50 filler { value: 10 } }', [x]),
        ]


@register_layer("Bias")
class BiasLayer(Layer):
    """``bias_param``: ``y = x + b``, b = bottom[1] or a learned blob of
    ``x.shape[axis:axis+num_axes]`` (``filler``, default constant 0)."""

    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.bias_param
        self.axis = _canonical_axis(self, p.axis, len(bottom_shapes[0]))
        if len(bottom_shapes) == 1:
            _, shape = _param_shape(self, bottom_shapes[0], p.axis, p.num_axes)
            self.add_blob(fill(p.filler, shape))
        _check_operand(self, bottom_shapes, p.axis)

    def reshape(self, bottom_shapes):
        _check_operand(self, bottom_shapes, self.param.bias_param.axis)
        return [tuple(bottom_shapes[0])]

    def forward(self, x, b=None):  # type: ignore[override]
        return x + _broadcast(self, x, self.blobs[0] if b is None else b, self.axis)

    @classmethod
    def examples(cls):
        r = np.random.default_rng(2)
        x = r.standard_normal((2, 3, 2, 2))
        return [
            Example('name: "b" type: "Bias" bottom: "x" top: "y" bias_param { filler { type: "gaussian" } }', [x]),
            Example('name: "b" type: "Bias" bottom: "x" bottom: "b" top: "y" bias_param { axis: 2 }',
                    [x, r.standard_normal((2, 2))], grad_bottoms=(0, 1)),
        ]


class _MVNVar(torch.autograd.Function):
    """Mean-variance normalization of rows: ``(x - mean) / (std + eps)``; Caffe's backward
    ``(dy - (sum(dy) + y*sum(dy*y)) / dim) / (std + eps)`` reads y from the top blob."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: float, ref):  # type: ignore[override]
        xc = x - x.mean(1, keepdim=True)
        std = torch.sqrt((xc * xc).mean(1, keepdim=True)) + eps
        y = xc / std
        ctx.ref = ref
        ctx.save_for_backward(y, std)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        y, std = ctx.saved_tensors
        top = y if ctx.ref.value is None else ctx.ref.value.reshape(y.shape)
        t = top * (dy * top).sum(1, keepdim=True) + dy.sum(1, keepdim=True)
        return (dy + t * float(f32(-1.0 / y.shape[1]))) / std, None, None


@register_layer("MVN")
class MVNLayer(Layer):
    """``mvn_param``: subtract the mean over each (n, c) (each n if ``across_channels``) and, if
    ``normalize_variance``, divide by ``sqrt(var) + eps`` (Caffe adds eps to the std)."""

    exact_bottoms = 1
    exact_tops = 1
    takes_call = True

    def setup(self, bottom_shapes):
        p = self.param.mvn_param
        if not 1 <= len(bottom_shapes[0]) <= 4:
            raise self.error(f"takes a bottom of 1 to 4 axes (N, C, H, W); received shape {bottom_shapes[0]}")
        self.normalize_variance = p.normalize_variance
        self.across = p.across_channels
        self.eps = float(f32(p.eps))

    def forward(self, x, call: LayerCall = PLAIN):  # type: ignore[override]
        num = x.shape[0] if self.across or x.dim() < 2 else x.shape[0] * x.shape[1]
        rows = x.reshape(num, -1)
        if not self.normalize_variance:
            return (rows - rows.mean(1, keepdim=True)).reshape(x.shape)
        return _MVNVar.apply(rows, self.eps, call.top(0)).reshape(x.shape)

    @classmethod
    def examples(cls):
        x = np.random.default_rng(3).standard_normal((2, 3, 2, 3))
        return [
            Example('name: "m" type: "MVN" bottom: "x" top: "y"', [x]),
            Example('name: "m" type: "MVN" bottom: "x" top: "y" mvn_param { across_channels: true }', [x]),
            Example('name: "m" type: "MVN" bottom: "x" top: "y" mvn_param { normalize_variance: false }', [x]),
        ]
