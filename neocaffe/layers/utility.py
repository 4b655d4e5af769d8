"""Blob plumbing: Concat, Slice, Split, Eltwise, Flatten, Reshape, Crop, Tile, Reduction, Silence, Parameter,
BatchReindex, Filter, Embed, DummyData.

Tops that are views of a bottom (Slice, Flatten, Reshape, Crop, Split) carry gradients back by autograd;
index bottoms (BatchReindex's permutation, Filter's selector, Embed's indices) never get a diff.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.fillers import fill
from neocaffe.layers.loss import canonical_axis
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2

PROD, SUM, MAX = 0, 1, 2  # EltwiseParameter.EltwiseOp
R_SUM, R_ASUM, R_SUMSQ, R_MEAN = 1, 2, 3, 4  # ReductionParameter.ReductionOp


def _legacy_axis(layer: Layer, msg, legacy: str, n_axes: int) -> int:
    """``axis`` or the deprecated ``concat_dim``/``slice_dim`` (not both), as Caffe resolves them."""
    if msg.HasField("axis") and msg.HasField(legacy):
        raise layer.error(f"either axis or {legacy} should be specified; not both")
    if msg.HasField(legacy):
        axis = getattr(msg, legacy)
        if not 0 <= axis < n_axes:
            raise layer.error(f"{legacy} {axis} out of range for a {n_axes}-D bottom")
        return axis
    return canonical_axis(msg.axis, n_axes, layer)


@register_layer("Concat")
class Concat(Layer):
    """``concat_param.axis`` (or legacy ``concat_dim``); all other dimensions must agree."""

    min_bottoms = 1
    exact_tops = 1

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        first = bottom_shapes[0]
        self.axis = _legacy_axis(self, self.param.concat_param, "concat_dim", len(first))
        total = 0
        for s in bottom_shapes:
            if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first)) if i != self.axis):
                raise self.error(f"all inputs must have the same shape, except at concat axis {self.axis}; "
                                 f"received {bottom_shapes}")
            total += s[self.axis]
        return [first[: self.axis] + (total,) + first[self.axis + 1:]]

    def forward(self, *bottoms: Tensor) -> Tensor:
        if len(bottoms) == 1:
            return bottoms[0]
        if not torch.compiler.is_compiling():  # compiled: the axis found at setup (reshape reads protobuf)
            self.reshape([tuple(b.shape) for b in bottoms])
        return torch.cat(bottoms, dim=self.axis)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(20)
        return [Example('name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "y"',
                        [r.standard_normal((2, 3, 2)), r.standard_normal((2, 1, 2))], grad_bottoms=(0, 1)),
                Example('name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { concat_dim: 0 }',
                        [r.standard_normal((2, 3)), r.standard_normal((1, 3))], grad_bottoms=(0, 1))]


@register_layer("Slice")
class Slice(Layer):
    """``slice_param {axis (or slice_dim) slice_point}``; no slice points: equal parts, one per top."""

    exact_bottoms = 1
    min_tops = 1

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = bottom_shapes[0]
        sp = self.param.slice_param
        self.axis = _legacy_axis(self, sp, "slice_dim", len(x))
        n_top, length = len(self.param.top), x[self.axis]
        if len(sp.slice_point):
            if len(sp.slice_point) != n_top - 1:
                raise self.error(f"needs {n_top - 1} slice_point(s) for {n_top} tops; received {len(sp.slice_point)}")
            bounds = [0, *sp.slice_point, length]
            if any(b <= a for a, b in zip(bounds[:-2], bounds[1:-1])) or bounds[-2] > length:
                raise self.error(f"slice points {list(sp.slice_point)} must increase within axis length {length}")
            self.sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        else:
            if length % n_top:
                raise self.error(f"number of top blobs ({n_top}) should evenly divide input slice axis ({length})")
            self.sizes = [length // n_top] * n_top
        return [x[: self.axis] + (s,) + x[self.axis + 1:] for s in self.sizes]

    def forward(self, x: Tensor):  # type: ignore[override]
        if not torch.compiler.is_compiling():  # compiled: sizes found at setup; torch.split checks they fit
            self.reshape([tuple(x.shape)])
        return list(torch.split(x, self.sizes, dim=self.axis))

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(21)
        return [Example('name: "s" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { slice_point: 1 }',
                        [r.standard_normal((2, 4, 2))]),
                Example('name: "s" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { slice_dim: 0 }',
                        [r.standard_normal((4, 3))])]


@register_layer("Split")
class Split(Layer):
    """Copies its bottom to every top (the net inserts it for multi-consumer blobs); diffs sum."""

    exact_bottoms = 1
    min_tops = 1
    allow_in_place = False

    def forward(self, x: Tensor):  # type: ignore[override]
        return [x.view_as(x) for _ in range(self.n_tops)]

    @classmethod
    def examples(cls) -> list[Example]:
        return [Example('name: "sp" type: "Split" bottom: "x" top: "a" top: "b"',
                        [np.random.default_rng(22).standard_normal((2, 3))])]


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
    wins ties with bottom 0 (``a > b`` keeps a), later bottoms must be strictly greater to win."""

    min_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        ep = self.param.eltwise_param
        self.op, self.stable = ep.operation, ep.stable_prod_grad
        if len(ep.coeff) not in (0, len(bottom_shapes)):
            raise self.error(f"takes one coefficient per bottom blob ({len(bottom_shapes)}); received {len(ep.coeff)}")
        if len(ep.coeff) and self.op == PROD:
            raise self.error("only takes coefficients for summation")
        self.coeff = [float(c) for c in ep.coeff] or [1.0] * len(bottom_shapes)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        if any(tuple(s) != tuple(bottom_shapes[0]) for s in bottom_shapes):
            raise self.error(f"all bottoms must have the same shape; received {bottom_shapes}")
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


