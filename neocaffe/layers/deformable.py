"""Deformable ConvNets' Caffe layer: ``DeformableConvolution`` (``deformable_convolution_param``).

Lineage: unsky/Deformable-ConvNets-caffe @ e0f7abd (the same files in its ``caffe/``,
``deformable_conv_cxx/`` and ``deformable_conv_faster-rcnn/caffe-fast-rcnn/`` trees):
``src/caffe/layers/deformable_conv_layer.{cpp,cu}``, ``include/caffe/layers/deformable_conv_layer.hpp``,
``src/caffe/util/deformable_im2col.cu`` (the kernels of MSRA's first MXNet DCN release); parameter
``deformable_convolution_param`` (proto/NUMBERING.md, lineage dcn). The fork's ResNet-50 Faster R-CNN
(``models/pascal_voc/ResNet50/faster_rcnn_end2end/train.prototxt``) makes each res5 3x3 a
DeformableConvolution whose second bottom is a plain Convolution's 72 = 2*3*3*4 channels.

Bottoms: x (N, C, H, W) and offset (N, 2*kh*kw*deformable_group, H, W) (the fork's CHECKs: offset
channels, and offset height/width equal to x's). Top (N, num_output, Ho, Wo), Caffe's output size.
Blobs: weight (num_output, C/group, kh, kw), bias (num_output,) when ``bias_term``. Fields: ``num_output``,
``bias_term``, ``kernel_size``/``kernel_h``/``kernel_w``, ``stride``, ``pad``, ``dilation`` (as Convolution
reads them), ``group``, ``deformable_group`` (default **4** in the fork's schema), ``weight_filler``,
``bias_filler``; ``engine`` and ``force_nd_im2col`` choose nothing.

Forward, as ``deformable_im2col_gpu_kernel``: the offsets of one image are read as (deformable_group,
kh*kw, 2, Ho, Wo) from the start of the image's offset block, so channel ``2*(i*kw + j)`` of group d is
the **y** offset of kernel tap (i, j) and ``2*(i*kw + j) + 1`` its **x** offset (when Ho*Wo < H*W the
fork reads this layout from the front of the H*W block, and so do we). Input channel c belongs to
deformable group ``c // (C/deformable_group)``. Tap (i, j) of output (ho, wo) samples channel c at::

    h = ho*stride_h - pad_h + i*dilation_h + off_y,   w = wo*stride_w - pad_w + j*dilation_w + off_x

zero unless ``0 <= h < H`` and ``0 <= w < W`` (so a point in (-1, 0) reads 0, not a blend with the
padding); otherwise bilinear with ``h0 = floor(h)``, ``h1 = h0 + 1``, ``lh = h - h0``, except that
``h0 >= H - 1`` clamps to ``h0 = h1 = H - 1``, ``lh = 0`` (the same along w). The columns
(C*kh*kw, Ho*Wo), channel ``c*kh*kw + i*kw + j``, are multiplied by the weight per group and the bias
added, as Caffe's Convolution.

Backward: the fork's ``deformable_col2im`` scatters each column diff to the (at most four) pixels its
bilinear weights touch (``get_gradient_weight``): exactly the transpose of the sampling, so the data
diff is the true gradient. ``deformable_col2im_coord`` gives the offset diff (``get_coordinate_weight``):
the derivative of the bilinear blend inside the image, 0 where the sample is outside it and 0 along an
axis where it is clamped (the value is constant there). That is the gradient of the forward wherever it
is differentiable; at the image border the forward jumps (from 0 outside to the pixel inside, at h = 0
and h = H, the same for w) and the fork's diff ignores those jumps. The weight diff is columns x top diff,
the bias diff the top diff summed. These formulas are what autograd gives for the gather-based forward
below (``floor`` held constant, the clamped ``lh`` a constant 0, the outside samples masked), so the
layer is a plain differentiable torch function; ``tests/layers/test_deformable.py`` ports the three
kernels as loops and the tests compare every diff with them.

Deviations: the fork has no CPU path (its ``Forward_cpu``/``Backward_cpu`` are empty); here CPU and CUDA
compute the same thing. Three launch slips of the fork's ``Backward_gpu`` are not kept: (1) the weight
diff of every image n pairs image n's columns with image **0**'s top diff (``top_diff`` not advanced by
n); we use image n's (the two agree for N = 1, the fork's Faster R-CNN batch); (2) ``deformable_col2im``
is launched with ``C*kh*kw`` threads where it needs ``C*kh*kw*Ho*Wo``, and writes at the offset blob's
per-image stride, so the fork's data diff covers only the first columns of the first image and lands at
the wrong place for the others (out of the blob for small C): we scatter every column of every image;
(3) ``deformable_col2im_coord`` launches ``2*kh*kh*deformable_group*Ho*Wo`` threads (``kernel_h``
twice): for square kernels, every kernel the fork's models use, this is all of them; for kh != kw the
fork leaves part of the offset diff 0 or writes past the image's block, and we compute all of it.
Errors where the fork reads out of range: a ``deformable_group`` that does not divide C, an offset
block smaller than 2*kh*kw*deformable_group*Ho*Wo (Ho*Wo > H*W), ``axis`` other than 1 and bottoms that
are not 4-D (the fork's kernels are 2-D NCHW only). ONNX export writes the fork's sampling as explicit
gathers (``neocaffe.export.onnx_vision2``): ONNX's DeformConv pads its border samples otherwise.
"""
from __future__ import annotations

