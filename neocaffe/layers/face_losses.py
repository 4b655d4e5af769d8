"""The face-recognition training layers: SphereFace's A-Softmax (``MarginInnerProduct``) and the center
loss (``CenterLoss``), each with its fork's numerics and its fork's (not the true) gradients.

``MarginInnerProduct`` (wy1iu/sphereface @ 966c44c, ``tools/caffe-sphereface/src/caffe/layers/
margin_inner_product_layer.cpp``; its ``.cu`` differs only in rounding, see below). Bottoms: features x
(M, K after flattening from ``axis``) and labels (M values, read as ``static_cast<int>``). Tops: the
logits (M, N) and, optionally, lambda (shape (1,)). ``margin_inner_product_param``: ``num_output``,
``type`` (SINGLE/DOUBLE/TRIPLE/QUADRUPLE: m = 1..4), ``weight_filler``, ``axis``, and the schedule
``lambda = max(base * (1 + gamma * iter)^-power, lambda_min)``, ``iter`` counting forwards from
``iteration`` (the first forward uses ``iteration + 1``). Each forward, as the fork's:

* **rewrites the weight blob in place**: every row ``w_j`` becomes ``w_j * (1 / sqrt(w_j . w_j))``
  (cpp:120-127). The solver updates, snapshots and the test nets sharing the blob see the normalized
  rows, as in Caffe; an all-zero row becomes NaN, as there;
* top ``y_ij = x_i . w_j`` for ``j != y_i``; for the label column ``y_iy = (|x_i| psi(cos) + lambda
  x_i . w_y) / (1 + lambda)`` with ``cos = x_i . w_y / |x_i|`` and ``psi = cos(m theta)`` extended
  monotonically (``2 s0 c^2 - 1``; ``s1 (4 c^3 - 3 c) + s2``; ``s3 (8 c^4 - 8 c^2 + 1) + s4`` with the
  fork's sign terms, cpp:144-185). SINGLE is the plain ``x W^T`` (no lambda). The CPU rounding is
  kept: every entry is ``(base + lambda * x.w) * (1 / (1 + lambda))`` (cpp:210-214), so non-label
  entries are ``x.w (1 + lambda) / (1 + lambda)`` in float32 (the ``.cu`` leaves them untouched).

Backward (cpp:265-404), an ``autograd.Function``:

* weight diff ``top_diff^T x``: the plain inner-product gradient w.r.t. the normalized rows, not
  through the margin nor through the normalization;
* bottom diff: ``top_diff W`` for SINGLE; otherwise ``top_diff_ij w_j`` for ``j != y_i`` and for the
  label column ``top_diff_iy ((coeff_w w_y + coeff_x x_i) / (1 + lambda) + lambda / (1 + lambda) w_y)``
  where ``(coeff_w, coeff_x)`` is the true derivative's pair *normalized to unit length* (cpp:305-312,
  338-346, 374-385): the true gradient divided by ``|(coeff_w, coeff_x)|``, a direction. The ``.cu``
  is the same in exact arithmetic, with other rounding: its forward rewrites only the label column
  (cu:80-95) and its backward gives ``top_diff w_j`` off the label column without the ``1/(1+l) +
  l/(1+l)`` split (cu:137-162); we follow the ``.cpp``.
* labels get no diff; lambda's top diff is ignored.

Deviation: the fork writes ``top[1]`` unconditionally (cpp:118), out of range with one top; here one
top is allowed and lambda is then not output. The counter counts forwards, as the fork's ``iter_``: with
``iter_size`` k it moves k per solver iteration, and a test net's layer (sharing the weight) keeps its
own. It is layer state (``resume_state``): a resumed run continues the schedule, where Caffe restarts
it from ``iteration`` (which is why the field exists).

``CenterLoss`` (ydwen/caffe-face @ 48ff38e, ``src/caffe/layers/center_loss_layer.cpp``). Bottoms:
features (M, K from ``axis``, which may only lump trailing axes: M is the batch) and labels. Blob: the
centers (N, K), filled by ``center_filler``. Top: ``sum_i ||x_i - c_{y_i}||^2 / M / 2`` (cpp:62-69).
Backward (cpp:72-106): bottom diff ``(x_i - c_{y_i}) * (top_diff / M)`` (so scaled by the loss weight,
as the true gradient); the centers' "diff" is the fork's update term ``sum_{y_i = j} (c_j - x_i) /
(1 + n_j)``, added to the diff (``caffe_axpy``), independent of the loss weight and of M; the solver
then applies ``lr_mult``/``decay_mult`` to it as to any diff. The ``.cu`` assigns that term instead of
adding it (cu:36-38: with ``iter_size`` > 1 only the last pass counts there, and it writes it even when
the centers take no diff); we follow the ``.cpp``. Labels out of ``[0, num_output)`` (both layers) are an
error here where the fork reads out of range (checked for host tensors; on CUDA, an index assert).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import TRAIN, Example, Layer, Shape, canonical_axis
from neocaffe.layers.fillers import fill
from neocaffe.layers.normalization import caffe_sqrt
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import _LossLayer

SINGLE, DOUBLE, TRIPLE, QUADRUPLE = 0, 1, 2, 3  # MarginInnerProductParameter.MarginType
MARGIN_TYPES = {SINGLE: "SINGLE", DOUBLE: "DOUBLE", TRIPLE: "TRIPLE", QUADRUPLE: "QUADRUPLE"}


def _in(dtype: torch.dtype, v: float) -> float:
    """``v`` rounded to the layer's data type (Caffe's ``Dtype`` arithmetic on scalars)."""
    return float(np.float32(v)) if dtype == torch.float32 else float(v)


def margin_lambda(p: Any, iteration: int, dtype: torch.dtype = torch.float32) -> float:
    """``max(base * (1 + gamma * iteration)^-power, lambda_min)`` in ``dtype`` as the fork computes it
    (cpp:111-117; ``iteration`` is the already incremented counter)."""
    if dtype != torch.float32:
        return max(p.base * (1.0 + p.gamma * iteration) ** -p.power, p.lambda_min)
    f = np.float32
    t = f(1) + f(p.gamma) * f(iteration)
    lam = f(p.base) * f(np.float64(t) ** -np.float64(f(p.power)))
    return float(max(lam, f(p.lambda_min)))


def _powx(c: Tensor, k: int) -> Tensor:
    """``caffe_powx`` (a correctly rounded ``pow``): float32 through float64."""
    return (c.double() ** k).to(c.dtype) if c.dtype == torch.float32 else c ** k


def _margin_terms(c: Tensor, margin: int) -> tuple[Tensor, Tensor, Tensor]:
    """For the label cosines ``c`` (M,): ``psi`` (the forward's factor of ``|x|``) and the fork's
    un-normalized ``coeff_w`` and ``|x| * coeff_x`` (the backward's pair, before its division by -|x|)."""
    s0 = torch.sign(c)
    c2 = _powx(c, 2)
    if margin == DOUBLE:
        return 2 * s0 * c2 - 1, 4 * s0 * c, 2 * s0 * c2 + 1
    c3 = _powx(c, 3)
    if margin == TRIPLE:
        s1 = torch.sign(c.abs() - 0.5)
        s2 = s0 * (1 + s1) - 2
        return s1 * (4 * c3 - 3 * c) + s2, s1 * (12 * c2 - 3), 8 * s1 * c3 - s2
    c4 = _powx(c, 4)
    s3 = s0 * torch.sign(2 * c2 - 1)
    s4 = 2 * s0 + s3 - 3
    return s3 * (8 * c4 - 8 * c2 + 1) + s4, s3 * (32 * c3 - 16 * c), s3 * (24 * c4 - 8 * c2 - 1) - s4


def _margin_forward(x: Tensor, w: Tensor, lab: Tensor, margin: int, lam: float) -> tuple[Tensor, Tensor, Tensor]:
    """The logits (M, N) of a margin type (not SINGLE), the label cosines and ``|x|``."""
    xw = x @ w.t()
    norm = caffe_sqrt((x * x).sum(1))  # x_norm_ (cpp:134-136)
    c = xw.gather(1, lab[:, None]).squeeze(1) * (1 / norm)  # cos_theta at the label: scal by 1/|x| (cpp:137-143)
    psi = _margin_terms(c, margin)[0]
    top = xw.scatter(1, lab[:, None], (norm * psi)[:, None])  # |x| * psi at the label (cpp:204-209)
    # + lambda * x'w (gemm, beta = 1), then * 1 / (1 + lambda), every entry (cpp:210-214)
    top = (top + lam * xw) * _in(x.dtype, 1 / _in(x.dtype, 1 + lam))
    return top, c, norm


class ScheduledByForwards(Layer):
    """A layer of (scores, label) bottoms whose schedule (SphereFace's lambda, AM-Softmax's margin)
    counts its forwards in ``iteration``: the count is its resume state (Caffe restarts it from the
    parameter's ``iteration``), and the labels get no diff."""

    iteration: int

    def allow_force_backward(self, bottom: int) -> bool:
        """The labels get no diff."""
        return bottom == 0

    def resume_state(self) -> dict:
        """The schedule's forward counter."""
        return {"iteration": self.iteration}

    def load_resume_state(self, state: dict) -> None:
        """Continue the schedule from ``resume_state()``'s counter."""
        if not isinstance(state.get("iteration"), int):
            raise self.error(f"resume state needs an integer 'iteration'; received {state!r}")
        self.iteration = state["iteration"]


class _MarginInnerProductFn(torch.autograd.Function):
    """A margin type's forward with the fork's backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, lab: Tensor, margin: int, lam: float) -> Tensor:  # noqa: D102
        top, c, norm = _margin_forward(x, w, lab, margin, lam)
        ctx.save_for_backward(x, w, lab, c, norm)
        ctx.margin, ctx.lam = margin, lam
        return top

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        x, w, lab, c, norm = ctx.saved_tensors
        gx = gw = None
        if ctx.needs_input_grad[1]:
            gw = g.t() @ x  # cpp:276-279, the plain inner-product gradient
        if ctx.needs_input_grad[0]:
            dt = x.dtype
            inv = _in(dt, 1 / _in(dt, 1 + ctx.lam))
            rest = _in(dt, ctx.lam / _in(dt, 1 + ctx.lam))
            _, cw, cx = _margin_terms(c, ctx.margin)
            cx = (1 / -norm) * cx  # 1 / (-|x|) * (...)
            unit = caffe_sqrt(cw * cw + cx * cx)  # coeff_norm: the pair made a unit direction
            cw, cx = cw / unit, cx / unit
            a = inv * g  # (1 / (1 + lambda)) * top_diff, every column
            gy = a.gather(1, lab[:, None])
            a = a.scatter(1, lab[:, None], gy * cw[:, None])
            gx = a @ w + (gy * cx[:, None]) * x + rest * (g @ w)  # the last: gemm, alpha = l / (1 + l)
        return gx, gw, None, None, None


def _labels(layer: Layer, label: Tensor, n: int) -> Tensor:
    """``static_cast<int>`` of the labels (truncation toward zero), checked against ``[0, n)`` on the
    host (the fork indexes out of range; on CUDA an index out of range is a device-side assert)."""
    lab = label.detach().reshape(-1).to(torch.int64)
    if lab.device.type == "cpu" and lab.numel():
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or hi >= n:
            bad = lo if lo < 0 else hi
            raise layer.error(f"label {bad} out of range; expected labels in [0, {n}) (num_output = {n})")
    return lab


class MarginProduct(ScheduledByForwards):
    """What SphereFace's ``MarginInnerProduct`` and L-Softmax's ``LargeMarginInnerProduct`` share: features
    and labels in, the logits and optionally lambda out, one weight blob (``num_output`` x K) filled by
    ``weight_filler``, the margin ``type`` and the forward-counting schedule, read from the parameter
    message ``FIELD``."""

    FIELD = ""
    exact_bottoms = 2
    min_tops = 1
    max_tops = 2
    allow_in_place = False

    @property
    def margin_param(self) -> Any:
        return getattr(self.param, self.FIELD)

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.margin_param
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise self.error(f"{self.FIELD}.num_output must be positive; received {self.num_output}")
        if p.type not in MARGIN_TYPES:
            raise self.error(f"{self.FIELD}.type {p.type} unknown; expected one of "
                             f"{', '.join(f'{v} ({k})' for k, v in MARGIN_TYPES.items())}")
        self.margin = int(p.type)
        self.axis = self._axis(bottom_shapes[0])
        self.K = math.prod(bottom_shapes[0][self.axis:])
        self.iteration = int(p.iteration)  # the fork's iter_: forwards so far, from ``iteration``
        self.add_blob(fill(p.weight_filler, (self.num_output, self.K)))

    def _axis(self, shape: Shape) -> int:
        return canonical_axis(int(self.margin_param.axis), len(shape), self, f"{self.FIELD}.axis")

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s, ls = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        axis = self._axis(s)
        if math.prod(s[axis:]) != self.K:
            raise self.error(f"input size incompatible with the weights: bottom {s} has {math.prod(s[axis:])} "
                             f"inputs from axis {axis}; expected {self.K}")
        if math.prod(ls) != math.prod(s[:axis]):
            raise self.error(f"needs one label per inner product: bottom {s} makes {math.prod(s[:axis])} "
                             f"(the axes before {axis}); received label shape {ls}")
        return [s[:axis] + (self.num_output,), (1,)][: self.n_tops]


@register_layer("MarginInnerProduct")
class MarginInnerProductLayer(MarginProduct):
    """SphereFace's A-Softmax inner product (see the module docstring)."""

    FIELD = "margin_inner_product_param"

    def normalize_weight_(self) -> None:
        """The fork's in-place row normalization of the weight blob (cpp:120-127). Through ``.data``: no
        version bump, so a graph recorded before (another layer sharing the blob, or this one's last
        forward) still runs its backward, on the blob's current rows as Caffe's Backward reads them."""
        w = self.blobs[0].data
        w.mul_((1 / caffe_sqrt((w * w).sum(1)))[:, None])

    def forward(self, x: Tensor, label: Tensor):  # type: ignore[override]
        self.iteration += 1
        lam = margin_lambda(self.param.margin_inner_product_param, self.iteration, x.dtype)
        self.normalize_weight_()
        w = self.blobs[0]
        lead = x.shape[: self.axis]
        x2 = x.reshape(-1, self.K)
        if self.margin == SINGLE:
            y = F.linear(x2, w)  # autograd's gradients are the fork's here (cpp:287-291)
        else:
            lab = _labels(self, label, self.num_output)
            if torch.is_grad_enabled() and (x2.requires_grad or w.requires_grad):
                y = _MarginInnerProductFn.apply(x2, w, lab, self.margin, lam)
            else:
                y = _margin_forward(x2, w, lab, self.margin, lam)[0]
        y = y.reshape(tuple(lead) + (self.num_output,))
        if self.n_tops == 1:
            return y
        return y, torch.full((1,), lam, dtype=x.dtype, device=x.device)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(11)
        x = r.standard_normal((4, 2, 2))
        label = np.array([0.0, 2.0, 1.0, 2.0])
        w = np.array([[0.5, 0.5, -0.5, 0.5], [1.0, 0, 0, 0], [0.5, -0.5, 0.5, 0.5], [0, 0, 0, -1.0]])

        def unit_rows(layer: Layer) -> None:
            """Rows of unit length in binary (normalizing them changes nothing): the resume-state test
            builds the layer twice with different seeds and compares tops bit for bit."""
            with torch.no_grad():
                layer.blobs[0].copy_(torch.as_tensor(w))

        def ex(margin: str, extra: str = "", tops: str = 'top: "y" top: "lambda"') -> str:
            return (f'name: "fc6" type: "MarginInnerProduct" bottom: "x" bottom: "label" {tops} '
                    f'margin_inner_product_param {{ num_output: 4 type: {margin} weight_filler {{ type: "xavier" }} '
                    f'{extra} }}')

        # SINGLE: forward x W^T after the in-place normalization, backward top_diff W: the bottom check
        # holds. The weight diff is top_diff^T x, the gradient w.r.t. the normalized rows, not w.r.t. the
        # stored weight through the normalization, and every forward rewrites that weight (a perturbed
        # entry is renormalized away): no parameter check. The margin types' bottom diff uses the fork's
        # unit-length (coeff_w, coeff_x) direction at the label column, not the derivative: no check.
        return [
            Example(ex("SINGLE", tops='top: "y"'), [x, label], grad_params=False, phase=TRAIN, prepare=unit_rows),
            Example(ex("DOUBLE", "base: 1000 gamma: 0.12 power: 1 lambda_min: 5"), [x, label], grad_bottoms=(),
                    grad_params=False, phase=TRAIN, prepare=unit_rows),
            Example(ex("TRIPLE", "base: 10 gamma: 0.5 power: 2 iteration: 3"), [x, label], grad_bottoms=(),
                    grad_params=False, phase=TRAIN, prepare=unit_rows),
            Example(ex("QUADRUPLE", "base: 1000 gamma: 0.12 power: 1 lambda_min: 5 axis: -2"), [x, label],
                    grad_bottoms=(), grad_params=False, phase=TRAIN, prepare=unit_rows),
        ]


class _CenterLossFn(torch.autograd.Function):
    """``sum ||x_i - c_{y_i}||^2 / M / 2`` with caffe-face's backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, centers: Tensor, lab: Tensor) -> Tensor:  # noqa: D102
        dist = x - centers.index_select(0, lab)
        m = x.shape[0]
        ctx.save_for_backward(dist, lab)
        ctx.n = centers.shape[0]
        return (dist * dist).sum() / m / 2

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        dist, lab = ctx.saved_tensors
        gx = gc = None
        if ctx.needs_input_grad[0]:
            gx = dist * (g / dist.shape[0])  # top_diff / M in Dtype (cpp:99-100)
        if ctx.needs_input_grad[1]:
            variation = torch.zeros((ctx.n, dist.shape[1]), dtype=dist.dtype, device=dist.device)
            variation.index_add_(0, lab, dist)  # sum over y_m == n, in m order (cpp:85-93)
            count = torch.zeros(ctx.n, dtype=dist.dtype, device=dist.device).index_add_(
                0, lab, torch.ones_like(lab, dtype=dist.dtype))
            gc = -variation * (1 / (count + 1))[:, None]  # alpha = 1 / (count + 1) (cpp:94)
        return gx, gc, None


@register_layer("CenterLoss")
class CenterLossLayer(_LossLayer):
    """caffe-face's center loss (see the module docstring)."""

    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.center_loss_param
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise self.error(f"center_loss_param.num_output must be positive; received {self.num_output}")
        s = bottom_shapes[0]
        self.axis = canonical_axis(int(p.axis), len(s), self, "center_loss_param.axis")
        if self.axis < 1 or math.prod(s[1:self.axis]) != 1:
            raise self.error(f"center_loss_param.axis {p.axis} lumps more than the batch axis of bottom {tuple(s)}: "
                             "the fork takes M = the first axis and K = the axes from axis on; expected axis 1 "
                             "(or one after axes of size 1)")
        self.K = math.prod(s[self.axis:])
        self.add_blob(fill(p.center_filler, (self.num_output, self.K)))

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s, ls = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        out = super().reshape(bottom_shapes)
        if len(s) < 1 or math.prod(s[1:self.axis]) != 1 or math.prod(s[self.axis:]) != self.K:
            raise self.error(f"bottom {s} does not hold {self.K} features per item from axis {self.axis}")
        if len(ls) < 1 or math.prod(ls[1:]) != 1:
            raise self.error(f"needs labels of shape (M,) or (M, 1, 1, 1); received {ls}")
        return out

    def forward(self, x: Tensor, label: Tensor) -> Tensor:  # type: ignore[override]
        lab = _labels(self, label, self.num_output)
        return _CenterLossFn.apply(x.reshape(x.shape[0], self.K), self.blobs[0], lab)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(12)
        p = ('name: "center_loss" type: "CenterLoss" bottom: "x" bottom: "label" top: "loss" '
             'center_loss_param {{ num_output: 3 center_filler {{ type: "gaussian" std: 0.5 }} {} }}')
        # The bottom diff is the true gradient (times the loss weight). The centers' diff is the fork's
        # update term sum (c_j - x_i) / (1 + n_j), not d loss / d c_j = sum (c_j - x_i) / M: no parameter check.
        return [
            Example(p.format(""), [r.standard_normal((5, 4)), np.array([0.0, 2.0, 2.0, 1.0, 2.0])],
                    grad_params=False, phase=TRAIN),
            Example(p.format("axis: -1"), [r.standard_normal((4, 1, 3)), np.array([[1.0], [1.0], [0.0], [2.0]])],
                    grad_params=False, phase=TRAIN),
        ]
