"""Blob arithmetic, indexing, sources and sinks: Eltwise, Reduction, Silence, Parameter, BatchReindex,
Filter, Embed, DummyData.

Index bottoms (BatchReindex's permutation, Filter's selector, Embed's indices) never get a diff.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape, canonical_axis
from neocaffe.layers.blob_shape import check_shape, proto_shape
from neocaffe.layers.fillers import fill
from neocaffe.layers.lineage import darknet2caffe_hint, descends, net_lineage
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2

PROD, SUM, MAX = 0, 1, 2  # EltwiseParameter.EltwiseOp
R_SUM, R_ASUM, R_SUMSQ, R_MEAN = 1, 2, 3, 4  # ReductionParameter.ReductionOp


class _ProdFn(torch.autograd.Function):
    """Eltwise PROD with Caffe's backward: stable = product of the other bottoms (in order), else top / bottom."""

    @staticmethod
    def forward(ctx, stable: bool, *bottoms: Tensor):  # type: ignore[override]
        top = bottoms[0] * bottoms[1]
        for b in bottoms[2:]:
            top = top * b
        ctx.stable = stable
        ctx.save_for_backward(top, *bottoms)
        return top

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        top, *bottoms = ctx.saved_tensors
        grads = []
        for i, b in enumerate(bottoms):
            if not ctx.needs_input_grad[i + 1]:
                grads.append(None)
            elif ctx.stable:
                others = [o for j, o in enumerate(bottoms) if j != i]
                acc = others[0]
                for o in others[1:]:
                    acc = acc * o
                grads.append(acc * g)
            else:
                grads.append(top / b * g)
        return (None, *grads)


@register_layer("Eltwise")
class Eltwise(Layer):
    """``eltwise_param {operation coeff stable_prod_grad}``. MAX routes the diff by Caffe's mask: bottom 1
    wins ties with bottom 0 (``a > b`` keeps a), later bottoms must be strictly greater to win.
    Two bottoms at least, as BVLC's; one (SUM or PROD) in a net of lineage ``flownet`` (or ``liteflownet``, built
    on it), whose Eltwise has
    ``MinBottomBlobs() = 1`` (lmb-freiburg/flownet2's ``eltwise_layer.hpp``; PWC-Net's nets scale flows by a
    one-bottom SUM with a coefficient)."""

    min_bottoms = 1  # 2 unless the net is FlowNet's: checked in setup
    exact_tops = 1
    takes_net = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        if len(bottom_shapes) < 2:
            if not descends(net_lineage(self.net_so_far), "flownet") or self.param.eltwise_param.operation == MAX:
                raise self.error(f"takes at least 2 bottom blob(s); received {len(bottom_shapes)} (one is FlowNet "
                                 "2.0's form, for SUM or PROD in a net of lineage 'flownet' or one built on it)")
        ep = self.param.eltwise_param
        self.op, self.stable = ep.operation, ep.stable_prod_grad
        if len(ep.coeff) not in (0, len(bottom_shapes)):
            raise self.error(f"takes one coefficient per bottom blob ({len(bottom_shapes)}); received {len(ep.coeff)}")
        if len(ep.coeff) and self.op == PROD:
            raise self.error("only takes coefficients for summation")
        self.coeff = [float(c) for c in ep.coeff] or [1.0] * len(bottom_shapes)
        self.mismatch_hint = darknet2caffe_hint(self.net_so_far)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        if any(tuple(s) != tuple(bottom_shapes[0]) for s in bottom_shapes):
            raise self.error(f"all bottoms must have the same shape; received {bottom_shapes}"
                             f"{getattr(self, 'mismatch_hint', '')}")
        return [tuple(bottom_shapes[0])]

    def forward(self, *bottoms: Tensor) -> Tensor:
        if self.op == PROD:
            return _ProdFn.apply(self.stable, *bottoms)
        if self.op == SUM:
            top = None
            for c, b in zip(self.coeff, bottoms):
                term = b if c == 1.0 else b * c
                top = term if top is None else top + term
            return top
        a, b = bottoms[0], bottoms[1]
        top = torch.where(a > b, a, b)
        for b in bottoms[2:]:
            top = torch.where(b > top, b, top)
        return top

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(23)
        xs = [r.standard_normal((2, 3)) for _ in range(3)]
        base = 'name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" '
        return [Example(base + "eltwise_param { operation: PROD }", xs, grad_bottoms=(0, 1, 2)),
                Example(base + "eltwise_param { operation: PROD stable_prod_grad: false }", xs, grad_bottoms=(0, 1, 2)),
                Example(base + "eltwise_param { operation: SUM coeff: 1 coeff: -2 coeff: 0.5 }", xs, grad_bottoms=(0, 1, 2)),
                Example(base + "eltwise_param { operation: MAX }", xs, grad_bottoms=(0, 1, 2))]


