"""Convolution, Deconvolution and Im2col (``convolution_param``), in Caffe's geometry.

Fields read: ``num_output``, ``bias_term``, ``kernel_size``/``kernel_h``/``kernel_w``,
``stride``/``stride_h``/``stride_w`` (default 1), ``pad``/``pad_h``/``pad_w`` (default 0),
``dilation`` (default 1), ``group``, ``axis`` (the channel axis; the axes before it are flattened
into the batch), ``weight_filler``, ``bias_filler``. ``engine`` and ``force_nd_im2col`` only choose
Caffe's kernels and do not change results: ignored. The scnn branch's ``conv_mode`` (Convolution with
two spatial axes) computes an unrecorded forward from the weights' sparsity, the same results in another
summation order (:mod:`neocaffe.layers.sparse_conv`); Deconvolution computes densely in every mode (the
branch's Deconvolution forward is its backward GEMM, which stops on the sparse modes).

Blobs (Caffe's shapes): Convolution weight ``(num_output, C/group, *kernel)``, Deconvolution weight
``(C, num_output/group, *kernel)``, bias ``(num_output,)``. Convolution and Deconvolution take any
number of bottoms of one shape and apply the same weights to each (one top per bottom).
Spatial axes: 0 to 3 (Caffe's N-D im2col allows more; torch has no 4-D convolution).
Output size: ``(in + 2*pad - ext) / stride + 1`` (conv), ``stride*(in - 1) + ext - 2*pad``
(deconv), with ``ext = dilation*(kernel - 1) + 1``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape, canonical_axis
from neocaffe.layers.conv_kernel import KernelChoice, eligible, lean_conv2d
from neocaffe.layers.fillers import fill
from neocaffe.layers.registry import register_layer
from neocaffe.layers.sparse_conv import SparseConv, sparse_conv

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
INT_MAX = 2**31 - 1
_DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _per_axis(layer: Layer, cp: Any, name: str, rep_field: str, n_sp: int, default: int | None) -> tuple[int, ...]:
    """Caffe's kernel/stride/pad parsing: ``<name>_h``/``<name>_w`` (2-D only) or the repeated
    field given once or once per spatial axis (or not at all when ``default`` is set)."""
    h_field, w_field = f"{name}_h", f"{name}_w"
    rep = list(getattr(cp, rep_field))
    if cp.HasField(h_field) or cp.HasField(w_field):
        if n_sp != 2:
            raise layer.error(f"{h_field} & {w_field} can only be used for 2D convolution; the bottom has {n_sp} spatial axes")
        if rep:
            raise layer.error(f"either {rep_field} or {h_field}/{w_field} should be specified; not both")
        return int(getattr(cp, h_field)), int(getattr(cp, w_field))
    return _repeated(layer, rep, rep_field, n_sp, default)


def _repeated(layer: Layer, rep: list[int], name: str, n_sp: int, default: int | None) -> tuple[int, ...]:
    allowed = (1, n_sp) if default is None else (0, 1, n_sp)
    if len(rep) not in allowed:
        raise layer.error(
            f"{name} must be specified once, or once per spatial dimension ({n_sp}); received {len(rep)} values"
        )
    if not rep:
        return (int(default),) * n_sp  # type: ignore[arg-type]
    return tuple(int(rep[0 if len(rep) == 1 else i]) for i in range(n_sp))


class _ConvGeometry(Layer):
    """The geometry that Convolution, Deconvolution and Im2col share (BaseConvolutionLayer::LayerSetUp)."""

    def _setup_geometry(self, shape: Shape) -> None:
        cp = self.param.convolution_param
        self.axis = canonical_axis(cp.axis, len(shape), self, "convolution_param.axis")
        self.n_sp = len(shape) - self.axis - 1
        if self.n_sp < 0:
            raise self.error(f"bottom shape {shape} has no channel axis {cp.axis}")
        self.kernel = _per_axis(self, cp, "kernel", "kernel_size", self.n_sp, None)
        self.stride = _per_axis(self, cp, "stride", "stride", self.n_sp, 1)
        self.pad = _per_axis(self, cp, "pad", "pad", self.n_sp, 0)
        self.dilation = _repeated(self, list(cp.dilation), "dilation", self.n_sp, 1)
        for what, vals in (("kernel", self.kernel), ("stride", self.stride), ("dilation", self.dilation)):
            if any(v <= 0 for v in vals):
                raise self.error(f"{what} dimensions must be nonzero; received {vals}")
        for what, vals in (("kernel", self.kernel), ("stride", self.stride), ("pad", self.pad),
                           ("dilation", self.dilation)):
            if any(v > INT_MAX for v in vals):  # Caffe holds them in an int (torch too: an overflow error)
                raise self.error(f"{what} must be at most {INT_MAX}; received {vals}")
        self.channels = shape[self.axis]
        self.in_shape = tuple(shape)

    def _check_shape(self, shape: Shape) -> None:
        if len(shape) != self.axis + 1 + self.n_sp or shape[self.axis] != self.channels:
            raise self.error(
                f"bottom shape {tuple(shape)} does not match the set-up shape {self.in_shape} "
                "(the number of axes and channels may not change)"
            )

    def _extent(self, i: int) -> int:
        return self.dilation[i] * (self.kernel[i] - 1) + 1

    def _conv_out(self, spatial: Sequence[int]) -> tuple[int, ...]:
        out = []
        for i, d in enumerate(spatial):
            num = d + 2 * self.pad[i] - self._extent(i)
            if num < 0:
                raise self.error(
                    f"the padded input ({d} + 2*{self.pad[i]}) is smaller than the kernel extent {self._extent(i)} "
                    f"on spatial axis {i}"
                )
            out.append(num // self.stride[i] + 1)
        return tuple(out)

    def _flat(self, x: Tensor) -> Tensor:
        """(lead..., C, spatial...) -> (num, C, spatial...) [+ a length-1 axis for 0 spatial axes]."""
        x = x.reshape((-1,) + tuple(x.shape[self.axis:])) if self.axis != 1 else x
        return x.unsqueeze(-1) if self.n_sp == 0 else x

    def _unflat(self, y: Tensor, lead: Sequence[int]) -> Tensor:
        if self.n_sp == 0:
            y = y.squeeze(-1)
        return y.reshape(tuple(lead) + tuple(y.shape[1:])) if self.axis != 1 else y

    def _torch_geometry(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        if self.n_sp == 0:
            return (1,), (0,), (1,)
        return self.stride, self.pad, self.dilation


class _ConvBase(_ConvGeometry):
    min_bottoms = 1
    min_tops = 1
    transposed = False

    def _check_blob_counts(self, n_bottom: int, n_top: int) -> None:
        super()._check_blob_counts(n_bottom, n_top)
        if n_bottom != n_top:  # Caffe's EqualNumBottomTopBlobs
            from neocaffe.layers.base import LayerSetupError

            raise LayerSetupError(
                f"layer '{self.name}' ({self.type_name}) takes as many tops as bottoms; received "
                f"{n_bottom} bottom(s) and {n_top} top(s)"
            )

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self._setup_geometry(bottom_shapes[0])
        for s in bottom_shapes[1:]:
            if tuple(s) != tuple(bottom_shapes[0]):
                raise self.error(f"all bottoms must have the same shape; received {bottom_shapes}")
        cp = self.param.convolution_param
        self.num_output, self.group = self.output_and_group(cp)
        if self.num_output <= 0:
            raise self.error("convolution_param.num_output must be set and positive")
        if self.group <= 0 or self.channels % self.group:
            raise self.error(f"convolution_param.group = {self.group} does not divide the {self.channels} input channels")
        if self.num_output % self.group:
            raise self.error(f"convolution_param.group = {self.group} does not divide num_output = {self.num_output}")
        if self.n_sp > 3:
            raise self.error(f"{self.n_sp} spatial axes are not supported (at most 3)")
        if self.transposed:
            wshape = (self.channels, self.num_output // self.group) + self.kernel
        else:
            wshape = (self.num_output, self.channels // self.group) + self.kernel
        self.add_blob(fill(cp.weight_filler, wshape))
        self.bias_term = bool(cp.bias_term)
        if self.bias_term:
            self.add_blob(fill(cp.bias_filler, (self.num_output,)))
        self.kernels = KernelChoice()
        self.sparse: SparseConv | None = None
        if not self.transposed and self.axis == 1:
            self.sparse = sparse_conv(cp, self.group, self.stride, self.pad, self.dilation, self.n_sp)

    def weights_changed(self) -> None:
        if self.sparse is not None:
            self.sparse.forget()

    def output_and_group(self, cp: Any) -> tuple[int, int]:
        """``(num_output, group)``: Caffe's reads both from ``convolution_param``."""
        return int(cp.num_output), int(cp.group)

    def _out_spatial(self, spatial: Sequence[int]) -> tuple[int, ...]:
        if not self.transposed:
            return self._conv_out(spatial)
        return tuple(self.stride[i] * (d - 1) + self._extent(i) - 2 * self.pad[i] for i, d in enumerate(spatial))

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        out = []
        for s in bottom_shapes:
            self._check_shape(s)
            sp = self._out_spatial(s[self.axis + 1:])
            if any(d <= 0 for d in sp):
                raise self.error(f"output spatial shape {sp} for bottom {tuple(s)} is empty")
            out.append(tuple(s[: self.axis]) + (self.num_output,) + sp)
        return out

    def forward(self, *bottoms: Tensor) -> Tensor | list[Tensor]:
        # the blobs by their attribute names in the ParameterList ("0", "1"): indexing it costs ~2 us a
        # call, which is most of a small (depthwise, batch 1) convolution's overhead over nn.Conv2d
        w = getattr(self.blobs, "0")
        b = getattr(self.blobs, "1") if self.bias_term else None
        if self.sparse is not None and self.sparse.applies(bottoms[0], w, b):
            return self._sparse_forward(bottoms, w, b)
        if len(bottoms) == 1 and self.axis == 1 and self.n_sp and not self.transposed:
            x = bottoms[0]
            if self.n_sp == 2 and self.group == 1 and eligible(x, w, 1, self.dilation):
                return self.kernels.conv2d(x, w, b, self.stride, self.pad)
            return _CONV[self.n_sp](x, w, b, self.stride, self.pad, self.dilation, self.group)
        if self.n_sp == 0:
            w = w.unsqueeze(-1)
        stride, pad, dil = self._torch_geometry()
        nd = max(self.n_sp, 1)
        tops = []
        for x in bottoms:
            lead = x.shape[: self.axis]
            xf = self._flat(x)
            if self.transposed:
                y = _DECONV[nd](xf, w, b, stride, pad, 0, self.group, dil)
            elif nd == 2 and eligible(xf, w, self.group, dil):
                y = self.kernels.conv2d(xf, w, b, stride, pad)
            else:
                y = _CONV[nd](xf, w, b, stride, pad, dil, self.group)
            tops.append(self._unflat(y, lead))
        return tops[0] if len(tops) == 1 else tops

    def _sparse_forward(self, bottoms: Sequence[Tensor], w: Tensor, b: Tensor | None) -> Tensor | list[Tensor]:
        tops = [self.sparse(x, w, b) for x in bottoms]  # type: ignore[misc]
        return tops[0] if len(tops) == 1 else tops

    def lean_kernel(self, bottoms: Sequence[Tensor]) -> Callable[..., Any] | None:
        """The common case of ``forward``: one 4-D bottom, ``axis`` 1, a convolution (not transposed)."""
        if len(bottoms) != 1 or self.axis != 1 or self.n_sp != 2 or self.transposed:
            return None
        dense = lean_conv2d(self.blobs, self.bias_term, bottoms[0], self.stride, self.pad, self.dilation, self.group)
        sparse = self.sparse
        if sparse is None:
            return dense
        w, b = self.blobs[0], (self.blobs[1] if self.bias_term else None)  # held as lean_conv2d holds them

        def run(x: Tensor) -> Tensor:
            return sparse(x, w, b) if sparse.applies(x, w, b) else dense(x)
        return run


