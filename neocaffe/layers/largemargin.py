"""L-Softmax's ``LargeMarginInnerProduct`` (Liu et al., "Large-Margin Softmax Loss for Convolutional Neural
Networks", ICML 2016), the ancestor of SphereFace's ``MarginInnerProduct`` (``face_losses.py``), whose
margin polynomials, lambda schedule, label reading and forward counter it shares.

Lineage: wy1iu/LargeMargin_Softmax_Loss @ c3e9f20 (the layer unchanged since 7ef9bd5),
``src/caffe/layers/largemargin_inner_product_layer.cpp`` (we follow the ``.cpp``; the ``.cu`` is compared
below) and its header. Bottoms: features x (M, K after flattening from ``axis``) and labels (M values, read
as ``static_cast<int>``). Tops: the logits (M, N) and, optionally, lambda (shape (1,)). Blob: the weight W
(N, K), filled by ``weight_filler``; no bias. ``largemargin_inner_product_param``: ``num_output``, ``type``
(SINGLE/DOUBLE/TRIPLE/QUADRUPLE: m = 1..4), ``weight_filler``, ``axis``, and the schedule ``lambda =
max(base * (1 + gamma * iter)^-power, lambda_min)``, ``iter`` counting forwards from ``iteration`` (the
first forward uses ``iteration + 1``; cpp:108-115), as SphereFace's.

Forward (cpp:117-238). Unlike SphereFace, the weight is *not* normalized: with ``|x_i|``, ``|w_j|`` the
row norms and ``e = 1e-9`` (cpp:135),

* ``cos = x_i . w_y / (|x_i| |w_y| + e)`` at the label column ``y = y_i`` (the fork computes it for every
  column and reads only the label's);
* SINGLE: ``y_ij = x_i . w_j`` (plain ``x W^T``; lambda is still computed and output);
* otherwise ``y_iy = ((|x_i| |w_y| + e) psi(cos) + lambda x_i . w_y) / (1 + lambda)``, ``psi`` the monotone
  extension of ``cos(m theta)`` (SphereFace's, the same sign terms), and every other entry ``x_i . w_j``,
  computed as the fork does: ``(x_i . w_j + lambda x_i . w_j) * (1 / (1 + lambda))`` (cpp:194-196), which
  in float32 is not always ``x_i . w_j``.

Backward (cpp:241-476), an ``autograd.Function``. With ``a = top_diff / (1 + lambda)``, ``psi'`` the
derivative of ``psi`` and ``q = cos psi' - psi`` (the cpp's ``2 s0 c^2 + 1``, ``8 s1 c^3 - s2``, ``s3 (24
c^4 - 8 c^2 - 1) - s4``):

* bottom diff: ``a_ij w_j`` off the label column; at it ``a_iy (psi' w_y - q (|w_y| + e) / |x_i| x_i)``
  (cpp:383-395: the ``/ (-xw_norm_ratio)``); plus ``lambda / (1 + lambda) * top_diff W`` (cpp:400-402);
* weight diff, accumulated: ``a_ij x_i`` off the label; at it ``a_iy (psi' x_i - q |x_i| / (|w_y| + e)
  w_y)``; plus ``lambda / (1 + lambda) * top_diff^T x``; SINGLE: ``top_diff^T x``;
* labels get no diff; lambda's top diff is ignored.

This *is* the gradient of the forward (SphereFace's backward, by contrast, scales the label column's pair
to unit length), up to the ``e``: the exact derivative has ``|w_y| / |x_i|`` and ``|x_i| / |w_y|`` where the
fork writes ``(|w_y| + e) / |x_i|`` and ``|x_i| / (|w_y| + e)`` (cpp:249-253). The two part where a norm
is near ``e``: a weight row of norm ~1e-9 gets a weight diff far from the gradient, and an all-zero feature
row gets a NaN bottom diff (``top_diff / 0 * 0``), as in the fork (its ``.cu`` too). The fork adds ``e`` to
its stored ``|w|`` in every backward (cpp:249), so a second backward after one forward would see ``2e``;
here each backward sees ``|w| + e``.

The ``.cu`` is the same in exact arithmetic with other rounding and without the ``e``: its forward divides
``x . w`` by ``|x|`` and then by ``|w|`` (cu:35-42) and rewrites only the label column (cu:76-91: the others
stay ``x . w``), its backward sums ``top_diff x`` off the label without the ``1/(1+l) + l/(1+l)`` split
(cu:132-156) and writes ``coeff_x = -|w| / |x|`` (cu:230). Its lambda uses ``powf``; the ``.cpp``'s
``pow`` on floats, which we compute in double and round (``face_losses.margin_lambda``).

Deviations: the fork writes ``top[1]`` unconditionally (cpp:69, 115), out of range with one top; here one
top is allowed and lambda is then not output. The fork checks only ``bottom[0]->num() ==
bottom[1]->num()`` (cpp:15); here the labels must number M (the axes before ``axis``), and labels out of
``[0, num_output)`` are an error (checked for host tensors) where the fork indexes out of range. The
counter counts forwards, as the fork's ``iter_`` (with ``iter_size`` k it moves k per solver iteration, a
test net's layer keeps its own), and is layer state (``resume_state``): a resumed run continues the
schedule, where Caffe restarts it from ``iteration``.

The fork's example nets (``myexamples/{mnist,cifar10,cifar10+}/model/*_train_test.prototxt``) train with a
DOUBLE or QUADRUPLE layer and test with a SINGLE one sharing the weight by the param name ``ip2``, and put
the fork's ``BN`` after every convolution. That BN reads a ``bn_param`` identical to PSPNet's (same fields,
numbers, defaults), so neocaffe's ``BN`` (``bn.py``) runs it as PSPNet's: the same TRAIN-phase forward and
backward, but the fork's BN is an older state of that layer and differs elsewhere: blobs of shape (1, C)
(PSPNet's are 1 x C x 1 x 1, so the fork's ``.caffemodel`` BN blobs are refused, naming the layer and both
shapes), a fourth blob that holds the running *inverse* standard deviation (initialized to 1, used as is
in TEST and when frozen) where PSPNet's holds the running variance, and no forced ``lr_mult: 0`` on the
running statistics (the solver's weight decay shrinks them). Its fields cannot tell it from PSPNet's, so it
is not ported as a third lineage (NUMBERING.md rule 6).
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import TRAIN, Example, Layer
from neocaffe.layers.face_losses import SINGLE, MarginProduct, _in, _labels, _margin_terms, margin_lambda
from neocaffe.layers.normalization import caffe_sqrt
from neocaffe.layers.registry import register_layer

EPS = 1e-9  # (Dtype)0.000000001, added to |x||w| in the forward (cpp:135) and to |w| in the backward (cpp:249)
FIELD = "largemargin_inner_product_param"


def _norms(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """``x_norm_`` and ``w_norm_``: the rows' ``sqrt(dot)`` (cpp:120-127)."""
    return caffe_sqrt((x * x).sum(1)), caffe_sqrt((w * w).sum(1))


