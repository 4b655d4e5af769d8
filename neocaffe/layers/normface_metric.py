"""happynear's metric-learning layers of NormFace (happynear/NormFace: ``prototxt/
normalized_Euclidean_contrastive.prototxt``, ``combine_softmax_contrastive.prototxt``, ``mnist/
lenet_train_test.prototxt``): ``InnerDistance`` and ``GeneralContrastiveLoss``.

Source: happynear/caffe-windows, branch ``ms`` @ 967eedf2 (``src/caffe/layers/inner_distance_layer.cpp``/
``.cu``, ``src/caffe/layers/general_constrastive_loss_layer.cpp`` (sic; CPU only, the GPU runs the CPU
code), ``include/caffe/layers/inner_distance_layer.hpp``, ``general_contrastive_loss_layer.hpp``); the
files and the two parameter messages are the same at 504d8a85, AMSoftmax's submodule pin.

**InnerDistance** (``inner_distance_param``): the InnerProduct with the dot product replaced by a distance.
Bottoms: x (flattened from ``axis`` into M x K) and optionally the weights (bottom 1, N x K: N its first
axis; NormFace feeds a normalized ``Parameter``) and, with ``update_center_only``, labels (bottom 2, M
values read as ``static_cast<int>``). One bottom: the layer's own blob, ``num_output`` rows of K, filled
by ``weight_filler``; with ``transpose`` the blob's shape is (K, N) but its memory is still read as N x K
(the fork's loops, "TODO: transpose = true"). Top ``bottom.shape[:axis] + (N,)``:
``L2``: ``y_mn = sum_k (x_mk - w_nk)^2`` (squared, no root); ``L1``: ``y_mn = sum_k |x_mk - w_nk|``.
``normalize`` (own blob only; ignored with a weight bottom, as the fork) rewrites the blob in place every
forward, TEST too: each row times ``1 / sqrt(w.w + 1e-6)`` (the eps added in double, as the ``.cpp``; the
``.cu`` takes ``(w.w)^-0.5`` without eps), as InnerProduct's ``normalize``; the weight diff is then w.r.t.
the normalized rows. ``bias_term``/``bias_filler`` are read by nothing (the fork makes no bias blob).
Backward, the fork's loops (``.cpp`` and ``.cu`` agree):

* L2: ``dx_mk = sum_n dy_mn 2 (x_mk - w_nk)``, ``dw_nk = sum_m dy_mn 2 (w_nk - x_mk)``: the true gradient;
* L1: **not the gradient**. The fork's ``#define sign(x) (0 < (x)) - ((x) < 0)`` has no outer
  parentheses, so ``dy * sign(d)`` expands to ``(dy * (0 < d)) - (d < 0)``:
  ``dx_mk = sum_n (dy_mn [x_mk > w_nk] - [x_mk < w_nk])`` and ``dw_nk = sum_m (dy_mn [w_nk > x_mk] -
  [w_nk < x_mk])``: the ``-1`` of ``sign`` is not multiplied by the top diff (nor by the loss weight);
  we keep it, as the fork trains with it. (happynear's ``normalize_layer.cpp`` at ms has the parentheses.)
* ``update_center_only`` (three bottoms: x, weights, labels): the weight diff takes only the terms with
  ``n == label_m`` (the whole term, the ``- [w < x]`` of L1 too); x's diff is unchanged. Labels outside
  [0, N) contribute nothing (the ``.cpp``; the ``.cu`` would index out of range). The fork reads the
  labels from the last bottom and the weights from bottom 1 whenever there are two bottoms, so
  ``update_center_only`` with fewer than three bottoms reads garbage there: an error here. Three bottoms
  without it: bottom 2 is not read. The labels get no diff.

The sums run in another order than the fork's loops, chunked over N (at most ``CHUNK`` elements of
``x - w`` at a time), every term as the fork writes it.

**GeneralContrastiveLoss** (``general_contrastive_loss_param``): a hinge on distances such as
InnerDistance's. Bottoms: the distances d (num x dim, num the first axis), labels (num values in
[0, dim)), optionally a third blob of d's count whose values are read instead of bottom 0's (the fork's
"threshold from bottom[2]": the diff still goes to bottom 0). Tops: the loss and, optionally, the mean
distances ``(sum_i pos_i / num, sum neg / num / (dim - 1)[, intra_mae])`` of the un-zeroed terms below.
For the label entry ``pos = min(positive_outlier_thresh, max(0, d - positive_margin))``, term ``pos *
positive_weight``; for the others with ``d < negative_margin``: ``neg = negative_margin - d``, term
``neg * negative_weight`` (``exp_negative_weight``: ``exp(-d) * negative_weight``); the others 0. Then
``positive_first``: rows whose label distance > ``positive_upper_bound`` keep only the label term;
``max_positive_only``: only the row of the *smallest* label term keeps it (the fork's ``<``: the first
minimum, despite the name); ``max_negative_only``: each row keeps only the negative term that beats
its column 0's term (the first maximum; none beats it: column 0, the label column when the label is 0,
which drops them all). Loss ``sum |term| / num``. ``square`` is read by nothing (as in the fork).
``add_intra_mae``: the negative margin is ``intra_mae + negative_margin``, ``intra_mae`` a running mean
(``0.99 intra_mae + 0.01 sum pos / num``, in double, capped at ``max_negative_margin``), updated after
every forward, TEST too, kept per layer (the test net's its own), carried as resume state where Caffe
restarts it at 0 (the fork updates it without ``add_intra_mae`` too, where nothing reads it).

Backward, the fork's diff times ``loss_weight / num`` (computed at the forward, from the same data):
label entry ``positive_weight`` where ``positive_margin < d < positive_outlier_thresh`` (and the row is
the kept one under ``max_positive_only``), else 0; negatives ``-negative_weight`` (``exp``: ``-exp(-d)
negative_weight``) where ``d < negative_margin`` (and kept under ``max_negative_only``); a
``positive_first`` row gets ``positive_weight`` at its label and 0 elsewhere. Where ``normalize_negative``
is *set* (``has_``), ``s = |sum of the negatives' weights| / normalize_negative / num`` and, if ``s >
positive_weight``, every negative diff is divided by s. Not the gradient of the loss: ``positive_first``
rows (``positive_weight`` even past the threshold or outside ``max_positive_only``), the threshold window
(``d < positive_outlier_thresh`` where the loss flattens at ``d > positive_outlier_thresh +
positive_margin``), ``normalize_negative``, and negative weights (the loss takes ``|term|``). The distance
top passes no diff (its loss weight, NormFace's ``loss_weight: 1``, counts in the reported loss only).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import TEST, TRAIN, Example, Layer, Shape, canonical_axis
from neocaffe.layers.face_losses import _in, _labels
from neocaffe.layers.fillers import fill
from neocaffe.layers.normalization import unit_rows_
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import _LossLayer

CHUNK = 1 << 24  # elements of x - w held at once
DISTANCES = ("L2", "L1")


# -- InnerDistance -----------------------------------------------------------------------------------
def _step(m: int, k: int) -> int:
    """Rows of w per chunk: at most ``CHUNK`` elements of ``x - w`` (M x step x K) at a time."""
    return max(1, CHUNK // max(1, m * k))


class _InnerDistanceFn(torch.autograd.Function):
    """Distances (M, N) of x (M, K) to the rows of w (N, K), with the fork's backward (module docstring);
    ``mask`` (M, N): the terms the weight diff takes (``update_center_only``), None: all."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, mask: Tensor | None, l1: bool) -> Tensor:  # type: ignore[override]
        m, k = x.shape
        n = w.shape[0]
        y = x.new_empty((m, n))
        step = _step(m, k)
        for s in range(0, n, step):
            d = x[:, None, :] - w[None, s:s + step, :]
            y[:, s:s + step] = (d.abs() if l1 else d * d).sum(2)
        ctx.save_for_backward(x, w, mask)
        ctx.l1 = l1
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        x, w, mask = ctx.saved_tensors
        m, k = x.shape
        n = w.shape[0]
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dx = torch.zeros_like(x) if want_x else None
        dw = torch.empty_like(w) if want_w else None
        dyw = dy if mask is None else dy * mask
        step = _step(m, k)
        for s in range(0, n, step):
            e = slice(s, s + step)
            d = x[:, None, :] - w[None, e, :]  # (M, c, K)
            if not ctx.l1:  # dy (x - w) 2 and dy (w - x) 2: the factor 2 and the sign are exact
                if want_x:
                    dx += torch.einsum("mn,mnk->mk", dy[:, e], d) * 2
                if want_w:
                    dw[e] = torch.einsum("mn,mnk->nk", dyw[:, e], d) * -2
                continue
            above, below = (d > 0).to(d.dtype), (d < 0).to(d.dtype)  # x > w, x < w
            if want_x:  # dy [x > w] - [x < w]
                dx += torch.einsum("mn,mnk->mk", dy[:, e], above) - below.sum(1)
            if want_w:  # dy [w > x] - [w < x], only the masked terms
                lose = above.sum(0) if mask is None else torch.einsum("mn,mnk->nk", mask[:, e], above)
                dw[e] = torch.einsum("mn,mnk->nk", dyw[:, e], below) - lose
        return dx, dw, None, None