@register_layer("Convolution")
class ConvolutionLayer(_ConvBase):
    """Caffe's ConvolutionLayer: cross-correlation with grouped, dilated, strided, padded kernels."""

    @classmethod
    def examples(cls) -> list[Example]:
        import numpy as np

        r = np.random.default_rng(0)
        return [
            Example('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 4 '
                    'kernel_size: 3 pad: 1 stride: 2 group: 2 weight_filler { type: "gaussian" std: 0.3 } '
                    'bias_filler { type: "gaussian" std: 0.5 } }', [r.standard_normal((2, 4, 6, 5))]),
            Example('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 3 '
                    'kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_w: 1 dilation: 2 bias_term: false '
                    'weight_filler { type: "xavier" } }', [r.standard_normal((1, 2, 7, 8))]),
            Example('name: "c" type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb" convolution_param '
                    '{ num_output: 2 kernel_size: 2 axis: 2 weight_filler { type: "gaussian" std: 0.3 } '
                    'bias_filler { type: "constant" value: 0.1 } }',
                    [r.standard_normal((2, 1, 3, 4)), r.standard_normal((2, 1, 3, 4))], grad_bottoms=(0, 1)),
            Example('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 '
                    'kernel_size: 2 kernel_size: 1 kernel_size: 3 weight_filler { type: "msra" } }',
                    [r.standard_normal((1, 2, 3, 2, 4))]),
            Example('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 3 '
                    'kernel_size: 3 stride: 2 weight_filler { type: "gaussian" std: 0.3 } }',
                    [r.standard_normal((2, 2, 9))]),
        ]


