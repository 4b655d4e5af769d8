"""Blob shape plumbing: Concat, Slice, Split, Flatten, Reshape, Crop, Tile.

Tops that are views of a bottom (Slice, Flatten, Reshape, Crop, Split) carry gradients back by autograd.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from google.protobuf import text_format
from torch import Tensor

from neocaffe.layers import hed
from neocaffe.layers.base import Example, Layer, NetSoFar, Shape, canonical_axis
from neocaffe.layers.lineage import darknet2caffe_hint
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2

log = logging.getLogger("neocaffe.layers")


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
    takes_net = True  # only for the shape-mismatch error's hint (lineage.darknet2caffe_hint)

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.mismatch_hint = darknet2caffe_hint(self.net_so_far)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        first = bottom_shapes[0]
        self.axis = _legacy_axis(self, self.param.concat_param, "concat_dim", len(first))
        total = 0
        for s in bottom_shapes:
            if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first)) if i != self.axis):
                raise self.error(f"all inputs must have the same shape, except at concat axis {self.axis}; "
                                 f"received {bottom_shapes}{getattr(self, 'mismatch_hint', '')}")
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

    def lean_kernel(self, bottoms: Sequence[Tensor]) -> Callable[..., Any] | None:
        """The bottom itself under every top name: the lean path never writes a Split's tops in place
        (they are not fresh), so no view is needed to keep them apart."""
        n = self.n_tops
        return lambda x: (x,) * n

    @classmethod
    def examples(cls) -> list[Example]:
        return [Example('name: "sp" type: "Split" bottom: "x" top: "a" top: "b"',
                        [np.random.default_rng(22).standard_normal((2, 3))])]


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
        if e < a:  # Caffe's Blob::count(start, end) CHECK_LE(start, end)
            raise self.error(f"flatten_param.end_axis {fp.end_axis} (axis {e}) comes before flatten_param.axis "
                             f"{fp.axis} (axis {a}) of the {len(x)}-D bottom {tuple(x)}; expected axis <= end_axis")
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
    """BVLC's ``crop_param {axis offset}``: axes from ``axis`` on are cropped to bottom 1's size at ``offset``
    (one for all axes or one per axis). Or s9xie/hed's Crop, which finds the height and width offsets from
    the coordinate maps of the layers below its bottoms (:mod:`neocaffe.layers.hed`: the rule that tells
    the two apart, and the fork's computation). Only bottom 0 gets a diff."""

    exact_bottoms = 2
    exact_tops = 1
    takes_net = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        net = self.net_so_far
        self.hed_offsets: tuple[int, int] | None = None
        try:
            if hed.is_hed(self.param, "crop_param", net, hed.COORD_MAP_CROP_LINEAGES):
                self.hed_offsets = hed.crop_offsets(self.param, net)  # type: ignore[arg-type]
                return
        except ValueError as e:
            raise self.error(f"HED's Crop: {e}") from None
        if net is not None and not self.param.HasField("crop_param"):
            try:
                theirs = hed.crop_offsets(self.param, net)
            except ValueError:
                return
            if theirs != (0, 0):
                log.warning("layer '%s' (Crop) sets no crop_param, so it cuts at offset 0 as BVLC's Crop; HED's "
                            "Crop would align its bottoms at offsets %s (height, width): if this is a HED net, set "
                            "lineage: \"hed\" in the net", self.name, theirs)

    def window(self, x: Shape, ref: Shape) -> tuple[int, list[int]]:
        """(first cropped axis, offset of each axis from it on) for bottoms of shapes ``x`` and ``ref``."""
        if self.hed_offsets is not None:
            why = hed.check_crop_bottoms(x, ref, self.hed_offsets)
            if why is not None:
                raise self.error(why)
            return 2, list(self.hed_offsets)
        cp = self.param.crop_param
        start = canonical_axis(cp.axis, len(x), self)
        if len(ref) != len(x):
            raise self.error(f"both bottoms must have the same number of axes; received {x} and {ref}")
        if len(cp.offset) > 1 and start + len(cp.offset) != len(x):
            raise self.error(f"number of offset values ({len(cp.offset)}) must equal the number of dimensions following axis")
        offs = [int(cp.offset[0] if len(cp.offset) == 1 else (cp.offset[i - start] if len(cp.offset) else 0))
                for i in range(start, len(x))]
        for i, off in zip(range(start, len(x)), offs):
            if x[i] - off < ref[i]:
                raise self.error(f"invalid crop parameters in dimension {i}: {x[i]} - offset {off} < {ref[i]}")
        return start, offs

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x, ref = bottom_shapes
        start, offs = self.window(x, ref)
        self.index: list[slice] = [slice(None)] * start + [slice(o, o + ref[i]) for i, o in enumerate(offs, start)]
        return [tuple(x[:start]) + tuple(ref[start:])]

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:  # type: ignore[override]
        self.reshape([tuple(x.shape), tuple(ref.shape)])
        return x[tuple(self.index)]

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(26)
        # HED's: bottom 0 is a pad-3 3x3 convolution of bottom 1's input, so the maps put it 2 pixels in
        conv = text_format.Parse('name: "conv" type: "Convolution" bottom: "ref" top: "x" '
                                 'convolution_param { num_output: 2 kernel_size: 3 pad: 3 }', caffe_pb2.LayerParameter())
        net = NetSoFar(caffe_pb2.NetParameter(lineage="hed"), (conv,), {"ref": (2, 1, 3, 4), "x": (2, 2, 7, 8)})
        return [Example('name: "c" type: "Crop" bottom: "x" bottom: "ref" top: "y" crop_param { axis: 1 offset: 1 offset: 0 }',
                        [r.standard_normal((2, 4, 3)), r.standard_normal((2, 2, 2))]),
                Example('name: "c" type: "Crop" bottom: "x" bottom: "ref" top: "y"',
                        [r.standard_normal((2, 2, 7, 8)), r.standard_normal((2, 1, 3, 4))], net=net)]


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
