"""TextBoxes++'s CTC loss (its CRNN recogniser's): ``CTCLoss``, and the sequence-length reading it shares with the
decoder (``CTCGreedyDecoder``: :mod:`neocaffe.layers.ctc_decoder`) and caffe_ocr's layers (:mod:`neocaffe.layers.ocr`).

Lineage: MhLiao/TextBoxes_plusplus @ 39d4898de1504c53a2ed3d67966a57b3595836d0 (textboxes in proto/NUMBERING.md),
``src/caffe/layers/ctc_loss_layer.cpp``, ``include/caffe/layers/ctc_loss_layer.hpp`` (ChWick et al.'s CTC for
Caffe; CPU only, no ``.cu``), tests ``src/caffe/test/test_ctc_loss_layer.cpp``; ``ctc_loss_param``
(``CTCLossParameter``).

**CTCLoss**: bottoms x (T, N, C) (a 4th axis must be 1), sequence indicators (T, N), targets (T, N); a scalar
top, loss weight 1. Sequence n runs ``S_n`` steps: the first t >= 1 whose indicator rounds (``int(v + 0.5)``)
to 0, else T; its label length ``L_n`` is the first t whose target is < 0, else T. ``L_n = 0`` needs
``S_n <= 1`` and skips the sequence (no loss, no diff); ``L_n <= S_n``. The targets t < L_n, rounded, form
the label (``preprocess_collapse_repeated``: a target equal, unrounded, to the one before is dropped); a
label >= C or equal to the blank ends it (a warning; a valid label after it is an error);
``L_n <= S_n - output_delay``. ``blank_index`` < 0: C - 1 (fixed at setup). ``y = softmax(x[t, n])`` in the
data type (max, exp, sum, divide), ``log y`` in double; log-space alpha/beta over ``l' = (blank, l_1,
blank, ..., l_L, blank)`` (U = 2L + 1) for t < T_n = ``S_n - output_delay``, reading y at
``output_delay + t`` (``merge``: ``ctc_merge_repeated``)::

    alpha[0, 0] = log y[blank];  alpha[1, 0] = log y[l'_1];  beta[U-2, T_n-1] = beta[U-1, T_n-1] = 0
    alpha[u, t] = log y_t[l'_u] + lse(alpha[u, t-1] if merge or l'_u blank, alpha[u-1, t-1],
                                      alpha[u-2, t-1] if l'_u not blank and not (merge and l'_u == l'_{u-2}))
    beta[u, t] = lse(beta[u, t+1] + log y_{t+1}[l'_u] if merge or l'_u blank, beta[u+1, t+1] + log y_{t+1}[l'_{u+1}],
                     beta[u+2, t+1] + log y_{t+1}[l'_{u+2}] if l'_u not blank and not (merge and l'_u == l'_{u+2}))

each only where ``max(0, U - 2(T_n - t)) <= u < min(U, 2(t + 1))``, -inf elsewhere. ``log p_n =
lse_u(alpha + beta)`` at ``t = loss_calculation_t`` clamped to [0, T_n - 1] (the fork's LayerSetUp resets it
to 0 whatever the prototxt says; the attribute of that name is for the fork's tests). Loss ``sum_n -log p_n
/ N`` (N counts skipped sequences). Diff of x at ``(output_delay + t, n)``, t < T_n: ``y - sum_{u: l'_u = c}
exp(alpha[u, t] + beta[u, t] - log p_n)``, or ``y`` where ``log p_n = -inf`` (loss +inf); 0 elsewhere: the
gradient of ``sum_n -log p_n``, N times the reported loss's. The fork's Backward never reads the top's diff:
here the diff a net passes (the loss weight) is divided back out (``g / loss_weight``; g when
``loss_weight: 0``), so a net gets the fork's diff at any loss weight, and a gradient check of one sequence
sees the true gradient. No diff to indicators and targets; ``force_backward`` reaches x only (the fork
CHECKs ``propagate_down[1]``, ``[2]`` false and aborts).

Deviations: CTCLoss takes a new T or N at every forward (the fork CHECKs them against setup's); the fork's writes
outside its alpha (row 1) and beta (row -1) arrays for a label emptied by the filtering above (U = 1) are dropped;
``log y`` is double throughout (the fork's alpha takes ``log`` of a ``Dtype`` value: a float log where its headers
overload it); its per-item sums (per class, ``log p_n``) are chains of two-term log-sum-exps, here
``logsumexp``/sums of exps: equal to rounding; its "No valid path found" warning is not logged (the loss shows
+inf). Targets and indicators are read on the host (one copy per forward); the recursions run batched on x's
device.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape, legacy_shape
from neocaffe.layers.registry import register_layer

log = logging.getLogger("neocaffe.layers")
NEG_INF = float("-inf")


def _round(v: Tensor) -> Tensor:
    """``static_cast<int>(v + 0.5)``: truncation toward zero."""
    return torch.trunc(v.to(torch.float64) + 0.5).to(torch.int64)


def first_row(mask: Tensor, limit: int) -> Tensor:
    """Per column of a (T, N) mask, the first row where it holds, else ``limit``."""
    hit = torch.cat([mask, torch.ones((1, mask.shape[1]), dtype=torch.bool, device=mask.device)], 0)  # a sentinel row
    rows = torch.arange(hit.shape[0], device=mask.device)[:, None].expand(hit.shape)
    return torch.where(hit, rows, torch.full_like(rows, hit.shape[0])).amin(0).clamp(max=limit)


@dataclass
class _Targets:
    """``l'`` and the lengths of one CTCLoss forward, on x's device."""

    lp: Tensor  # (N, U) int64: l' padded with the blank
    u_len: Tensor  # (N,) int64: U_n (1 for skipped sequences)
    t_len: Tensor  # (N,) int64: T_n = S_n - output_delay (0 for skipped sequences)
    t_max: int  # max T_n


class _CTCLossFn(torch.autograd.Function):
    """Loss as the fork's Forward; backward the fork's diff times ``g / loss_weight``."""

    @staticmethod
    def forward(ctx, x: Tensor, tg: _Targets, blank: int, delay: int, merge: bool, loss_t: int,
                weight: float):  # type: ignore[override]
        ctx.delay, ctx.weight, ctx.x_shape = delay, weight, x.shape
        ctx.empty = tg.t_max == 0  # every sequence skipped (or N = 0): loss 0, no diff
        if ctx.empty:
            return x.new_zeros(())
        y, alpha, beta, log_p = _alpha_beta(x, tg, blank, delay, merge, loss_t)
        loss = torch.where(tg.t_len > 0, -log_p, torch.zeros_like(log_p)).sum() / x.shape[1]
        ctx.save_for_backward(y, alpha, beta, log_p, tg.lp, tg.u_len, tg.t_len)
        return loss.to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        if ctx.empty:
            return torch.zeros(ctx.x_shape, dtype=g.dtype, device=g.device), None, None, None, None, None, None
        y, alpha, beta, log_p, lp, u_len, t_len = ctx.saved_tensors
        diff = _fork_diff(y, alpha, beta, log_p, lp, u_len, t_len, ctx.delay, ctx.x_shape)
        scale = g / ctx.weight if ctx.weight != 0 else g
        return diff * scale, None, None, None, None, None, None


def _alpha_beta(x: Tensor, tg: _Targets, blank: int, delay: int, merge: bool, loss_t: int):
    """Softmax, log alpha, log beta (N, T_max, U) and log p (N,), vectorised over the batch."""
    dev, n_seq, t_max, lp = x.device, x.shape[1], tg.t_max, tg.lp
    n_u = lp.shape[1]
    x3 = x.detach().reshape(x.shape[0], n_seq, -1)
    win = x3[delay:delay + t_max]  # the rows the recursions read (all sequences start at t = delay)
    e = torch.exp(win - win.amax(-1, keepdim=True))
    y = e / e.sum(-1, keepdim=True)  # in x's dtype, as the fork's Dtype softmax
    logy = torch.log(y.to(torch.float64)).permute(1, 0, 2)  # (N, T_max, C)
    ly = logy.gather(2, lp[:, None, :].expand(n_seq, t_max, n_u))  # log y_t[l'_u]
    t_len, u_len = tg.t_len[:, None], tg.u_len[:, None]
    u = torch.arange(n_u, device=dev)[None, :]
    inside = u < u_len
    is_blank = lp == blank
    self_ok = is_blank | merge
    ninf = torch.full((n_seq, n_u), NEG_INF, dtype=torch.float64, device=dev)
    prev2 = torch.cat([lp[:, :1], lp[:, :1], lp[:, :-2]], 1) if n_u > 2 else lp
    next2 = torch.cat([lp[:, 2:], lp[:, -1:], lp[:, -1:]], 1) if n_u > 2 else lp
    skip_a = (u > 1) & ~is_blank & ~(merge & (lp == prev2))
    skip_b = (u + 2 < u_len) & ~is_blank & ~(merge & (lp == next2))

    def in_range(t: int) -> Tensor:  # max(0, U - 2(T_n - t)) <= u < min(U, 2(t + 1))
        return (u >= (u_len - 2 * (t_len - t)).clamp(min=0)) & (u < torch.clamp(u_len, max=2 * (t + 1)))

    def up(v: Tensor, k: int) -> Tensor:  # v[u - k], -inf below 0
        return torch.cat([ninf[:, :k], v[:, :-k]], 1) if n_u > k else ninf

    def down(v: Tensor, k: int) -> Tensor:  # v[u + k], -inf past the end
        return torch.cat([v[:, k:], ninf[:, :k]], 1) if n_u > k else ninf

    alpha = torch.full((n_seq, t_max, n_u), NEG_INF, dtype=torch.float64, device=dev)
    alpha[:, 0, 0] = ly[:, 0, 0]
    if n_u > 1:  # U = 1: the fork writes this one outside its array
        alpha[:, 0, 1] = torch.where(u_len[:, 0] > 1, ly[:, 0, 1], ninf[:, 1])
    for t in range(1, t_max):
        prev = alpha[:, t - 1]
        s = torch.logaddexp(torch.where(self_ok, prev, ninf), up(prev, 1))
        s = torch.logaddexp(s, torch.where(skip_a, up(prev, 2), ninf))
        alpha[:, t] = torch.where(in_range(t) & (t < t_len), ly[:, t] + s, ninf)
    beta = torch.full_like(alpha, NEG_INF)
    last = torch.where(inside & (u >= u_len - 2), torch.zeros_like(ninf), ninf)
    for t in range(t_max - 1, -1, -1):
        b = ninf
        if t + 1 < t_max:
            nxt = beta[:, t + 1] + ly[:, t + 1]
            b = torch.logaddexp(torch.where(self_ok, nxt, ninf), down(nxt, 1))
            b = torch.logaddexp(b, torch.where(skip_b, down(nxt, 2), ninf))
            b = torch.where(in_range(t) & (t < t_len - 1), b, ninf)
        beta[:, t] = torch.where(t == t_len - 1, last, b)
    at = torch.clamp(torch.full_like(tg.t_len, loss_t), max=(tg.t_len - 1).clamp(min=0)).clamp(min=0)
    idx = at[:, None, None].expand(n_seq, 1, n_u)
    ab = (alpha.gather(1, idx) + beta.gather(1, idx))[:, 0]
    log_p = torch.logsumexp(torch.where(inside, ab, ninf), 1)
    return y, alpha, beta, log_p


def _fork_diff(y: Tensor, alpha: Tensor, beta: Tensor, log_p: Tensor, lp: Tensor, u_len: Tensor, t_len: Tensor,
               delay: int, x_shape: torch.Size) -> Tensor:
    """CalculateGradient for every sequence at once: (T, N, C...) in y's dtype."""
    dev = y.device
    t_max, n_seq, n_c = y.shape
    u = torch.arange(lp.shape[1], device=dev)
    lp_ok = log_p > NEG_INF
    occ = torch.exp(alpha + beta - torch.where(lp_ok, log_p, torch.zeros_like(log_p))[:, None, None])
    occ = torch.where((u[None, :] < u_len[:, None])[:, None, :], occ, torch.zeros_like(occ))
    per_class = torch.zeros((n_seq, t_max, n_c), dtype=torch.float64, device=dev)
    per_class.scatter_add_(2, lp[:, None, :].expand_as(occ), occ)
    y64 = y.to(torch.float64)
    d = torch.where(lp_ok[None, :, None], y64 - per_class.permute(1, 0, 2), y64)
    steps = torch.arange(t_max, device=dev)[:, None]
    d = torch.where((steps < t_len[None, :])[:, :, None], d, torch.zeros_like(d))
    out = torch.zeros((x_shape[0], n_seq, n_c), dtype=y.dtype, device=dev)
    out[delay:delay + t_max] = d.to(y.dtype)
    return out.reshape(x_shape)


