"""InnerProduct (fully connected), Caffe's ``inner_product_param``.

Fields read: ``num_output``, ``bias_term``, ``axis`` (the axes from ``axis`` on are flattened into
the K inputs; the ones before it are kept), ``transpose`` (weight stored as ``(K, N)`` instead of
``(N, K)``), ``weight_filler``, ``bias_filler``. Top shape: ``bottom.shape[:axis] + (N,)``.

``normalize`` (happynear/caffe-windows ms @ 967eedf2, ``src/caffe/layers/inner_product_layer.cpp``, the
InnerProduct of AM-Softmax and NormFace): every forward, TEST too, first **rewrites the weight blob in
place**, each of its N rows of K (the blob's memory read as N x K, as the fork's loop does, also with
``transpose``) times ``1 / sqrt(w.w + 1e-6)`` (the eps added in double to the float dot, as the ``.cpp``;
the ``.cu`` uses ``(w.w + 1e-12)^-0.5``). The backward is the plain inner product's, w.r.t. the
normalized rows (not through the normalization), as the fork's; the solver then updates the normalized
weight, and the snapshot holds it.

Weights from a bottom (happynear/caffe-windows ms @ 967eedf2, the same ``inner_product_layer.cpp``/``.cu``,
"innerproduct layer get weight from bottom" 838ead47, bias c5b603bd; NormFace's
``combine_softmax_contrastive.prototxt`` feeds a normalized ``Parameter``). BVLC's InnerProduct takes
exactly one bottom (``ExactNumBottomBlobs() == 1``), so two or three bottoms can only mean the fork's form:
bottom 1 holds the weights, N = its first axis (``num()``, re-read at every reshape; ``num_output`` is not
read), its memory read as N x K, or as K x N with ``transpose`` (the fork does not swap the axes: a
``(K, N)`` bottom would give N = K), so its count must be N * K; the layer has no blobs. The bias:
``bias_term`` needs a third bottom of N values (with two bottoms the fork's Forward reads ``blobs_[1]``
past its one blob: an error here); without ``bias_term`` a third bottom is read by nothing. ``normalize``
is ignored (the fork's ``normalize_ && bottom.size() == 1``). Backward, the fork's gemms: the gradient to
every bottom (the weight bottom's diff written with beta 0; the bias bottom's added with beta 1 into its
diff, the gradient where that diff starts at zero, as a Parameter blob's does each iteration).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import PLAIN, Example, Layer, LayerCall, Shape, accumulates_in_place, canonical_axis
from neocaffe.layers.fillers import fill
from neocaffe.layers.normalization import unit_rows_
from neocaffe.layers.registry import register_layer


class _InnerProduct(torch.autograd.Function):
    """``y = x W^T + b`` (``x W + b`` with ``transpose``). Backward: when the executor accumulates
    parameter diffs (``call.accumulate``) the weight diff is added into ``W.grad`` in place (Caffe's gemm with beta = 1): no fresh (N, K) tensor (for
    fc6 a 151 MB allocation, page-faulted anew each iteration) and no separate pass to add it."""

    @staticmethod
    def forward(ctx, x2: Tensor, w: Tensor, b: Tensor | None, transpose: bool, call: LayerCall) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x2, w)
        ctx.transpose, ctx.has_b, ctx.call = transpose, b is not None, call
        if transpose:
            return torch.addmm(b, x2, w) if b is not None else x2 @ w
        return F.linear(x2, w, b)

    @staticmethod
    def backward(ctx, gy: Tensor):  # noqa: D102
        x2, w = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = gy @ w.t() if ctx.transpose else gy @ w
        if ctx.needs_input_grad[1]:
            a, c = (x2.t(), gy) if ctx.transpose else (gy.t(), x2)  # (K,M)x(M,N) or (N,M)x(M,K)
            if accumulates_in_place(w, ctx.call):
                w.grad.addmm_(a, c)
            else:
                gw = a @ c
        if ctx.has_b and ctx.needs_input_grad[2]:
            gb = gy.sum(0)
        return gx, gw, gb, None, None


@register_layer("InnerProduct")
class InnerProductLayer(Layer):
    """Caffe's InnerProductLayer: ``y = x W^T + b`` (``x W + b`` with ``transpose``); with two or three
    bottoms happynear's weights (and bias) from the bottoms (see the module docstring)."""

    min_bottoms = 1
    max_bottoms = 3
    exact_tops = 1
    takes_call = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        ip = self.param.inner_product_param
        self.weight_bottom = len(bottom_shapes) > 1
        if self.weight_bottom:
            self._setup_weight_bottom(bottom_shapes)
            return
        self.num_output = int(ip.num_output)
        if self.num_output <= 0:
            raise self.error("inner_product_param.num_output must be set and positive")
        self.bias_term = bool(ip.bias_term)
        self.transpose = bool(ip.transpose)
        self.normalize = bool(ip.normalize)
        self.axis = self._axis(bottom_shapes[0])
        self.K = math.prod(bottom_shapes[0][self.axis:])
        shape = (self.K, self.num_output) if self.transpose else (self.num_output, self.K)
        self.add_blob(fill(ip.weight_filler, shape))
        if self.bias_term:
            self.add_blob(fill(ip.bias_filler, (self.num_output,)))

    def _setup_weight_bottom(self, bottom_shapes: list[Shape]) -> None:
        """happynear's weights (bottom 1) and bias (bottom 2) from the bottoms: no blobs."""
        ip = self.param.inner_product_param
        self.bias_term = bool(ip.bias_term)
        if self.bias_term and len(bottom_shapes) == 2:
            raise self.error("bias_term with the weights from bottom 1 needs the bias as bottom 2 (three bottoms); "
                             "received two bottoms (happynear's fork would read a bias blob it never made): set "
                             "inner_product_param.bias_term: false or add the bias bottom")
        self.transpose = bool(ip.transpose)
        self.normalize = False  # the fork normalizes only its own blob
        self.axis = self._axis(bottom_shapes[0])
        self.K = math.prod(bottom_shapes[0][self.axis:])
        self.num_output = self._rows(bottom_shapes[1])

    def _rows(self, ws: Shape) -> int:
        """N of a weight bottom: its first axis; its count must be N * K (read as N x K, or K x N with ``transpose``)."""
        ws = tuple(ws)
        if not ws or ws[0] == 0 or math.prod(ws) != ws[0] * self.K:
            layout = "K x N" if self.transpose else "N x K"
            raise self.error(f"bottom 1 (the weights) must hold N * K values, N its first axis and K = {self.K} "
                             f"(read as {layout}); received shape {ws}")
        return ws[0]

    def _axis(self, shape: Shape) -> int:
        return canonical_axis(int(self.param.inner_product_param.axis), len(shape), self, "inner_product_param.axis")

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        self.axis = axis = self._axis(s)  # recomputed here, as Caffe's Reshape does (a negative axis moves)
        k = math.prod(s[axis:])
        if k != self.K:
            raise self.error(f"input size incompatible with inner product parameters: bottom {s} has "
                             f"{k} inputs from axis {axis}; the weights expect {self.K}")
        if self.weight_bottom:
            self.num_output = n = self._rows(bottom_shapes[1])
            if self.bias_term and math.prod(bottom_shapes[2]) != n:
                raise self.error(f"bottom 2 (the bias) must hold N = {n} values (bottom 1's first axis); received "
                                 f"shape {tuple(bottom_shapes[2])}")
        return [s[:axis] + (self.num_output,)]

    def normalize_weight_(self) -> None:
        """happynear's in-place row normalization of the weight blob (``normalize``). Through ``.data``: no
        version bump, so a graph recorded before (another layer sharing the blob) still runs its backward
        on the blob's current rows, as Caffe's Backward reads them."""
        unit_rows_(self.blobs[0].data.view(self.num_output, self.K))

    def forward(self, x: Tensor, *rest: Tensor, call: LayerCall = PLAIN) -> Tensor:  # type: ignore[override]
        if rest:
            return self._forward_weight_bottom(x, *rest)
        if self.normalize:
            self.normalize_weight_()
        lead = x.shape[: self.axis]
        x2 = x.reshape(-1, self.K)
        w = self.blobs[0]
        b = self.blobs[1] if self.bias_term else None
        plain = not torch.is_grad_enabled() or not (x2.requires_grad or w.requires_grad)  # nothing to record
        if plain or torch.is_autocast_enabled(x2.device.type) or torch.compiler.is_compiling():  # bf16 / compile: autograd's own
            y = (torch.addmm(b, x2, w) if b is not None else x2 @ w) if self.transpose else F.linear(x2, w, b)
        else:
            y = _InnerProduct.apply(x2, w, b, self.transpose, call)
        return y.reshape(tuple(lead) + (self.num_output,))

    def _forward_weight_bottom(self, x: Tensor, w: Tensor, *bias: Tensor) -> Tensor:
        """happynear's form: the weights from bottom 1 (N x K, or K x N with ``transpose``), the bias from
        bottom 2; autograd's backward is the fork's (the gradient to every bottom)."""
        n = self._rows(tuple(w.shape))
        x2 = x.reshape(-1, self.K)
        b = bias[0].reshape(n) if self.bias_term else None
        if self.transpose:
            w2 = w.reshape(self.K, n)
            y = torch.addmm(b, x2, w2) if b is not None else x2 @ w2
        else:
            y = F.linear(x2, w.reshape(n, self.K), b)
        return y.reshape(tuple(x.shape[: self.axis]) + (n,))

    def lean_kernel(self, bottoms: Sequence[Tensor]) -> Callable[..., Any] | None:
        """``forward``'s no-record branch for bottoms of this shape (no autocast; not with ``normalize``,
        whose forward rewrites the weight; not with the weights from a bottom: ``forward`` runs)."""
        if torch.is_autocast_enabled(bottoms[0].device.type) or self.normalize or self.weight_bottom:
            return None
        shape, K = tuple(bottoms[0].shape[: self.axis]) + (self.num_output,), self.K
        w, b = self.blobs[0], (self.blobs[1] if self.bias_term else None)
        if self.transpose and b is not None:
            return lambda x: torch.addmm(b, x.reshape(-1, K), w).reshape(shape)
        if self.transpose:
            return lambda x: (x.reshape(-1, K) @ w).reshape(shape)
        return lambda x: F.linear(x.reshape(-1, K), w, b).reshape(shape)

    @classmethod
    def examples(cls) -> list[Example]:
        import numpy as np

        r = np.random.default_rng(6)
        return [
            Example('name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 5 '
                    'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.5 } }',
                    [r.standard_normal((3, 2, 2, 2))]),
            Example('name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 4 '
                    'transpose: true bias_term: false weight_filler { type: "xavier" } }', [r.standard_normal((3, 6))]),
            Example('name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 3 '
                    'axis: 2 transpose: true weight_filler { type: "gaussian" std: 0.3 } '
                    'bias_filler { type: "constant" value: 0.2 } }', [r.standard_normal((2, 3, 4, 2))]),
            Example('name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 3 '
                    'axis: -1 weight_filler { type: "gaussian" std: 0.3 } }', [r.standard_normal((2, 3, 4))]),
            # happynear's normalize: the weight diff is w.r.t. the normalized rows and each forward
            # renormalizes a perturbed weight: the bottom's gradient only
            Example('name: "fc6_l2" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 4 '
                    'normalize: true bias_term: false weight_filler { type: "xavier" } }', [r.standard_normal((3, 6))],
                    grad_params=False),
            # happynear's weights (and bias) from the bottoms: the gradient to each
            Example('name: "cosine" type: "InnerProduct" bottom: "x" bottom: "w" top: "y" inner_product_param { '
                    'bias_term: false }', [r.standard_normal((3, 2, 3)), r.standard_normal((4, 6))], grad_bottoms=(0, 1)),
            Example('name: "cosine" type: "InnerProduct" bottom: "x" bottom: "w" bottom: "b" top: "y" '
                    'inner_product_param { transpose: true axis: 2 }',
                    [r.standard_normal((2, 3, 4)), r.standard_normal((5, 4)), r.standard_normal((5,))],
                    grad_bottoms=(0, 1, 2)),
        ]
