"""PSANet's Caffe layer: ``PointwiseSpatialAttention`` (``pointwise_spatial_attention_param``).

Lineage: hszhao/PSANet @ ff91e4fb33247bc4461d792eae139fc4cdaa5f27 (the layer unchanged since the initial
commit ``c095e039``), ``src/caffe/layers/pointwise_spatial_attention_layer.{cpp,cu}``,
``include/caffe/layers/pointwise_spatial_attention_layer.hpp``; its parameter message from the fork's
``src/caffe/proto/caffe.proto`` (proto/NUMBERING.md, lineage psanet). The fork is merged into PSPNet's Caffe,
whose ``Interp`` and ``BN`` its nets also use (``neocaffe/layers/interp.py``, ``bn.py``).

Bottoms: the feature x (N, C, H, W) and the attention mask (N, mask_h * mask_w, H, W), channel
``a * mask_w + b`` being the weight of the point (a - (mask_h - 1) / 2, b - (mask_w - 1) / 2) away.
Top: like x. Fields: ``attention_mask_height`` and ``attention_mask_width`` (both or neither; odd and > 1;
neither: ``2 H - 1`` and ``2 W - 1`` of bottom 0 at set-up, kept for later shapes, as the fork's
``LayerSetUp``), ``normalization_factor`` (unset: mask_h * mask_w), ``is_softmax`` (default false),
``psa_type`` COLLECT (default) or DISTRIBUTE; with ``is_softmax`` the fork builds its internal Softmax
from a copy of this layer's LayerParameter, so ``softmax_param.axis`` (default 1) is read too.

Forward, per image, as ``PSAForward_buffer_mask_{collect,distribute}_{cpu,gpu}`` and the GEMM after them:
a zeroed (H*W, H*W) buffer gets, for every position j = (h, w) and every mask point (a, b) whose target
k = (h + a - hh, w + b - hw) lies inside the feature, ``mask[a * mask_w + b, h, w]`` at [k, j] (COLLECT)
or at [j, k] (DISTRIBUTE: the transpose). With ``is_softmax`` the buffer, viewed (N, H*W, H, W), goes
through Caffe's Softmax along its axis, zeros outside the mask's reach included (each of them weighs
``exp(0)``). Then ``top (C, H*W) = x (C, H*W) @ buffer * (1 / normalization_factor)``, the factor as the
fork's ``Dtype(1.0 / normalization_factor_)``.

Backward: the fork's diffs, which are the gradient of that forward: ``x_diff = top_diff @ buffer^T``
and ``buffer_diff = x^T @ top_diff``, each times the factor after the product (the GEMMs' alpha; a
:class:`torch.autograd.Function` keeps that order), through Caffe's Softmax backward
``(diff - sum(diff * prob)) * prob``, then read back into the mask by the same placement (mask entries
whose target falls outside the feature get 0, as the fork's ``caffe_set``). The CUDA kernels compute the
same placements as the CPU loops (one thread per (n, h, w), no two writing one element), so CPU and
CUDA agree; here one gather through a per-shape index does both, on every device.
``tests/layers/psanet_reference.py`` ports the fork's loops and Caffe's Softmax and GEMMs, and
``tests/layers/test_psanet.py`` compares both directions with it.

Deviations, all where the fork goes out of range: ``Reshape`` refuses a mask bottom whose channels are
not mask_h * mask_w for a shape other than the set-up one (the fork checks only at set-up, then reads
past the blob), and ``normalization_factor: 0`` is refused (the fork multiplies by inf). The released
VOC 2012 nets (``evaluation/prototxt/voc2012/*.prototxt`` since ``ff91e4f``) feed 59 x 59 features with
a 3481-channel (59 * 59) mask, which the fork's own set-up check refuses (it asks for 117 * 117); they
fail here with the same message, naming the layer (at ``8735a59``, before that commit removed their
``Interp`` shrink and zoom, they build). The ADE20K and Cityscapes nets (features shrunk to 30 x 30 and
45 x 45, masks 59 * 59 and 89 * 89) build and run as released.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape, canonical_axis, legacy_shape
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2

_PSA = caffe_pb2.PointwiseSpatialAttentionParameter


def placement(height: int, width: int, mask_h: int, mask_w: int, distribute: bool,
              device: torch.device | str | None = None) -> Tensor:
    """For one image: the flat index into the mask blob (mask_h*mask_w, H, W) of each element of the
    (H*W) x (H*W) buffer, row-major, or ``mask_h*mask_w*H*W`` (one past the end: a zero) where the
    fork's loops leave the buffer 0."""
    hh, hw = (mask_h - 1) // 2, (mask_w - 1) // 2
    ar = {n: torch.arange(n, device=device) for n in {height, width}}
    p, q = ar[height].view(-1, 1, 1, 1), ar[width].view(1, -1, 1, 1)  # the target (k)
    h, w = ar[height].view(1, 1, -1, 1), ar[width].view(1, 1, 1, -1)  # the source position (j)
    a, b = p - h + hh, q - w + hw  # the mask point that links them
    inside = (a >= 0) & (a < mask_h) & (b >= 0) & (b < mask_w)
    src = ((a * mask_w + b) * height + h) * width + w
    src = torch.where(inside, src, torch.full_like(src, mask_h * mask_w * height * width))
    if distribute:  # buffer[j, k] = buffer_collect[k, j]
        src = src.permute(2, 3, 0, 1)
    return src.reshape(-1)