def _read_tn(blob: Tensor, t_steps: int, n_seq: int) -> Tensor:
    """A (T, N) host view of the first T*N values (the fork reads ``data + n`` stepping by N)."""
    return blob.detach().reshape(-1)[:t_steps * n_seq].to("cpu", torch.float64).reshape(t_steps, n_seq)


def read_lengths(layer: Layer, ind: Tensor, lab: Tensor, t_steps: int, n_seq: int) -> tuple[Tensor, Tensor, Tensor]:
    """The host (T, N) targets and each sequence's length and label length as ChWick's layers read them: a
    sequence ends at the first ``t >= 1`` whose indicator rounds to 0, a label at its first negative target.
    The fork's CHECKs (an empty target needs a sequence length <= 1, a label no longer than its sequence) are
    errors naming ``layer``; a sequence with an empty target gets length 0 (it is skipped)."""
    s, lv = _read_tn(ind, t_steps, n_seq), _read_tn(lab, t_steps, n_seq)
    rows = torch.arange(t_steps, device=torch.device("cpu"))[:, None]
    seq_len = first_row((_round(s) == 0) & (rows >= 1), t_steps)
    label_len = first_row(lv < 0.0, t_steps)
    empty_long, too_long = (label_len == 0) & (seq_len > 1), label_len > seq_len
    if bool((empty_long | too_long).any()):  # the fork's CHECKs, sequence by sequence
        n = int((empty_long | too_long).nonzero()[0, 0])
        raise layer.error(f"sequence {n} has an empty target but {int(seq_len[n])} steps (an empty target needs "
                          f"a sequence length <= 1)" if empty_long[n] else
                          f"the label length must be <= the sequence length; sequence {n} has "
                          f"{int(label_len[n])} targets and {int(seq_len[n])} steps")
    return lv, torch.where(label_len == 0, torch.zeros_like(seq_len), seq_len), label_len