@register_layer("DepthwiseConvolution")
class DepthwiseConvolutionLayer(ConvolutionLayer):
    """yonghenglh6/DepthwiseConvolution (also in eric612/MobileNet-YOLO),
    ``src/caffe/layers/depthwise_conv_layer.{cpp,cu}``: a Convolution whose ``convolution_param`` has
    ``group`` = ``num_output`` = the bottom's channels (the fork's CPU path is Caffe's grouped convolution;
    its CUDA kernel computes one filter per channel and is only right in that case, so other settings are
    an error here). The same blobs, forward and backward as Convolution: one ``F.conv2d(groups=C)``."""

    def setup(self, bottom_shapes: list[Shape]) -> None:
        super().setup(bottom_shapes)
        if not self.group == self.num_output == self.channels:
            raise self.error(f"DepthwiseConvolution needs convolution_param.group = num_output = the bottom's "
                             f"{self.channels} channels; received group {self.group}, num_output {self.num_output}")

    @classmethod
    def examples(cls) -> list[Example]:
        import numpy as np

        r = np.random.default_rng(3)
        return [Example('name: "dw" type: "DepthwiseConvolution" bottom: "x" top: "y" convolution_param { '
                        'num_output: 3 group: 3 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "msra" } '
                        'bias_filler { type: "gaussian" std: 0.5 } }', [r.standard_normal((2, 3, 7, 6))])]