@register_layer("Reduction")
class Reduction(Layer):
    """``reduction_param {operation axis coeff}``: reduces ``axis`` and every axis after it; the top is
    the leading axes (shape () for axis 0). MEAN is SUM with ``coeff / count`` (in float, as Caffe)."""

    exact_bottoms = 1
    exact_tops = 1

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = bottom_shapes[0]
        rp = self.param.reduction_param
        if rp.operation not in (R_SUM, R_ASUM, R_SUMSQ, R_MEAN):  # TSN's TOPK is BatchReduction's alone
            raise self.error(f"reduction_param.operation {rp.operation} is not one of SUM, ASUM, SUMSQ, MEAN "
                             "(TOPK is read by TSN's BatchReduction only)")
        self.axis = canonical_axis(rp.axis, len(x), self) if x else 0
        coeff = np.float32(rp.coeff)
        if rp.operation == R_MEAN:
            coeff = coeff / np.float32(math.prod(x[self.axis:]))
        self.coeff = float(np.float32(coeff))
        return [x[: self.axis]]

    def forward(self, x: Tensor) -> Tensor:
        self.reshape([tuple(x.shape)])
        op = self.param.reduction_param.operation
        flat = x.reshape(x.shape[: self.axis] + (-1,))
        if op == R_ASUM:
            flat = flat.abs()
        elif op == R_SUMSQ:
            flat = flat * flat
        top = flat.sum(-1)
        return top if self.coeff == 1.0 else top * self.coeff

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(28)
        x = r.uniform(0.1, 1, (2, 3, 2)) * r.choice([-1, 1], (2, 3, 2))
        base = 'name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param '
        return [Example(base + "{ operation: ASUM axis: 1 coeff: 2 }", [x]),
                Example(base + "{ operation: SUMSQ }", [x]),
                Example(base + "{ operation: MEAN axis: -1 }", [x])]


@register_layer("Silence")
class Silence(Layer):
    """Consumes its bottoms, produces nothing (their diffs from it are zero)."""

    min_bottoms = 1
    exact_tops = 0

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return []

    def forward(self, *bottoms: Tensor) -> list[Tensor]:
        return []

    @classmethod
    def examples(cls) -> list[Example]:
        return [Example('name: "s" type: "Silence" bottom: "x"', [np.ones((2, 2))], grad_bottoms=())]


@register_layer("Parameter")
class Parameter(Layer):
    """``parameter_param.shape``: a learnable blob exposed as the top, filled by ``blob_filler``
    (happynear/caffe-windows' ``parameter_layer.hpp``, NormFace's class centers; unset: the default
    constant 0, the zeros of upstream's uninitialized blob) until weights load."""

    exact_bottoms = 0
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.parameter_param
        shape = proto_shape(p.shape, "parameter_param.shape")
        self.add_blob(fill(p.blob_filler, shape) if p.HasField("blob_filler") else torch.zeros(shape))

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [tuple(self.blobs[0].shape)]

    def forward(self) -> Tensor:  # type: ignore[override]
        p = self.blobs[0]
        return p.view_as(p)  # a view: the net's blob-diff bookkeeping never touches the param's own .grad

    @classmethod
    def examples(cls) -> list[Example]:
        return [Example('name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 2 dim: 3 } }', [],
                        grad_bottoms=())]


@register_layer("BatchReindex")
class BatchReindex(Layer):
    """``top[i] = bottom0[permut[i]]`` along axis 0; diffs accumulate back; the index bottom gets none."""

    exact_bottoms = 2
    exact_tops = 1

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x, idx = bottom_shapes
        if len(idx) != 1:
            raise self.error(f"the index bottom must be 1-D; received shape {idx}")
        return [(idx[0],) + tuple(x[1:])]

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:  # type: ignore[override]
        return x.index_select(0, idx.detach().to(torch.int64))

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(29)
        return [Example('name: "br" type: "BatchReindex" bottom: "x" bottom: "i" top: "y"',
                        [r.standard_normal((3, 2)), np.array([2.0, 0, 2, 1])])]


@register_layer("Filter")
class Filter(Layer):
    """Keeps the items (axis 0) whose selector (last bottom) is non-zero, for every other bottom.
    The top shape depends on the data: ``reshape`` answers with the whole batch before the first
    forward (as Caffe's first Reshape does) and with the last forward's count after it."""

    value_dependent_shape = True

    min_bottoms = 2
    min_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        if len(self.param.top) != len(bottom_shapes) - 1:
            raise self.error(f"needs one top per filtered bottom ({len(bottom_shapes) - 1}); received {len(self.param.top)}")
        self.n_selected: int | None = None

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        sel = bottom_shapes[-1]
        if any(d != 1 for d in sel[1:]):
            raise self.error(f"selector blob dimensions must be singletons (1), except the first; received {sel}")
        if any(s[0] != sel[0] for s in bottom_shapes[:-1]):
            raise self.error(f"each bottom should have the same 0th dimension as the selector blob; received {bottom_shapes}")
        n = sel[0] if self.n_selected is None else self.n_selected
        return [(n,) + tuple(s[1:]) for s in bottom_shapes[:-1]]

    def forward(self, *bottoms: Tensor):  # type: ignore[override]
        sel = bottoms[-1].detach().reshape(-1)
        idx = torch.nonzero(sel != 0).reshape(-1)
        self.n_selected = int(idx.numel())
        return [b.index_select(0, idx) for b in bottoms[:-1]]

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(30)
        return [Example('name: "f" type: "Filter" bottom: "x" bottom: "y" bottom: "sel" top: "fx" top: "fy"',
                        [r.standard_normal((3, 2)), r.standard_normal((3, 2, 2)), np.array([1.0, 1.0, 2.0])],
                        grad_bottoms=(0, 1))]