import math
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.conv import INT_MAX, _per_axis, _repeated
from neocaffe.layers.fillers import fill
from neocaffe.layers.registry import register_layer


def deformable_columns(x: Tensor, offset: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                       pad: tuple[int, int], dilation: tuple[int, int], deformable_group: int) -> Tensor:
    """The fork's ``deformable_im2col`` for a batch: (N, C*kh*kw, Ho, Wo) from x (N, C, H, W) and the
    offset blob (N, >= 2*kh*kw*dg*Ho*Wo values per image)."""
    n, c, height, width = x.shape
    kh, kw = kernel
    ho = (height + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    wo = (width + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    k, dg = kh * kw, deformable_group
    off = offset.reshape(n, -1)[:, : dg * k * 2 * ho * wo].reshape(n, dg, k, 2, ho, wo)
    dev = x.device
    tap_y = (torch.arange(kh, device=dev) * dilation[0]).repeat_interleave(kw).to(x.dtype)  # (k,)
    tap_x = (torch.arange(kw, device=dev) * dilation[1]).repeat(kh).to(x.dtype)
    h_in = (torch.arange(ho, device=dev) * stride[0] - pad[0]).to(x.dtype)  # (Ho,)
    w_in = (torch.arange(wo, device=dev) * stride[1] - pad[1]).to(x.dtype)
    # the kernel's map_h/map_w (the tap plus its offset) and the absolute positions it tests
    map_y = tap_y.view(k, 1, 1) + off[:, :, :, 0]  # (N, dg, k, Ho, Wo)
    map_x = tap_x.view(k, 1, 1) + off[:, :, :, 1]
    pos_y = h_in.view(ho, 1) + map_y
    pos_x = w_in.view(1, wo) + map_x
    inside = (pos_y >= 0) & (pos_x >= 0) & (pos_y < height) & (pos_x < width)
    fy, fx = torch.floor(map_y.detach()), torch.floor(map_x.detach())
    y0 = (h_in.view(ho, 1) + fy).long()
    x0 = (w_in.view(1, wo) + fx).long()
    clamp_y, clamp_x = y0 >= height - 1, x0 >= width - 1
    ly = torch.where(clamp_y, torch.zeros_like(map_y), map_y - fy)
    lx = torch.where(clamp_x, torch.zeros_like(map_x), map_x - fx)
    y0 = y0.clamp(0, height - 1)
    x0 = x0.clamp(0, width - 1)
    y1 = torch.where(clamp_y, y0, y0 + 1).clamp(max=height - 1)
    x1 = torch.where(clamp_x, x0, x0 + 1).clamp(max=width - 1)
    mask = inside.to(x.dtype)
    corners = ((y0, x0, (1 - ly) * (1 - lx)), (y0, x1, (1 - ly) * lx),
               (y1, x0, ly * (1 - lx)), (y1, x1, ly * lx))
    cg = c // dg
    xs = x.reshape(n, dg, cg, height * width)
    cols = x.new_zeros(())
    for yy, xx, wgt in corners:
        idx = (yy * width + xx).reshape(n, dg, 1, k * ho * wo).expand(n, dg, cg, k * ho * wo)
        vals = xs.gather(3, idx).reshape(n, dg, cg, k, ho, wo)
        cols = cols + vals * (wgt * mask).unsqueeze(2)
    return cols.reshape(n, c * k, ho, wo)


@register_layer("DeformableConvolution")
class DeformableConvolutionLayer(Layer):
    """The fork's DeformableConvolutionLayer (see the module docstring)."""

    exact_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        cp = self.param.deformable_convolution_param
        shape = tuple(bottom_shapes[0])
        if cp.axis != 1:
            raise self.error(f"deformable_convolution_param.axis must be 1 (the fork's kernels are NCHW); "
                             f"received {cp.axis}")
        if len(shape) != 4:
            raise self.error(f"bottom 0 must be 4-D (N, C, H, W); received shape {shape}")
        self.kernel = _per_axis(self, cp, "kernel", "kernel_size", 2, None)
        self.stride = _per_axis(self, cp, "stride", "stride", 2, 1)
        self.pad = _per_axis(self, cp, "pad", "pad", 2, 0)
        self.dilation = _repeated(self, list(cp.dilation), "dilation", 2, 1)
        for what, vals in (("kernel", self.kernel), ("stride", self.stride), ("dilation", self.dilation)):
            if any(v <= 0 for v in vals):
                raise self.error(f"{what} dimensions must be nonzero; received {vals}")
        for what, vals in (("kernel", self.kernel), ("stride", self.stride), ("pad", self.pad),
                           ("dilation", self.dilation)):
            if any(v > INT_MAX for v in vals):
                raise self.error(f"{what} must be at most {INT_MAX}; received {vals}")
        self.channels = shape[1]
        self.num_output, self.group, self.dg = int(cp.num_output), int(cp.group), int(cp.deformable_group)
        if self.num_output <= 0:
            raise self.error("deformable_convolution_param.num_output must be set and positive")
        if self.group <= 0 or self.channels % self.group:
            raise self.error(f"deformable_convolution_param.group = {self.group} does not divide the "
                             f"{self.channels} input channels")
        if self.num_output % self.group:
            raise self.error(f"deformable_convolution_param.group = {self.group} does not divide "
                             f"num_output = {self.num_output}")
        if self.dg <= 0 or self.channels % self.dg:
            raise self.error(f"deformable_convolution_param.deformable_group = {self.dg} does not divide the "
                             f"{self.channels} input channels")
        self.add_blob(fill(cp.weight_filler, (self.num_output, self.channels // self.group) + self.kernel))
        self.bias_term = bool(cp.bias_term)
        if self.bias_term:
            self.add_blob(fill(cp.bias_filler, (self.num_output,)))

    def _out(self, height: int, width: int) -> tuple[int, int]:
        out = []
        for i, d in enumerate((height, width)):
            num = d + 2 * self.pad[i] - (self.dilation[i] * (self.kernel[i] - 1) + 1)
            if num < 0:
                raise self.error(f"the padded input ({d} + 2*{self.pad[i]}) is smaller than the kernel extent "
                                 f"{self.dilation[i] * (self.kernel[i] - 1) + 1} on spatial axis {i}")
            out.append(num // self.stride[i] + 1)
        return out[0], out[1]

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        xs, os = (tuple(s) for s in bottom_shapes)
        if len(xs) != 4 or xs[1] != self.channels:
            raise self.error(f"bottom 0 shape {xs} does not match the set-up channels {self.channels} "
                             "(4-D, the channels may not change)")
        want = 2 * math.prod(self.kernel) * self.dg
        if len(os) != 4 or os[0] != xs[0] or os[1] != want:
            raise self.error(f"the offset bottom must be (N, 2*kernel_h*kernel_w*deformable_group = {want}, H, W) "
                             f"with N = {xs[0]}; received shape {os}")
        if os[2:] != xs[2:]:
            raise self.error(f"the offset bottom's height and width must equal the data's {xs[2:]}; "
                             f"received {os[2:]}")
        ho, wo = self._out(xs[2], xs[3])
        if ho * wo > xs[2] * xs[3]:
            raise self.error(f"the output ({ho} x {wo}) has more positions than the offset blob's {xs[2]} x "
                             f"{xs[3]} (the fork reads past the image's offsets)")
        return [(xs[0], self.num_output, ho, wo)]

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:  # type: ignore[override]
        w = self.blobs[0]
        cols = deformable_columns(x, offset, self.kernel, self.stride, self.pad, self.dilation, self.dg)
        n, ck, ho, wo = cols.shape
        g = self.group
        y = torch.matmul(w.reshape(1, g, self.num_output // g, -1), cols.reshape(n, g, ck // g, ho * wo))
        y = y.reshape(n, self.num_output, ho, wo)
        if self.bias_term:
            y = y + self.blobs[1].view(1, -1, 1, 1)
        return y

    @classmethod
    def examples(cls) -> list[Example]:
        import numpy as np

        r = np.random.default_rng(11)
        return [
            Example('name: "dc" type: "DeformableConvolution" bottom: "x" bottom: "off" top: "y" '
                    'deformable_convolution_param { num_output: 4 kernel_size: 3 pad: 1 group: 2 deformable_group: 2 '
                    'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.5 } }',
                    [r.standard_normal((2, 4, 5, 4)), 1.3 * r.standard_normal((2, 36, 5, 4))], grad_bottoms=(0, 1)),
            Example('name: "dc" type: "DeformableConvolution" bottom: "x" bottom: "off" top: "y" '
                    'deformable_convolution_param { num_output: 3 kernel_h: 2 kernel_w: 3 pad_h: 1 pad_w: 2 dilation: 2 '
                    'deformable_group: 1 bias_term: false weight_filler { type: "xavier" } }',
                    [r.standard_normal((1, 2, 4, 5)), r.standard_normal((1, 12, 4, 5))], grad_bottoms=(0, 1)),
        ]

