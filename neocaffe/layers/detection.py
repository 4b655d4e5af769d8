"""SSD's shape and prior layers: Permute, Normalize, PriorBox (lineage: weiliu89/caffe, branch ssd).

Semantics from the fork's ``src/caffe/layers/permute_layer.cpp``, ``normalize_layer.cpp`` and
``prior_box_layer.cpp``. The type ``Normalize`` is also happynear's (AM-Softmax's and NormFace's Caffe):
one registered class, which tells the two apart by ``norm_param`` / ``normalize_param``, its tops and its
bottom (``neocaffe.layers.normface``: the rules and happynear's arithmetic). Permute's backward is the inverse permutation (autograd). Normalize's is the
fork's formula, ``dx = scale * (dy - x sum(x dy) / norm^2) / norm`` and ``dscale = sum(y dy) /
scale``: the mathematical gradient when the scale is one value, not when it is one per channel (the
fork leaves the scale out of the sum), so a ``torch.autograd.Function`` computes it. PriorBox has no
backward (its top depends on shapes only).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers import _faceboxes_priors as faceboxes
from neocaffe.layers import _textboxes_v1
from neocaffe.layers.base import Example, Layer, NetSoFar, Shape
from neocaffe.layers.fillers import fill
from neocaffe.layers.lineage import net_lineage
from neocaffe.layers.normface import HappynearNormalize, happynear_examples, normalize_lineage
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2


def _legacy_hw(shape: Shape) -> tuple[int, int]:
    """Blob::height(), Blob::width(): axes 2 and 3, 1 where the blob has fewer axes."""
    return (shape[2] if len(shape) > 2 else 1), (shape[3] if len(shape) > 3 else 1)


@register_layer("Permute")
class Permute(Layer):
    """``permute_param.order``: the new order of the axes; axes it leaves out follow in their order."""

    exact_bottoms = 1
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        n = len(bottom_shapes[0])
        orders: list[int] = []
        for o in self.param.permute_param.order:
            if o >= n:
                raise self.error(f"permute_param.order {o} should be less than the input dimension {n}")
            if o in orders:
                raise self.error(f"permute_param.order has duplicate orders: {list(self.param.permute_param.order)}")
            orders.append(int(o))
        self.order = tuple(orders + [i for i in range(n) if i not in orders])

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0][o] for o in self.order)]

    def forward(self, x: Tensor) -> Tensor:
        if self.order == tuple(range(x.dim())):
            return x
        return x.permute(self.order).contiguous()

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(140)
        return [Example('name: "p" type: "Permute" bottom: "x" top: "y" permute_param { order: 0 order: 2 order: 3 order: 1 }',
                        [r.standard_normal((2, 3, 4, 5))]),
                Example('name: "p" type: "Permute" bottom: "x" top: "y" permute_param { order: 1 }',
                        [r.standard_normal((2, 3, 4))])]


class _NormalizeFn(torch.autograd.Function):
    """Normalize on x viewed as (N, C, S) with scale of shape () or (1, C, 1); ``dims``: the reduced axes."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, dims: tuple[int, ...], eps: float, across: bool):  # type: ignore[override]
        norm = (x.square().sum(dim=dims, keepdim=True) + eps).sqrt()
        y = (x * (1.0 / norm) if across else x / norm) * scale
        ctx.save_for_backward(x, scale, norm, y)
        ctx.dims = dims
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        x, scale, norm, y = ctx.saved_tensors
        dx = dscale = None
        if ctx.needs_input_grad[0]:
            a = (x * dy).sum(dim=ctx.dims, keepdim=True)
            dx = (dy - x * (a / norm / norm)) * (1.0 / norm) * scale
        if ctx.needs_input_grad[1]:
            yd = y * dy
            dscale = (yd.sum() if scale.dim() == 0 else yd.sum(dim=(0, 2), keepdim=True)) / scale
        return dx, dscale, None, None, None