@register_layer("ConvolutionDepthwise")
class ConvolutionDepthwiseLayer(ConvolutionLayer):
    """The MobileNet forks' ``conv_dw_layer.cpp`` (``ConvolutionDepthwise``; e.g. Lamply/caffe,
    canteen-man/MobileNet-SSD-Focal-loss): one filter per channel whatever ``num_output`` and ``group``
    say (the fork reads neither): weight ``(C, 1, kernel_h, kernel_w)``, bias ``(C,)``, top channels C;
    ``kernel``/``stride``/``pad``/``dilation``, ``bias_term`` and the fillers from ``convolution_param``.
    Deviation: a missing ``stride``/``pad`` defaults to 1/0 (the fork reads ``stride(0)`` unchecked)."""

    exact_bottoms = 1
    exact_tops = 1

    def output_and_group(self, cp: Any) -> tuple[int, int]:
        return self.channels, self.channels

    @classmethod
    def examples(cls) -> list[Example]:
        import numpy as np

        r = np.random.default_rng(4)
        return [Example('name: "dw" type: "ConvolutionDepthwise" bottom: "x" top: "y" convolution_param { '
                        'num_output: 4 kernel_h: 3 kernel_w: 2 pad: 1 stride: 1 dilation: 2 '
                        'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.2 } }',
                        [r.standard_normal((2, 4, 6, 5))]),
                Example('name: "dw" type: "ConvolutionDepthwise" bottom: "x" top: "y" convolution_param { '
                        'kernel_size: 3 stride: 2 bias_term: false weight_filler { type: "msra" } }',
                        [r.standard_normal((1, 2, 5, 5))])]