@register_layer("CTCLoss")
class CTCLoss(Layer):
    """TextBoxes++'s (ChWick's) CTC loss: bottoms x (T, N, C), indicators (T, N), targets (T, N)."""

    is_loss = True
    exact_bottoms = 3
    exact_tops = 1
    auto_top_blobs = True  # the fork's LossLayer::AutoTopBlobs

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom == 0

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.ctc_loss_param
        self.delay = int(p.output_delay)
        if self.delay < 0:
            raise self.error(f"ctc_loss_param.output_delay must be >= 0; received {self.delay}")
        self.merge = bool(p.ctc_merge_repeated)
        self.collapse = bool(p.preprocess_collapse_repeated)
        self.loss_calculation_t = 0  # the fork's LayerSetUp resets it, whatever ctc_loss_param says
        self.classes = legacy_shape(bottom_shapes[0], self)[2]
        self.blank = int(p.blank_index) if p.blank_index >= 0 else self.classes - 1
        weights = list(self.param.loss_weight)
        self.weight = float(weights[0]) if weights else 1.0
        #: the fork's SequenceLength() / LabelLength() of the last forward (host)
        self.sequence_length: Tensor | None = None
        self.label_length: Tensor | None = None
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x, ind, lab = (legacy_shape(s, self, w) for s, w in zip(bottom_shapes, ("bottom 0", "bottom 1", "bottom 2")))
        if x[3] != 1:
            raise self.error(f"bottom 0 must be (T, N, C) (a 4th axis of 1); received {tuple(bottom_shapes[0])}")
        if x[2] != self.classes:
            raise self.error(f"the class count C is fixed at setup ({self.classes}); "
                             f"received {tuple(bottom_shapes[0])}")
        if not 0 <= self.blank < self.classes:
            raise self.error(f"ctc_loss_param.blank_index {self.blank} is not a class of {self.classes}")
        for what, s in (("sequence indicators", ind), ("targets", lab)):
            if s[0] != x[0] or s[1] != x[1]:
                raise self.error(f"the {what} must be (T, N) = ({x[0]}, {x[1]}) like bottom 0's first axes; "
                                 f"received {s}")
        return [()]

    def _targets(self, ind: Tensor, lab: Tensor, t_steps: int, n_seq: int, dev: torch.device) -> _Targets:
        cpu = torch.device("cpu")
        lv, seq_len, label_len = read_lengths(self, ind, lab, t_steps, n_seq)
        rows = torch.arange(t_steps, device=cpu)[:, None]
        within = rows < label_len[None, :]
        same = torch.cat([torch.zeros((1, n_seq), dtype=torch.bool, device=cpu), lv[1:] == lv[:-1]], 0)
        keep = within & ~(same & self.collapse)
        il = _round(lv)
        ends = keep & ((il >= self.classes) | (il == self.blank))
        valid = keep & ~ends
        if bool(ends.any()):
            t0, n0 = (int(v) for v in ends.nonzero()[0])
            log.warning("layer '%s' (CTCLoss): To end a sequence you should pass a negative number instead of %d "
                        "(sequence %d, step %d; %d such targets). Maybe your probability channel shape is too small?",
                        self.name, int(il[t0, n0]), n0, t0, int(ends.sum()))
        after_end = (torch.cumsum(ends.to(torch.int64), 0) - ends.to(torch.int64)) > 0
        bad = valid & after_end
        if bool(bad.any()):
            t0, n0 = (int(v) for v in bad.nonzero()[0])
            raise self.error(f"a target >= num_classes ({self.classes}) or equal to the blank ({self.blank}) must end "
                             f"the sequence; sequence {n0} has the valid target {int(il[t0, n0])} after one")
        short = (label_len > seq_len - self.delay) & (label_len > 0)
        if bool(short.any()):
            n0 = int(short.nonzero()[0, 0])
            raise self.error(f"not enough time for target transition sequence: sequence {n0} has {int(label_len[n0])} "
                             f"targets and {int(seq_len[n0])} - output_delay {self.delay} steps")
        count = valid.sum(0)
        n_u = 2 * int(count.max()) + 1 if n_seq else 1
        pos = torch.where(valid, torch.cumsum(valid.to(torch.int64), 0) * 2 - 1, n_u)  # l'_{2i+1} = l_i; U: a dump
        lp = torch.full((n_seq, n_u + 1), self.blank, dtype=torch.int64, device=cpu)
        lp.scatter_(1, pos.t(), torch.where(valid, il, self.blank).t())
        active = seq_len > 0
        t_len = torch.where(active, seq_len - self.delay, torch.zeros_like(seq_len))
        self.sequence_length, self.label_length = seq_len, label_len
        u_len = torch.where(active, 2 * count + 1, torch.ones_like(count))
        return _Targets(lp[:, :n_u].to(dev), u_len.to(dev), t_len.to(dev), int(t_len.max()) if n_seq else 0)

    def forward(self, x: Tensor, ind: Tensor, lab: Tensor) -> Tensor:  # type: ignore[override]
        if not torch.compiler.is_compiling():
            self.reshape([tuple(x.shape), tuple(ind.shape), tuple(lab.shape)])
        tg = self._targets(ind, lab, x.shape[0], x.shape[1], x.device)
        return _CTCLossFn.apply(x, tg, self.blank, self.delay, self.merge, self.loss_calculation_t, self.weight)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(148)
        # one sequence per example: the fork's diff is the gradient of N times its loss
        ind = np.array([[0.0], [1], [1], [1], [1], [0]])
        lab = np.array([[1.0], [1], [2], [-1], [-1], [-1]])
        return [
            Example('name: "ctc" type: "CTCLoss" bottom: "x" bottom: "ind" bottom: "lab" top: "loss"',
                    [r.standard_normal((6, 1, 4)), ind, lab]),
            Example('name: "ctc" type: "CTCLoss" bottom: "x" bottom: "ind" bottom: "lab" top: "loss" '
                    'ctc_loss_param { blank_index: 0 ctc_merge_repeated: false output_delay: 1 }',
                    [r.standard_normal((6, 1, 4, 1)), ind, lab]),
        ]