@register_layer("Normalize")
class Normalize(Layer):
    """SSD's: L2 normalization (``norm_param``): over C*H*W per image (``across_spatial``, default) or
    over channels per location, plus ``eps`` under the root; then times a learned scale, one value
    (``channel_shared``, default) or one per channel (``scale_filler``, default constant 1). One top.
    happynear's (``normalize_param``, or no parameter and two tops or a 2-axis bottom): see
    ``neocaffe.layers.normface``; ``self.lineage`` says which."""

    exact_bottoms = 1
    min_tops = 1
    max_tops = 2  # happynear's may output the norm

    def setup(self, bottom_shapes: list[Shape]) -> None:
        shape = bottom_shapes[0]
        if len(shape) < 2:
            raise self.error(f"number of axes of bottom blob must be >= 2; received {len(shape)}")
        try:
            self.lineage = normalize_lineage(self.param, shape, self.n_tops)
        except ValueError as e:
            raise self.error(str(e)) from None
        if self.lineage == "happynear":
            self.happynear = HappynearNormalize(self, shape)
            return
        if self.n_tops != 1:
            raise self.error(f"SSD's Normalize (norm_param) takes exactly 1 top; received {self.n_tops}")
        p = self.param.norm_param
        self.across_spatial = p.across_spatial
        self.channel_shared = p.channel_shared
        self.eps = float(p.eps)
        if p.HasField("scale_filler"):
            filler = p.scale_filler
        else:
            filler = caffe_pb2.FillerParameter(type="constant", value=1.0)
        self.add_blob(fill(filler, () if self.channel_shared else (shape[1],)))

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        if len(bottom_shapes[0]) < 2:
            raise self.error("number of axes of bottom blob must be >= 2")
        if self.lineage == "happynear":
            return HappynearNormalize.top_shapes(self, bottom_shapes[0])
        return [tuple(bottom_shapes[0])]

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if self.lineage == "happynear":
            return self.happynear(x, self.n_tops)
        n, c = x.shape[0], x.shape[1]
        scale = self.blobs[0] if self.channel_shared else self.blobs[0].view(1, c, 1)
        dims = (1, 2) if self.across_spatial else (1,)
        y = _NormalizeFn.apply(x.reshape(n, c, -1), scale, dims, self.eps, self.across_spatial)
        return y.reshape(x.shape)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(141)
        return [Example('name: "n" type: "Normalize" bottom: "x" top: "y" '
                        'norm_param { across_spatial: false channel_shared: false scale_filler { type: "constant" value: 1.5 } }',
                        [r.standard_normal((2, 3, 4, 5))]),
                Example('name: "n" type: "Normalize" bottom: "x" top: "y" norm_param { scale_filler { type: "constant" value: 20 } }',
                        [r.standard_normal((2, 3, 2, 3))])] + happynear_examples()