class _Aggregate(torch.autograd.Function):
    """``top = (x @ buffer) * scale`` with the fork's GEMM diffs (scale applied after each product)."""

    @staticmethod
    def forward(ctx, x: Tensor, buf: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, buf)
        ctx.scale = scale
        y = torch.bmm(x, buf)
        return y if scale == 1.0 else y * scale

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, buf = ctx.saved_tensors
        gx = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.bmm(g, buf.transpose(1, 2))
            gx = gx if ctx.scale == 1.0 else gx * ctx.scale
        if ctx.needs_input_grad[1]:
            gb = torch.bmm(x.transpose(1, 2), g)
            gb = gb if ctx.scale == 1.0 else gb * ctx.scale
        return gx, gb, None


@register_layer("PointwiseSpatialAttention")
class PointwiseSpatialAttention(Layer):
    """PSANet's point-wise spatial attention (see the module docstring)."""

    exact_bottoms = 2
    exact_tops = 1
    allow_in_place = False  # the fork's GEMM reads bottom 0 while it writes the top

    def setup(self, bottom_shapes: list[Shape]) -> None:
        pp = self.param.pointwise_spatial_attention_param
        _, _, height, width = legacy_shape(bottom_shapes[0], self, "bottom 0")
        has_h, has_w = pp.HasField("attention_mask_height"), pp.HasField("attention_mask_width")
        if has_h != has_w:
            raise self.error("attention_mask_height and attention_mask_width must both be set, or neither; "
                             f"received only {'attention_mask_height' if has_h else 'attention_mask_width'}")
        if has_h:
            self.mask_h, self.mask_w = int(pp.attention_mask_height), int(pp.attention_mask_width)
            for field, v in (("attention_mask_height", self.mask_h), ("attention_mask_width", self.mask_w)):
                if v <= 1 or v % 2 == 0:
                    raise self.error(f"{field} must be an odd number larger than 1; received {v}")
        else:
            self.mask_h, self.mask_w = 2 * height - 1, 2 * width - 1
        self.mask_given, self.setup_hw = has_h, (height, width)
        channels = legacy_shape(bottom_shapes[1], self, "bottom 1")[1]
        if channels != self.mask_h * self.mask_w:
            raise self.error(self._mask_channels_message(channels))
        factor = float(pp.normalization_factor) if pp.HasField("normalization_factor") \
            else float(self.mask_h * self.mask_w)
        if factor == 0.0:
            raise self.error("normalization_factor must be nonzero (the fork would scale by 1/0); received 0")
        self.scale = 1.0 / factor  # the fork's Dtype(1.0 / normalization_factor_)
        self.distribute = pp.psa_type == _PSA.DISTRIBUTE
        self.is_softmax = bool(pp.is_softmax)
        self.softmax_axis = canonical_axis(self.param.softmax_param.axis, 4, self, "softmax_param.axis")
        self._index: dict[tuple, Tensor] = {}

    def _mask_channels_message(self, channels: int) -> str:
        how = ("attention_mask_height * attention_mask_width" if self.mask_given else
               "(2 * height - 1) * (2 * width - 1) of bottom 0's {} x {} at set-up".format(*self.setup_hw))
        return (f"bottom 1 must have mask_h * mask_w channels, {how} = {self.mask_h} * {self.mask_w} = "
                f"{self.mask_h * self.mask_w} (the fork's check 'Channel of bottom[1] should be equal to "
                f"mask_H_ * mask_W_'); received {channels}")

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        xs, ms = (legacy_shape(s, self, f"bottom {i}") for i, s in enumerate(bottom_shapes))
        for what, i in (("number of images", 0), ("height", 2), ("width", 3)):
            if xs[i] != ms[i]:
                raise self.error(f"bottoms 0 and 1 must have the same {what}; received shapes "
                                 f"{tuple(bottom_shapes[0])} and {tuple(bottom_shapes[1])}")
        if ms[1] != self.mask_h * self.mask_w:
            raise self.error(self._mask_channels_message(ms[1]))
        return [tuple(bottom_shapes[0])]

    def _placement(self, height: int, width: int, device: torch.device) -> Tensor:
        key = (height, width, str(device))
        idx = self._index.get(key)
        if idx is None:
            idx = placement(height, width, self.mask_h, self.mask_w, self.distribute, device)
            self._index = {key: idx}  # one shape at a time, as the fork's buffer
        return idx

    def attention(self, mask: Tensor, height: int, width: int) -> Tensor:
        """The (N, H*W, H, W) buffer the GEMM reads: the placed mask, after the Softmax with ``is_softmax``."""
        n = mask.shape[0]
        flat = F.pad(mask.reshape(n, -1), (0, 1))  # the extra zero stands for every untouched element
        buf = flat.index_select(1, self._placement(height, width, mask.device))
        buf = buf.view(n, height * width, height, width)
        return torch.softmax(buf, dim=self.softmax_axis) if self.is_softmax else buf

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        n, c, height, width = legacy_shape(tuple(x.shape), self)
        hw = height * width
        buf = self.attention(mask, height, width).reshape(n, hw, hw)
        return _Aggregate.apply(x.reshape(n, c, hw), buf, self.scale).view(x.shape)

    def extra_repr(self) -> str:
        kind = "DISTRIBUTE" if self.distribute else "COLLECT"
        return (f"{super().extra_repr()}, psa_type={kind}, mask={self.mask_h}x{self.mask_w}, "
                f"is_softmax={self.is_softmax}, scale={self.scale:g}")

    @classmethod
    def examples(cls) -> list[Example]:
        import numpy as np

        r = np.random.default_rng(21)
        head = 'name: "psa" type: "PointwiseSpatialAttention" bottom: "x" bottom: "mask" top: "y" '
        return [
            Example(head + "pointwise_spatial_attention_param { psa_type: COLLECT }",
                    [r.standard_normal((2, 3, 3, 4)), r.standard_normal((2, 35, 3, 4))], grad_bottoms=(0, 1)),
            Example(head + "pointwise_spatial_attention_param { psa_type: DISTRIBUTE is_softmax: true "
                    "normalization_factor: 1.0 }",
                    [r.standard_normal((2, 3, 4, 3)), r.standard_normal((2, 35, 4, 3))], grad_bottoms=(0, 1)),
            Example(head + "pointwise_spatial_attention_param { attention_mask_height: 3 attention_mask_width: 5 "
                    "is_softmax: true normalization_factor: 2.5 }",
                    [r.standard_normal((1, 2, 4, 4)), r.standard_normal((1, 15, 4, 4))], grad_bottoms=(0, 1)),
        ]