@register_layer("Flatten")
class Flatten(Layer):
    """``flatten_param {axis end_axis}``: axes axis..end_axis become one."""

    exact_bottoms = 1
    exact_tops = 1
    allow_in_place = False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = bottom_shapes[0]
        fp = self.param.flatten_param
        a, e = canonical_axis(fp.axis, len(x), self), canonical_axis(fp.end_axis, len(x), self)
        self.shape = x[:a] + (math.prod(x[a:e + 1]),) + x[e + 1:]
        return [self.shape]

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(self.reshape([tuple(x.shape)])[0])

    @classmethod
    def examples(cls) -> list[Example]:
        return [Example('name: "f" type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 1 end_axis: 2 }',
                        [np.random.default_rng(24).standard_normal((2, 3, 2, 2))])]


@register_layer("Reshape")
class Reshape(Layer):
    """``reshape_param {shape axis num_axes}``: 0 copies the bottom dimension, one -1 is inferred."""

    exact_bottoms = 1
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.dims = [int(d) for d in self.param.reshape_param.shape.dim]
        if sum(d == -1 for d in self.dims) > 1:
            raise self.error(f"new shape contains multiple -1 dims: {self.dims}")
        if any(d < -1 for d in self.dims):
            raise self.error(f"shape dimensions must be >= -1; received {self.dims}")

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = bottom_shapes[0]
        rp = self.param.reshape_param
        start = rp.axis if rp.axis >= 0 else len(x) + rp.axis + 1
        if not 0 <= start <= len(x):
            raise self.error(f"axis {rp.axis} out of range for a {len(x)}-D bottom")
        if rp.num_axes < -1:
            raise self.error(f"num_axes must be >= -1; received {rp.num_axes}")
        end = len(x) if rp.num_axes == -1 else start + rp.num_axes
        if end > len(x):
            raise self.error(f"axis + num_axes ({end}) exceeds the bottom's {len(x)} axes")
        new = list(self.dims)
        for i, d in enumerate(new):
            if d == 0:
                if start + i >= len(x):
                    raise self.error("new shape contains a 0, but there was no corresponding bottom axis to copy")
                new[i] = x[start + i]
        if -1 in new:
            known = math.prod(d for d in new if d != -1) * math.prod(x[:start]) * math.prod(x[end:])
            if known == 0 or math.prod(x) % known:
                raise self.error(f"cannot infer -1 in {self.dims}: bottom count {math.prod(x)} not divisible by {known}")
            new[new.index(-1)] = math.prod(x) // known
        top = x[:start] + tuple(new) + x[end:]
        if math.prod(top) != math.prod(x):
            raise self.error(f"output count {math.prod(top)} {top} must match input count {math.prod(x)} {x}")
        return [top]

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(self.reshape([tuple(x.shape)])[0])

    @classmethod
    def examples(cls) -> list[Example]:
        return [Example('name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: -1 } axis: 1 }',
                        [np.random.default_rng(25).standard_normal((2, 3, 2))])]