def lsoftmax_forward(x: Tensor, w: Tensor, lab: Tensor, margin: int, lam: float) -> tuple[Tensor, Tensor]:
    """The logits (M, N) of a margin type (not SINGLE) and the label cosines (M,) (cpp:129-233)."""
    xw = x @ w.t()
    xn, wn = _norms(x, w)
    prod = xn * wn[lab] + _in(x.dtype, EPS)  # xw_norm_product_ at the label, + 1e-9 (cpp:131-135)
    c = xw.gather(1, lab[:, None]).squeeze(1) / prod  # caffe_div (cpp:136)
    psi = _margin_terms(c, margin)[0]
    top = xw.scatter(1, lab[:, None], (prod * psi)[:, None])  # cpp:188-193
    # + lambda * x'w (gemm, beta = 1), then * 1 / (1 + lambda), every entry (cpp:194-196)
    top = (top + lam * xw) * _in(x.dtype, 1 / _in(x.dtype, 1 + lam))
    return top, c


class _LargeMarginFn(torch.autograd.Function):
    """A margin type's forward with the fork's backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, lab: Tensor, margin: int, lam: float) -> Tensor:  # noqa: D102
        top, c = lsoftmax_forward(x, w, lab, margin, lam)
        ctx.save_for_backward(x, w, lab, c)
        ctx.margin, ctx.lam = margin, lam
        return top

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        x, w, lab, c = ctx.saved_tensors
        dt = x.dtype
        inv = _in(dt, 1 / _in(dt, 1 + ctx.lam))
        rest = _in(dt, ctx.lam / _in(dt, 1 + ctx.lam))
        xn, wn = _norms(x, w)
        ratio = xn * (1 / (wn + _in(dt, EPS)))[lab]  # xw_norm_ratio_ at the label: |x| / (|w| + 1e-9) (cpp:249-253)
        _, dpsi, q = _margin_terms(c, ctx.margin)  # psi' and q = cos psi' - psi
        a = inv * g  # (1 / (1 + lambda)) * top_diff, every column
        gy = a.gather(1, lab[:, None]).squeeze(1)
        b = a.scatter(1, lab[:, None], (gy * dpsi)[:, None])  # at the label: a_iy psi'
        gx = gw = None
        if ctx.needs_input_grad[0]:
            # a_iy / (-ratio) * q on x_i (cpp:392-395); the gemm with alpha = l / (1 + l) (cpp:400-402)
            gx = b @ w + ((gy / -ratio) * q)[:, None] * x + rest * (g @ w)
        if ctx.needs_input_grad[1]:
            on_w = torch.zeros(w.shape[0], dtype=dt, device=w.device).index_add_(0, lab, gy * -ratio * q)
            gw = b.t() @ x + on_w[:, None] * w + rest * (g.t() @ x)  # cpp:273-291
        return gx, gw, None, None, None


@register_layer("LargeMarginInnerProduct")
class LargeMarginInnerProductLayer(MarginProduct):
    """L-Softmax's large-margin inner product (see the module docstring)."""

    FIELD = FIELD

    def forward(self, x: Tensor, label: Tensor):  # type: ignore[override]
        self.iteration += 1
        lam = margin_lambda(self.param.largemargin_inner_product_param, self.iteration, x.dtype)
        w = self.blobs[0]
        lead = x.shape[: self.axis]
        x2 = x.reshape(-1, self.K)
        if self.margin == SINGLE:
            y = F.linear(x2, w)  # autograd's gradients are the fork's here (cpp:264-267, 368-372)
        else:
            lab = _labels(self, label, self.num_output)
            if torch.is_grad_enabled() and (x2.requires_grad or w.requires_grad):
                y = _LargeMarginFn.apply(x2, w, lab, self.margin, lam)
            else:
                y = lsoftmax_forward(x2, w, lab, self.margin, lam)[0]
        y = y.reshape(tuple(lead) + (self.num_output,))
        if self.n_tops == 1:
            return y
        return y, torch.full((1,), lam, dtype=x.dtype, device=x.device)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(21)
        x = r.standard_normal((4, 2, 2)) * np.array([1.0, 2.5, 0.7, 1.6])[:, None, None]
        label = np.array([0.0, 2.0, 1.0, 2.0])
        w = r.standard_normal((4, 4)) * np.array([0.8, 1.3, 0.5, 1.1])[:, None]

        def weights(layer: Layer) -> None:
            """The same weights whatever the seed: the resume-state test builds the layer twice with
            different seeds and compares tops bit for bit."""
            with torch.no_grad():
                layer.blobs[0].copy_(torch.as_tensor(w))

        def ex(margin: str, extra: str = "", tops: str = 'top: "y" top: "lambda"') -> str:
            return (f'name: "ip2" type: "LargeMarginInnerProduct" bottom: "x" bottom: "label" {tops} '
                    f'{FIELD} {{ num_output: 4 type: {margin} weight_filler {{ type: "msra" }} {extra} }}')

        # The fork's backward is the gradient of its forward (up to its 1e-9): bottom and weight checks,
        # with a lambda that stays put while the checker calls the forward again and again (gamma 0, or
        # the floor). The schedule itself (moving every forward) is the last example's, checked for the
        # resume state, not by finite differences.
        return [
            Example(ex("SINGLE", "base: 0", tops='top: "y"'), [x, label], phase=TRAIN, prepare=weights),
            Example(ex("DOUBLE", "base: 2"), [x, label], phase=TRAIN, prepare=weights),
            Example(ex("TRIPLE", "base: 1000 gamma: 0.12 power: 1 lambda_min: 0.5 iteration: 100000"), [x, label],
                    phase=TRAIN, prepare=weights),
            Example(ex("QUADRUPLE", "base: 0.25 axis: -2"), [x, label], phase=TRAIN, prepare=weights),
            Example(ex("QUADRUPLE", "base: 1000 gamma: 0.5 power: 2 iteration: 3"), [x, label], grad_bottoms=(),
                    grad_params=False, phase=TRAIN, prepare=weights),
        ]