@register_layer("Embed")
class Embed(Layer):
    """``embed_param {num_output input_dim bias_term weight_filler bias_filler}``: weight (input_dim,
    num_output), bias (num_output,); top = bottom shape + (num_output,). The index bottom gets no diff."""

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        ep = self.param.embed_param
        if ep.num_output <= 0 or ep.input_dim <= 0:
            raise self.error(f"num_output and input_dim must be positive; received {ep.num_output}, {ep.input_dim}")
        self.add_blob(fill(ep.weight_filler, (ep.input_dim, ep.num_output)))
        if ep.bias_term:
            self.add_blob(fill(ep.bias_filler, (ep.num_output,)))

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0]) + (int(self.param.embed_param.num_output),)]

    def forward(self, idx: Tensor) -> Tensor:
        out = F.embedding(idx.detach().to(torch.int64), self.blobs[0])
        return out + self.blobs[1] if len(self.blobs) > 1 else out

    @classmethod
    def examples(cls) -> list[Example]:
        return [Example('name: "e" type: "Embed" bottom: "i" top: "y" embed_param { num_output: 3 input_dim: 4 '
                        'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
                        [np.array([[0.0, 3], [2, 0]])], grad_bottoms=())]


@register_layer("DummyData")
class DummyData(Layer):
    """``dummy_data_param {data_filler shape | num channels height width}``: 0, 1 or one filler per top
    (default constant 0). Constant fillers fill once; any other filler refills on every forward."""

    exact_bottoms = 0
    min_tops = 1
    produces_host_data = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        dp = self.param.dummy_data_param
        n = len(self.param.top)
        if len(dp.data_filler) not in (0, 1, n):
            raise self.error(f"number of data fillers must be 0, 1 or {n} (one per top); received {len(dp.data_filler)}")
        legacy = [dp.num, dp.channels, dp.height, dp.width]
        if any(len(f) for f in legacy):
            if len(dp.shape):
                raise self.error("both shape and legacy fields were specified")
            for name, f in zip(("num", "channels", "height", "width"), legacy):
                if len(f) not in (1, n):
                    raise self.error(f"must specify '{name}' once, or once per top blob ({n}); specified {len(f)}")
            self.shapes = [check_shape([int(f[0] if len(f) == 1 else f[i]) for f in legacy],
                                       f"dummy_data_param num/channels/height/width of top {i}", allow_zero=False)
                           for i in range(n)]
        else:
            if len(dp.shape) not in (1, n):
                raise self.error(f"must specify 'shape' once, or once per top blob ({n}); specified {len(dp.shape)}")
            self.shapes = [proto_shape(dp.shape[j], f"dummy_data_param.shape[{j}]", allow_zero=False)
                           for j in ([0] * n if len(dp.shape) == 1 else range(n))]
        zero = caffe_pb2.FillerParameter(type="constant", value=0.0)
        self.fillers = [dp.data_filler[0 if len(dp.data_filler) == 1 else i] if len(dp.data_filler) else zero
                        for i in range(n)]
        for i, (f, s) in enumerate(zip(self.fillers, self.shapes)):
            self.register_buffer(f"top{i}", fill(f, s) if f.type == "constant" else torch.zeros(0), persistent=False)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return list(self.shapes)

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        return [getattr(self, f"top{i}") if f.type == "constant" else fill(f, s)
                for i, (f, s) in enumerate(zip(self.fillers, self.shapes))]

    def held_value(self, j: int) -> Tensor | None:
        """Top ``j``'s tensor when its filler is constant (Caffe fills it at setup and leaves it, so data a
        script writes into it before the first forward stays); None when it refills every forward."""
        return self._buffers[f"top{j}"] if self.fillers[j].type == "constant" else None

    @classmethod
    def examples(cls) -> list[Example]:
        return [Example('name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { data_filler { type: "constant" '
                        'value: 2 } data_filler { type: "gaussian" } shape { dim: 2 dim: 3 } shape { dim: 4 } }', [],
                        grad_bottoms=()),
                Example('name: "d" type: "DummyData" top: "a" dummy_data_param { num: 2 channels: 3 height: 1 width: 2 }',
                        [], grad_bottoms=())]