@register_layer("Crop")
class Crop(Layer):
    """``crop_param {axis offset}``: axes from ``axis`` on are cropped to bottom 1's size at ``offset``
    (one for all axes or one per axis). Only bottom 0 gets a diff."""

    exact_bottoms = 2
    exact_tops = 1

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x, ref = bottom_shapes
        cp = self.param.crop_param
        start = canonical_axis(cp.axis, len(x), self)
        if len(ref) != len(x):
            raise self.error(f"both bottoms must have the same number of axes; received {x} and {ref}")
        if len(cp.offset) > 1 and start + len(cp.offset) != len(x):
            raise self.error(f"number of offset values ({len(cp.offset)}) must equal the number of dimensions following axis")
        self.index: list[slice] = []
        for i in range(len(x)):
            if i < start:
                self.index.append(slice(None))
                continue
            off = cp.offset[0] if len(cp.offset) == 1 else (cp.offset[i - start] if len(cp.offset) else 0)
            if x[i] - off < ref[i]:
                raise self.error(f"invalid crop parameters in dimension {i}: {x[i]} - offset {off} < {ref[i]}")
            self.index.append(slice(off, off + ref[i]))
        return [tuple(x[:start]) + tuple(ref[start:])]

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:  # type: ignore[override]
        self.reshape([tuple(x.shape), tuple(ref.shape)])
        return x[tuple(self.index)]

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(26)
        return [Example('name: "c" type: "Crop" bottom: "x" bottom: "ref" top: "y" crop_param { axis: 1 offset: 1 offset: 0 }',
                        [r.standard_normal((2, 4, 3)), r.standard_normal((2, 2, 2))])]


@register_layer("Tile")
class Tile(Layer):
    """``tile_param {axis tiles}``: the block from ``axis`` on is repeated ``tiles`` times."""

    exact_bottoms = 1
    exact_tops = 1

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = bottom_shapes[0]
        tp = self.param.tile_param
        if tp.tiles <= 0:
            raise self.error(f"number of tiles must be positive; received {tp.tiles}")
        self.axis = canonical_axis(tp.axis, len(x), self)
        return [x[: self.axis] + (x[self.axis] * tp.tiles,) + x[self.axis + 1:]]

    def forward(self, x: Tensor) -> Tensor:
        self.reshape([tuple(x.shape)])
        reps = [1] * x.dim()
        reps[self.axis] = self.param.tile_param.tiles
        return x.repeat(*reps)

    @classmethod
    def examples(cls) -> list[Example]:
        return [Example('name: "t" type: "Tile" bottom: "x" top: "y" tile_param { axis: 1 tiles: 3 }',
                        [np.random.default_rng(27).standard_normal((2, 2, 3))])]


@register_layer("Reduction")
class Reduction(Layer):
    """``reduction_param {operation axis coeff}``: reduces ``axis`` and every axis after it; the top is
    the leading axes (shape () for axis 0). MEAN is SUM with ``coeff / count`` (in float, as Caffe)."""

    exact_bottoms = 1
    exact_tops = 1

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = bottom_shapes[0]
        rp = self.param.reduction_param
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
    """``parameter_param.shape``: a learnable blob (zeros until weights load) exposed as the top."""

    exact_bottoms = 0
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.add_blob(torch.zeros(tuple(int(d) for d in self.param.parameter_param.shape.dim)))

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
            self.shapes = [tuple(int(f[0] if len(f) == 1 else f[i]) for f in legacy) for i in range(n)]
        else:
            if len(dp.shape) not in (1, n):
                raise self.error(f"must specify 'shape' once, or once per top blob ({n}); specified {len(dp.shape)}")
            self.shapes = [tuple(int(d) for d in dp.shape[0 if len(dp.shape) == 1 else i].dim) for i in range(n)]
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

    @classmethod
    def examples(cls) -> list[Example]:
        return [Example('name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { data_filler { type: "constant" '
                        'value: 2 } data_filler { type: "gaussian" } shape { dim: 2 dim: 3 } shape { dim: 4 } }', [],
                        grad_bottoms=()),
                Example('name: "d" type: "DummyData" top: "a" dummy_data_param { num: 2 channels: 3 height: 1 width: 2 }',
                        [], grad_bottoms=())]