@register_layer("Deconvolution")
class DeconvolutionLayer(_ConvBase):
    """Caffe's DeconvolutionLayer (the backward of convolution as a forward; weight (C, num_output/group, k...))."""

    transposed = True

    @classmethod
    def examples(cls) -> list[Example]:
        import numpy as np

        r = np.random.default_rng(1)
        return [
            Example('name: "d" type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 4 '
                    'kernel_size: 4 stride: 2 pad: 1 group: 2 weight_filler { type: "gaussian" std: 0.3 } '
                    'bias_filler { type: "gaussian" std: 0.5 } }', [r.standard_normal((2, 2, 3, 4))]),
            Example('name: "d" type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 2 '
                    'kernel_size: 3 stride: 2 dilation: 2 bias_term: false weight_filler { type: "bilinear" } }',
                    [r.standard_normal((1, 3, 3, 3))]),
        ]


@register_layer("Im2col")
class Im2colLayer(_ConvGeometry):
    """Caffe's Im2colLayer: top (lead..., C*prod(kernel), *out_spatial), channel index
    ``c*prod(kernel) + kernel offset`` (row-major over the kernel)."""

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self._setup_geometry(bottom_shapes[0])
        if self.n_sp < 1:
            raise self.error("Im2col needs at least one spatial axis")
        if self.n_sp > 3:
            raise self.error(f"{self.n_sp} spatial axes are not supported (at most 3)")
        self.kdim = math.prod(self.kernel)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = bottom_shapes[0]
        self._check_shape(s)
        return [tuple(s[: self.axis]) + (self.channels * self.kdim,) + self._conv_out(s[self.axis + 1:])]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        lead = x.shape[: self.axis]
        xf = self._flat(x)
        out_sp = self._conv_out(xf.shape[2:])
        if self.n_sp <= 2:
            k, s, p, d = self.kernel, self.stride, self.pad, self.dilation
            if self.n_sp == 1:  # as a 2-D image of height 1
                xf, k, s, p, d = xf.unsqueeze(2), (1,) + k, (1,) + s, (0,) + p, (1,) + d
            cols = F.unfold(xf, k, dilation=d, padding=p, stride=s)
        else:  # a grouped convolution with one-hot kernels picks each kernel offset (exact copies)
            eye = torch.eye(self.kdim, dtype=xf.dtype, device=xf.device).reshape((self.kdim, 1) + self.kernel)
            w = eye.repeat((self.channels, 1) + (1,) * self.n_sp)
            cols = F.conv3d(xf, w, None, self.stride, self.pad, self.dilation, self.channels)
        y = cols.reshape((xf.shape[0], self.channels * self.kdim) + out_sp)
        return self._unflat(y, lead)

    @classmethod
    def examples(cls) -> list[Example]:
        import numpy as np

        r = np.random.default_rng(2)
        return [
            Example('name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 3 pad: 1 stride: 2 }',
                    [r.standard_normal((2, 2, 5, 6))]),
            Example('name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 2 dilation: 2 }',
                    [r.standard_normal((1, 2, 7))]),
            Example('name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 2 stride: 1 pad: 1 }',
                    [r.standard_normal((1, 2, 3, 3, 2))]),
        ]