@register_layer("InnerDistance")
class InnerDistanceLayer(Layer):
    """happynear's ``InnerDistance`` (see the module docstring)."""

    min_bottoms = 1
    max_bottoms = 3
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.inner_distance_param
        if p.distance_type not in DISTANCES:
            raise self.error(f"inner_distance_param.distance_type '{p.distance_type}' unknown; expected one of "
                             f"{', '.join(repr(d) for d in DISTANCES)}")
        self.l1 = p.distance_type == "L1"
        self.center_only = bool(p.update_center_only)
        nb = len(bottom_shapes)
        if self.center_only and nb != 3:
            raise self.error(f"inner_distance_param.update_center_only needs three bottoms (features, weights, "
                             f"labels); received {nb} (the fork would read the labels as weights)")
        self.own_weight = nb == 1
        self.normalize = bool(p.normalize) and self.own_weight  # as the fork's Forward
        self.axis = self._axis(bottom_shapes[0])
        self.K = math.prod(bottom_shapes[0][self.axis:])
        if self.own_weight:
            self.num_output = int(p.num_output)
            if self.num_output <= 0:
                raise self.error(f"inner_distance_param.num_output must be positive with one bottom; received "
                                 f"{self.num_output}")
            shape = (self.K, self.num_output) if p.transpose else (self.num_output, self.K)
            self.add_blob(fill(p.weight_filler, shape))

    def _axis(self, shape: Shape) -> int:
        return canonical_axis(int(self.param.inner_distance_param.axis), len(shape), self,
                              "inner_distance_param.axis")

    def allow_force_backward(self, bottom: int) -> bool:
        """The labels (bottom 2) get no diff."""
        return bottom < 2

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        axis = self._axis(s)
        k, m = math.prod(s[axis:]), math.prod(s[:axis])
        if k != self.K:
            raise self.error(f"input size incompatible with the weights: bottom {s} has {k} inputs from axis "
                             f"{axis}; expected {self.K}")
        n = self.num_output if self.own_weight else self._rows(bottom_shapes[1])
        if self.center_only and math.prod(bottom_shapes[2]) != m:
            raise self.error(f"update_center_only needs one label per item: bottom 0 {s} makes {m} items; "
                             f"received label shape {tuple(bottom_shapes[2])}")
        return [s[:axis] + (n,)]

    def _rows(self, ws: Shape) -> int:
        ws = tuple(ws)
        if not ws or ws[0] == 0 or math.prod(ws) != ws[0] * self.K:
            raise self.error(f"bottom 1 (the weights) needs rows of K = {self.K} values along its first axis; "
                             f"received shape {ws}")
        return ws[0]

    def normalize_weight_(self) -> None:
        """The fork's in-place row normalization (``normalize``), as InnerProduct's: through ``.data``."""
        unit_rows_(self.blobs[0].data.view(self.num_output, self.K))

    def forward(self, x: Tensor, *rest: Tensor) -> Tensor:  # type: ignore[override]
        lead = x.shape[: self.axis]
        x2 = x.reshape(-1, self.K)
        if self.own_weight:
            if self.normalize:
                self.normalize_weight_()
            w = self.blobs[0].view(self.num_output, self.K)  # (K, N) with transpose: the memory as N x K
        else:
            w = rest[0].reshape(self._rows(rest[0].shape), self.K)
        mask = None
        if self.center_only:
            lab = rest[1].detach().reshape(-1).to(torch.int64)  # static_cast<int>
            mask = (lab[:, None] == torch.arange(w.shape[0], device=lab.device)[None, :]).to(x.dtype)
        y = _InnerDistanceFn.apply(x2, w, mask, self.l1)
        return y.reshape(tuple(lead) + (w.shape[0],))

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(215)
        x = r.standard_normal((4, 2, 3))
        w = r.standard_normal((5, 6))
        label = np.array([1.0, 4.0, 0.0, 1.0])
        p = 'name: "ip2" type: "InnerDistance" bottom: "x" {} top: "y" inner_distance_param {{ {} }}'
        filler = 'weight_filler { type: "gaussian" std: 0.5 }'
        # L2: the fork's backward is the true gradient (with normalize: w.r.t. the normalized rows, and each
        # forward renormalizes a perturbed blob: the bottom's check only). L1's fork backward is not the
        # gradient (the sign macro): no check; tests/layers/test_normface_metric.py compares it with the fork.
        return [Example(p.format("", f"num_output: 5 {filler}"), [x]),
                Example(p.format("", f"num_output: 3 normalize: true bias_term: false {filler}"), [x],
                        grad_params=False),
                Example(p.format('bottom: "w"', ""), [x, w], grad_bottoms=(0, 1)),
                Example(p.format('bottom: "w" bottom: "label"', "update_center_only: true"), [x, w, label],
                        grad_bottoms=(0,)),
                Example(p.format("", f'num_output: 4 transpose: true distance_type: "L1" axis: 2 {filler}'),
                        [x], grad_bottoms=(), grad_params=False)]