@register_layer("PriorBox")
class PriorBox(Layer):
    """SSD's default boxes for a feature map (bottom 0) over the image (bottom 1, or ``img_size`` /
    ``img_h``, ``img_w``): top (1, 2, H*W*num_priors*4), boxes then variances. Per cell and per
    ``min_size``: the min square, the sqrt(min*max) square when ``max_size`` is given, then one box per
    aspect ratio (1 first, each new ratio followed by its flip). The fork casts ``min_size`` and
    ``max_size`` to int before using them.

    TextBoxes++'s ``denser_prior_boxes: true`` (lineage: MhLiao/TextBoxes_plusplus @ 39d4898,
    ``src/caffe/layers/prior_box_layer.cpp``): every prior is followed by a copy of the same size centred
    at ``(h + 1) * step_h`` instead of ``(h + offset) * step_h`` (half a cell lower with the default
    offset), so a cell has twice the priors. Unset or false: SSD's priors.

    TextBoxes v1's (MhLiao/TextBoxes @ fd4d7a96) in a net of lineage ``"textboxes_v1"``: always doubled as
    above, with float ``min_size``/``max_size`` and ``clip`` true by default (``neocaffe.layers._textboxes_v1``).

    FaceBoxes' densified priors in a net of lineage ``"faceboxes"`` (no field tells them from SSD's):
    ``neocaffe.layers._faceboxes_priors``."""

    exact_bottoms = 2
    exact_tops = 1
    allow_in_place = False
    takes_net = True  # FaceBoxes' form is told by the net's lineage

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.prior_box_param
        if not len(p.min_size):
            raise self.error("prior_box_param: must provide min_size")
        if any(m <= 0 for m in p.min_size):
            raise self.error(f"prior_box_param.min_size must be positive; received {list(p.min_size)}")
        ratios = [1.0]
        for ar in p.aspect_ratio:
            if not any(abs(ar - r) < 1e-6 for r in ratios):
                ratios.append(float(ar))
                if p.flip:
                    ratios.append(1.0 / float(np.float32(ar)))
        if len(p.max_size):
            if len(p.max_size) != len(p.min_size):
                raise self.error(f"prior_box_param needs one max_size per min_size; received "
                                 f"{len(p.max_size)} for {len(p.min_size)}")
            if any(mx <= mn for mn, mx in zip(p.min_size, p.max_size)):
                raise self.error("prior_box_param.max_size must be greater than min_size")
        # (width, height) of every prior of a cell, in the fork's order
        sizes: list[tuple[float, float]] = []
        for s, mn in enumerate(p.min_size):
            m = int(mn)
            sizes.append((m, m))
            if len(p.max_size):
                side = math.sqrt(m * int(p.max_size[s]))
                sizes.append((side, side))
            for ar in ratios:
                if abs(ar - 1.0) < 1e-6:
                    continue
                root = math.sqrt(float(np.float32(ar)))
                sizes.append((m * root, m / root))
        self.sizes = np.array(sizes, np.float32)  # stored as float, as the fork's box_width/height
        self.num_priors = len(sizes)
        if len(p.variance) > 1:
            if len(p.variance) != 4:
                raise self.error(f"prior_box_param: give one or 4 variances; received {len(p.variance)}")
        if any(v <= 0 for v in p.variance):
            raise self.error(f"prior_box_param.variance must be positive; received {list(p.variance)}")
        self.variance = [float(v) for v in p.variance] or [0.1]
        if (p.HasField("img_h") or p.HasField("img_w")) and p.HasField("img_size"):
            raise self.error("prior_box_param: either img_size or img_h/img_w should be specified; not both")
        if p.HasField("img_h") or p.HasField("img_w"):
            self.img_h, self.img_w = int(p.img_h), int(p.img_w)
            if self.img_h <= 0 or self.img_w <= 0:
                raise self.error("prior_box_param: img_h and img_w should be larger than 0")
        else:
            self.img_h = self.img_w = int(p.img_size) if p.HasField("img_size") else 0
        if (p.HasField("step_h") or p.HasField("step_w")) and p.HasField("step"):
            raise self.error("prior_box_param: either step or step_h/step_w should be specified; not both")
        if p.HasField("step_h") or p.HasField("step_w"):
            self.step_h, self.step_w = float(p.step_h), float(p.step_w)
            if self.step_h <= 0 or self.step_w <= 0:
                raise self.error("prior_box_param: step_h and step_w should be larger than 0")
        else:
            self.step_h = self.step_w = float(p.step) if p.HasField("step") else 0.0
        self.offset = float(p.offset)
        self.clip = p.clip
        self.denser = bool(p.denser_prior_boxes)  # TextBoxes++
        if self.denser:
            self.num_priors *= 2
        self.faceboxes: np.ndarray | None = None  # FaceBoxes' cell layout (dx, dy, half_w, half_h) per prior
        try:
            lineage = net_lineage(self.net_so_far)
        except ValueError:  # several forks' own types in one net without lineage: SSD's priors
            lineage = ""
        if lineage == _textboxes_v1.LINEAGE:  # TextBoxes v1: always doubled, float sizes, clip defaults true
            if p.HasField("denser_prior_boxes") and not self.denser:
                raise self.error("TextBoxes v1's PriorBox (lineage \"textboxes_v1\") always doubles its priors; "
                                 "received denser_prior_boxes: false")
            self.sizes = _textboxes_v1.sizes(p, ratios, self.error)
            self.num_priors, self.denser, self.clip = 2 * len(self.sizes), True, _textboxes_v1.clip(p)
        if lineage == "faceboxes":
            if self.denser:
                raise self.error("denser_prior_boxes (TextBoxes++) is not FaceBoxes'; received it in a net of "
                                 "lineage \"faceboxes\"")
            self.faceboxes = faceboxes.layout(list(p.min_size), list(p.max_size), ratios, self.error)
            self.num_priors = len(self.faceboxes)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        h, w = _legacy_hw(bottom_shapes[0])
        return [(1, 2, h * w * self.num_priors * 4)]

    def priors(self, feature: Shape, image: Shape) -> np.ndarray:
        """The top for a feature map of shape ``feature`` over an image of shape ``image``."""
        lh, lw = _legacy_hw(feature)
        ih, iw = _legacy_hw(image) if self.img_h == 0 or self.img_w == 0 else (self.img_h, self.img_w)
        f32 = np.float32
        if self.step_w == 0 or self.step_h == 0:
            step_w, step_h = f32(iw) / f32(lw), f32(ih) / f32(lh)
        else:
            step_w, step_h = f32(self.step_w), f32(self.step_h)
        if self.faceboxes is not None:
            return faceboxes.priors(self.faceboxes, lh, lw, ih, iw, step_w, step_h, self.offset, self.clip,
                                    self.variance)
        cx = (np.arange(lw, dtype=f32) + f32(self.offset)) * step_w           # float, as the fork
        cy = (np.arange(lh, dtype=f32) + f32(self.offset)) * step_h
        half_w = self.sizes[:, 0].astype(np.float64) / 2.0
        half_h = self.sizes[:, 1].astype(np.float64) / 2.0
        cx = cx.astype(np.float64)[None, :, None]
        cy = cy.astype(np.float64)[:, None, None]
        boxes = np.stack(np.broadcast_arrays((cx - half_w) / iw, (cy - half_h) / ih,
                                             (cx + half_w) / iw, (cy + half_h) / ih), axis=-1).astype(f32)
        if self.denser:  # TextBoxes++: each prior, then its copy centred at (h + 1.0) * step_h (float)
            cy1 = (np.arange(lh, dtype=np.float64) + 1.0) * np.float64(step_h)
            cy1 = cy1.astype(f32).astype(np.float64)[:, None, None]
            lower = np.stack(np.broadcast_arrays((cx - half_w) / iw, (cy1 - half_h) / ih,
                                                 (cx + half_w) / iw, (cy1 + half_h) / ih), axis=-1).astype(f32)
            boxes = np.stack([boxes, lower], axis=-2)
        boxes = boxes.reshape(-1)
        if self.clip:
            boxes = np.clip(boxes, 0.0, 1.0)
        var = np.resize(np.array(self.variance, f32), boxes.size)
        return np.stack([boxes, var])[None]

    def forward(self, feature: Tensor, image: Tensor) -> Tensor:
        out = self.priors(tuple(feature.shape), tuple(image.shape))
        dtype = feature.dtype if feature.is_floating_point() else torch.float32
        return torch.from_numpy(out).to(device=feature.device, dtype=dtype)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(142)
        return [Example('name: "pb" type: "PriorBox" bottom: "f" bottom: "img" top: "p" prior_box_param { min_size: 4 '
                        'max_size: 9 aspect_ratio: 2 aspect_ratio: 3 flip: true clip: true variance: 0.1 variance: 0.1 '
                        'variance: 0.2 variance: 0.2 }', [r.standard_normal((1, 2, 3, 4)), r.standard_normal((1, 3, 12, 16))],
                        grad_bottoms=(), grad_params=False),
                Example('name: "pb" type: "PriorBox" bottom: "f" bottom: "img" top: "p" prior_box_param { min_size: 3.7 '
                        'aspect_ratio: 2 flip: false img_size: 20 step: 5 offset: 0.25 }',
                        [r.standard_normal((1, 2, 4, 4)), r.standard_normal((1, 3, 7, 7))], grad_bottoms=(), grad_params=False),
                Example('name: "pb" type: "PriorBox" bottom: "f" bottom: "img" top: "p" prior_box_param { min_size: 32 '
                        'min_size: 64 min_size: 128 variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 32 }',
                        [r.standard_normal((1, 2, 2, 3)), r.standard_normal((1, 3, 64, 96))], grad_bottoms=(),
                        grad_params=False, net=NetSoFar(caffe_pb2.NetParameter(lineage="faceboxes"))),  # FaceBoxes'
                Example('name: "pb" type: "PriorBox" bottom: "f" bottom: "img" top: "p" prior_box_param { min_size: 5.5 '
                        'max_size: 9.25 aspect_ratio: 2 }', [r.standard_normal((1, 2, 3, 2)), r.standard_normal((1, 3, 12, 9))],
                        grad_bottoms=(), grad_params=False,
                        net=NetSoFar(caffe_pb2.NetParameter(lineage="textboxes_v1")))]  # TextBoxes v1