# -- GeneralContrastiveLoss --------------------------------------------------------------------------
class _PresetDiffLoss(torch.autograd.Function):
    """A loss value whose bottom diff is the fork's ``diff * (top_diff / num)``, ``diff`` computed with it."""

    @staticmethod
    def forward(ctx, x: Tensor, loss: Tensor, diff: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(diff)
        ctx.shape, ctx.num = x.shape, x.shape[0]
        return loss.clone()

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (diff,) = ctx.saved_tensors
        return (diff * (g / ctx.num)).reshape(ctx.shape), None, None


@register_layer("GeneralContrastiveLoss")
class GeneralContrastiveLossLayer(_LossLayer):
    """happynear's ``GeneralContrastiveLoss`` (see the module docstring)."""

    exact_bottoms = None
    min_bottoms = 2
    max_bottoms = 3
    exact_tops = None
    min_tops = 1
    max_tops = 2
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.general_contrastive_loss_param
        self.p = p
        self.normalize_negative = float(p.normalize_negative) if p.HasField("normalize_negative") else None
        self.intra_mae = 0.0  # the fork's intra_mae_

    def allow_force_backward(self, bottom: int) -> bool:
        """Only bottom 0 gets a diff (not the labels, nor the values read in its place)."""
        return bottom == 0

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        out = super().reshape(bottom_shapes[:2])
        s, ls = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if not s or s[0] == 0 or math.prod(ls) != s[0]:
            raise self.error(f"needs one label per item of the distances: distances {s}, labels {ls}")
        if len(bottom_shapes) == 3 and math.prod(bottom_shapes[2]) != math.prod(s):
            raise self.error(f"bottom 2 (the values read instead of bottom 0's) needs bottom 0's count "
                             f"{math.prod(s)} (shape {s}); received shape {tuple(bottom_shapes[2])}")
        return out + [(3,) if self.p.add_intra_mae else (2,)][: self.n_tops - 1]

    def resume_state(self) -> dict:
        """The running ``intra_mae``."""
        return {"intra_mae": self.intra_mae}

    def load_resume_state(self, state: dict) -> None:
        """Continue from ``resume_state()``'s ``intra_mae``."""
        if not isinstance(state.get("intra_mae"), float):
            raise self.error(f"resume state needs a float 'intra_mae'; received {state!r}")
        self.intra_mae = state["intra_mae"]

    def _terms(self, d: Tensor, lab: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The fork's Forward_cpu and Backward_cpu on distances (num, dim): the loss, the diff before
        ``* loss_weight / num``, and the sums of the positive and negative distances."""
        p, dt = self.p, d.dtype
        num, dim = d.shape
        pm, pw, nw = p.positive_margin, p.positive_weight, p.negative_weight
        pot = p.positive_outlier_thresh
        nm = _in(dt, self.intra_mae + _in(dt, p.negative_margin)) if p.add_intra_mae else p.negative_margin
        cols = torch.arange(dim, device=d.device)[None, :]
        rows = torch.arange(num, device=d.device)[:, None]
        pos = cols == lab[:, None]
        zero = d.new_zeros(())
        trunc = (d - pm).clamp(min=0).clamp(max=pot)
        active = ~pos & (d < nm)  # negatives inside the margin
        hinge = nm - d
        weight = torch.exp(-d) * nw if p.exp_negative_weight else torch.full_like(d, nw)
        term = torch.where(pos, trunc * pw, torch.where(active, weight if p.exp_negative_weight else hinge * nw, zero))
        pos_sum, neg_sum = torch.where(pos, trunc, zero).sum(), torch.where(active, hinge, zero).sum()
        first = (d.gather(1, lab[:, None]) > p.positive_upper_bound) if p.positive_first else torch.zeros_like(pos[:, :1])
        keep_pos = torch.ones_like(first)
        if p.max_positive_only:  # the first smallest label term (the fork's "<")
            keep_pos = rows == term.gather(1, lab[:, None]).argmin()
        keep_neg = active
        if p.max_negative_only:  # the first largest negative term above column 0's, else column 0
            masked = torch.where(active, term, term.new_full((), -math.inf))
            best = torch.where(masked.amax(1) > term[:, 0], masked.argmax(1), 0)
            keep_neg = active & (cols == best[:, None])
        term = torch.where(pos, torch.where(keep_pos, term, zero), torch.where((first | ~keep_neg) & ~pos, zero, term))
        loss = term.abs().sum() / num
        # Backward_cpu
        window = (d > pm) & (d < pot) & keep_pos
        diff = torch.where(pos, torch.where(window | first, d.new_full((), pw), zero),
                           torch.where(keep_neg & ~first, -weight, zero))
        if self.normalize_negative is not None:
            s = torch.where(keep_neg & ~first, weight, zero).sum().abs() / self.normalize_negative / num
            diff = torch.where(~pos & (s > pw), diff / s, diff)
        return loss, diff, pos_sum, neg_sum

    def forward(self, x: Tensor, label: Tensor, *values: Tensor):  # type: ignore[override]
        num = x.shape[0]
        d = (values[0] if values else x).detach().reshape(num, -1)
        dim = d.shape[1]
        with torch.no_grad():
            loss, diff, pos_sum, neg_sum = self._terms(d, _labels(self, label, dim))
        top = _PresetDiffLoss.apply(x, loss, diff)
        if self.p.add_intra_mae:  # in double, stored in Dtype, capped (the fork: after every forward)
            mae = _in(d.dtype, 0.99 * self.intra_mae + 0.01 * float(pos_sum) / num)
            self.intra_mae = min(mae, _in(d.dtype, self.p.max_negative_margin))
        if self.n_tops == 1:
            return top
        dist = [pos_sum / num, neg_sum / num / (dim - 1)] + ([pos_sum.new_full((), self.intra_mae)]
                                                             if self.p.add_intra_mae else [])
        return top, torch.stack(dist)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(216)
        # distances away from the kinks (margins 0.3 and 1, threshold 4)
        d = r.choice([0.1, 0.5, 0.8, 1.3, 2.0], (5, 4)) + r.uniform(-0.05, 0.05, (5, 4))
        label = np.array([0.0, 3.0, 1.0, 2.0, 3.0])
        p = ('name: "contrastive_loss" type: "GeneralContrastiveLoss" bottom: "d" bottom: "label" {} '
             'top: "contrastive_loss" {} general_contrastive_loss_param {{ {} }}')
        nf = "positive_margin: 0 negative_margin: 1 negative_weight: 1 exp_negative_weight: false"
        # the fork's diff is the gradient for these (the hinge, exp weights, the hardest only); not with
        # positive_first, normalize_negative or add_intra_mae (the margin moves with every forward)
        return [Example(p.format("", 'top: "mean_distance"', nf), [d, label], phase=TRAIN),
                Example(p.format("", "", "positive_margin: 0.3 exp_negative_weight: true max_negative_only: true "
                                 "max_positive_only: true"), [d, label], phase=TRAIN),
                Example(p.format('bottom: "t"', 'top: "m"', "positive_first: true positive_upper_bound: 1 "
                                 "normalize_negative: 0.5 add_intra_mae: true"),
                        [d, label, d[::-1].copy()], grad_bottoms=(), phase=TEST)]
