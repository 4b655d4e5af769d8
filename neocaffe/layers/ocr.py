"""senlinuc/caffe_ocr's CTC layers (its DenseNet/ResNet/Inception + BLSTM + CTC text recognisers): ``WarpCTCLoss``
and its form of ``CTCGreedyDecoder``.

Lineage: senlinuc/caffe_ocr @ 81642f61ea8f888e360cca30e08e05b7bc6d4556 (caffe_ocr in proto/NUMBERING.md; the
layers unchanged since ``2ba5370``), ``src/caffe/layers/warp_ctc_loss_layer.{cpp,cu}``,
``include/caffe/layers/warp_ctc_loss_layer.hpp`` (on Baidu's warp-ctc, vendored as ``include/detail/cpu_ctc.h``,
``gpu_ctc.h``, ``ctc_helper.h``), ``src/caffe/layers/ctc_decoder_layer.cpp``; ``ctc_loss_param``
(``CTCLossParameter``: only ``blank_index``), ``ctc_decoder_param``. Its nets' ``Lstm``, ``Transpose``, ``Reverse``
are CTPN's (``neocaffe.layers.ctpn``), the same code.

**WarpCTCLoss**: bottom 0 x (T, N, C) (a 4th axis must be 1) of unnormalised scores; a scalar top. Blank ``b`` =
``ctc_loss_param.blank_index`` where the prototxt sets it, else caffe_ocr's default 0 (the schema's default, -1, is
TextBoxes++'s; warp-ctc needs ``0 <= b < C``). Labels and input lengths by the bottom count:

* 2 bottoms (caffe_ocr's own nets): labels (N, L, ...): row n's L values, truncated to int, the ones equal to
  ``b`` dropped (the fork's padding); every sequence runs T steps;
* 3 bottoms: sequence indicators (T, N), targets (T, N) (ChWick's layout): sequence n runs to the first
  t >= 1 whose indicator rounds to 0 (else T); its targets up to the first negative (else T), each
  ``int(v + 0.5)``, plus 1 where ``b`` = 0; an empty target needs ``S_n <= 1`` and then runs 0 steps;
  ``L_n <= S_n``;
* 4 bottoms: input lengths (N), label lengths (N), labels (L, N) read at ``(t, n)``, truncated to int.

warp-ctc: ``y = softmax(x[t, n])`` over C for t < S_n; log-space alpha/beta over ``l' = (b, l_1, b, ..., l_L,
b)`` with repeats always merged (a skip over a blank only between different labels); cost ``-log p_n``; a
sequence with ``L_n + repeats_n > S_n`` (no path) costs 0 and has no diff. Loss: the sum of the finite costs
divided by their count (a zero-cost sequence counts; none finite: 0/0, NaN as the fork). Diff of x at
(t, n), t < S_n: ``y - sum_{u: l'_u = c} exp(alpha[u, t] + beta[u, t] - log p_n)`` (the gradient of the *summed*
cost, N times the mean loss's for N finite costs), 0 elsewhere. The fork writes it into the bottom's diff during
Forward and its Backward does nothing, so the loss weight and the 1/num never reach it: here the diff a net passes
(the loss weight) is divided back out (``g / loss_weight``; g when ``loss_weight: 0``), so a net gets the fork's
diff at any loss weight and a gradient check of one sequence sees the true gradient. No diff to the other
bottoms (the fork CHECKs ``propagate_down`` false there).

**CTCGreedyDecoder**, caffe_ocr's form (its ``ctc_decoder_layer.cpp`` replaces ChWick's LayerSetUp/Forward by an
``#else`` branch): 1 bottom x (T, N, C) -> sequences (N, T, 1, 1) (each step's first largest class, unless the
blank or, with ``ctc_merge_repeated``, the previous step's class; then -1), over all T steps; 2 bottoms x and
labels (N, L, ...) -> one top (1, 2, 1, 1): ``[1 - mean_n ed_n / max(|target_n|, |out_n|), lines right / N]``
(targets: row n's values up to the first negative, ``int(0.5 + v)``, the blank dropped; a pair of empty sequences
adds 0 to both sums). Blank: ``blank_index`` where set, else caffe_ocr's 0; < 0: C - 1. The 2-bottom form shares
bottom and top counts with TextBoxes++'s (x, indicators -> sequences): a net takes caffe_ocr's where it sets
``lineage: "caffe_ocr"`` or has a ``WarpCTCLoss`` or ``DenseBlock`` layer (``neocaffe.layers.lineage``); the
1-bottom form is caffe_ocr's only. Everything else is TextBoxes++'s layer (``neocaffe.layers.ctc_decoder``).

Deviations: the fork computes warp-ctc in the data type (float log-space sums), here double; where the fork leaves a
stale diff (sequences without a path, steps past ``S_n``) it is 0 here; an input length of 0 with an empty label
(3 bottoms) costs 0 here, where warp-ctc reads an unwritten workspace; labels outside [0, C), input lengths
outside [0, T] and label blobs too small for their reads are errors (the fork reads out of bounds).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape, legacy_shape
from neocaffe.layers.ctc import _alpha_beta, _fork_diff, _round, _Targets, first_row, read_lengths
from neocaffe.layers.ctc_decoder import CTCGreedyDecoder as _TextBoxesDecoder
from neocaffe.layers.ctc_decoder import edit_distance
from neocaffe.layers.lineage import net_lineage
from neocaffe.layers.registry import register_layer

_CPU = torch.device("cpu")


def _caffe_ocr_blank(param, classes: int) -> int:
    """``blank_index`` where the prototxt sets it, else caffe_ocr's default 0 (the schema's -1 is TextBoxes++')."""
    return int(param.blank_index) if param.HasField("blank_index") else 0


class _WarpCTCFn(torch.autograd.Function):
    """Loss as the fork's Forward; backward the fork's diff (summed cost's gradient) times ``g / loss_weight``."""

    @staticmethod
    def forward(ctx, x: Tensor, tg: _Targets, blank: int, cost_zero: Tensor, weight: float):  # type: ignore[override]
        ctx.weight, ctx.x_shape = weight, x.shape
        n_seq = x.shape[1]
        ctx.empty = tg.t_max == 0
        if ctx.empty:
            log_p = torch.full((n_seq,), float("-inf"), dtype=torch.float64, device=x.device)
        else:
            y, alpha, beta, log_p = _alpha_beta(x, tg, blank, 0, True, 0)
            ctx.save_for_backward(y, alpha, beta, log_p, tg.lp, tg.u_len, tg.t_len)
        cost = torch.where(tg.t_len > 0, -log_p, torch.zeros_like(log_p))
        cost = torch.where(cost_zero.to(x.device), torch.zeros_like(cost), cost)
        finite = cost < float("inf")
        loss = torch.where(finite, cost, torch.zeros_like(cost)).sum() / finite.sum()
        return loss.to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        if ctx.empty:
            return torch.zeros(ctx.x_shape, dtype=g.dtype, device=g.device), None, None, None, None
        y, alpha, beta, log_p, lp, u_len, t_len = ctx.saved_tensors
        diff = _fork_diff(y, alpha, beta, log_p, lp, u_len, t_len, 0, ctx.x_shape)
        scale = g / ctx.weight if ctx.weight != 0 else g
        return diff * scale, None, None, None, None


@register_layer("WarpCTCLoss")
class WarpCTCLoss(Layer):
    """caffe_ocr's warp-ctc loss: x (T, N, C) with labels (N, L), or ChWick's 3 or warp-ctc's 4 bottoms."""

    is_loss = True
    min_bottoms = 2
    max_bottoms = 4
    exact_tops = 1
    auto_top_blobs = True

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom == 0

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.classes = legacy_shape(bottom_shapes[0], self)[2]
        self.blank = _caffe_ocr_blank(self.param.ctc_loss_param, self.classes)
        weights = list(self.param.loss_weight)
        self.weight = float(weights[0]) if weights else 1.0
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        t_steps, n_seq, classes, w = legacy_shape(bottom_shapes[0], self, "bottom 0")
        if w != 1:
            raise self.error(f"bottom 0 must be (T, N, C) (a 4th axis of 1); received {tuple(bottom_shapes[0])}")
        if classes != self.classes:
            raise self.error(f"the class count C is fixed at setup ({self.classes}); received {tuple(bottom_shapes[0])}")
        if not 0 <= self.blank < classes:
            raise self.error(f"ctc_loss_param.blank_index {self.blank} is not a class of {classes} (warp-ctc needs "
                             "0 <= blank < C)")
        shapes = [legacy_shape(s, self, f"bottom {i}") for i, s in enumerate(bottom_shapes)]
        n_b = len(bottom_shapes)
        if n_b == 2 and shapes[1][0] != n_seq:
            raise self.error(f"the labels must be (N, L) with N = {n_seq}; received {tuple(bottom_shapes[1])}")
        if n_b == 3:
            for i in (1, 2):
                if shapes[i][0] != t_steps or shapes[i][1] != n_seq:
                    raise self.error(f"bottom {i} must be (T, N) = ({t_steps}, {n_seq}); received "
                                     f"{tuple(bottom_shapes[i])}")
        if n_b == 4:
            for i in (1, 2):
                if int(np.prod(bottom_shapes[i])) != n_seq:
                    raise self.error(f"bottom {i} must hold N = {n_seq} lengths; received {tuple(bottom_shapes[i])}")
            if shapes[3][1] != n_seq:
                raise self.error(f"the labels must be (L, N) with N = {n_seq}; received {tuple(bottom_shapes[3])}")
        return [()]

    # -- labels and lengths on the host, as the fork's Forward reads them ---------------------------------------
    def _read(self, bottoms: tuple[Tensor, ...], t_steps: int, n_seq: int) -> tuple[list[list[int]], list[int]]:
        host = [b.detach().to("cpu", torch.float64) for b in bottoms]
        if len(host) == 2:
            lab = host[1].reshape(n_seq, -1)
            labels = [[int(v) for v in row.tolist() if int(v) != self.blank] for row in lab]
            return labels, [t_steps] * n_seq
        if len(host) == 3:   # ChWick's indicators and -1-terminated targets (neocaffe.layers.ctc.read_lengths)
            tv, seq, lab_n = read_lengths(self, bottoms[1], bottoms[2], t_steps, n_seq)
            il = _round(tv) + (1 if self.blank == 0 else 0)
            lab_len = lab_n.tolist()
            return [il[:lab_len[n], n].tolist() for n in range(n_seq)], seq.tolist()
        seq_len = [int(v) for v in host[1].reshape(-1).tolist()]
        lab_len = [int(v) for v in host[2].reshape(-1).tolist()]
        lab_num, lab_ch = legacy_shape(tuple(bottoms[3].shape), self)[:2]
        flat = host[3].reshape(lab_num, lab_ch, -1)[:, :, 0]
        for n in range(n_seq):
            if not 0 <= seq_len[n] <= t_steps or not 0 <= lab_len[n] <= lab_num:
                raise self.error(f"sequence {n}: input length {seq_len[n]} must lie in [0, {t_steps}] and label length "
                                 f"{lab_len[n]} in [0, {lab_num}]")
        return [[int(v) for v in flat[:lab_len[n], n].tolist()] for n in range(n_seq)], seq_len

    def _targets(self, labels: list[list[int]], seq_len: list[int], dev: torch.device) -> tuple[_Targets, Tensor]:
        n_seq = len(labels)
        for n, lab in enumerate(labels):
            bad = [v for v in lab if not 0 <= v < self.classes]
            if bad:
                raise self.error(f"sequence {n} has the label {bad[0]} outside [0, {self.classes}) (warp-ctc reads out "
                                 "of bounds)")
        repeats = [sum(1 for a, b in zip(lab, lab[1:]) if a == b) for lab in labels]
        no_path = [len(lab) + r > s for lab, r, s in zip(labels, repeats, seq_len)]
        active = [s > 0 and not bad for s, bad in zip(seq_len, no_path)]
        n_u = 2 * max((len(lab) for lab in labels), default=0) + 1
        lp = torch.full((n_seq, n_u), self.blank, dtype=torch.int64, device=_CPU)
        for n, lab in enumerate(labels):
            if lab:
                lp[n, 1:2 * len(lab):2] = torch.tensor(lab, dtype=torch.int64, device=_CPU)
        u_len = torch.tensor([2 * len(lab) + 1 if a else 1 for lab, a in zip(labels, active)], dtype=torch.int64,
                             device=_CPU)
        t_len = torch.tensor([s if a else 0 for s, a in zip(seq_len, active)], dtype=torch.int64, device=_CPU)
        cost_zero = torch.tensor([not a for a in active], dtype=torch.bool, device=_CPU)
        t_max = int(t_len.max()) if n_seq else 0
        return _Targets(lp.to(dev), u_len.to(dev), t_len.to(dev), t_max), cost_zero

    def forward(self, x: Tensor, *rest: Tensor) -> Tensor:  # type: ignore[override]
        self.reshape([tuple(b.shape) for b in (x, *rest)])
        t_steps, n_seq = x.shape[0], x.shape[1]
        labels, seq_len = self._read((x, *rest), t_steps, n_seq)
        tg, cost_zero = self._targets(labels, seq_len, x.device)
        return _WarpCTCFn.apply(x, tg, self.blank, cost_zero, self.weight)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(159)
        base = 'name: "ctc" type: "WarpCTCLoss" bottom: "x" bottom: "label" top: "loss"'
        return [  # one sequence per example: the fork's diff is then the loss's gradient
            Example(base, [r.standard_normal((6, 1, 5)), np.array([[1.0, 3, 3, 0, 0]])]),
            Example(base + ' ctc_loss_param { blank_index: 4 }', [r.standard_normal((5, 1, 5, 1)),
                                                                  np.array([[2.0, 0, 4, 4]])]),
        ]


@register_layer("CTCGreedyDecoder")
class CTCGreedyDecoder(_TextBoxesDecoder):
    """Best-path decoding: TextBoxes++'s (x, indicators, [targets]) or caffe_ocr's (x [, labels (N, L)])."""

    min_bottoms = 1
    takes_net = True  # the 2-bottom form is told by the net's lineage

    def _is_caffe_ocr(self, n_bottoms: int) -> bool:
        if n_bottoms == 1:
            return True
        return n_bottoms == 2 and net_lineage(self.net_so_far) == "caffe_ocr"

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.ocr = self._is_caffe_ocr(len(bottom_shapes))
        if not self.ocr:
            super().setup(bottom_shapes)
            return
        if len(self.param.top) != 1:
            raise self.error(f"caffe_ocr's CTCGreedyDecoder takes 1 top (sequences with 1 bottom, the accuracy with "
                             f"2); received {len(self.param.top)}")
        if len(bottom_shapes[0]) < 3:
            raise self.error(f"bottom 0 must be (T, N, C, ...); received {tuple(bottom_shapes[0])}")
        p = self.param.ctc_decoder_param
        self.merge = bool(p.ctc_merge_repeated)
        blank = _caffe_ocr_blank(p, int(bottom_shapes[0][2]))
        self.blank = blank if blank >= 0 else int(bottom_shapes[0][2]) - 1
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        if not self.ocr:
            return super().reshape(bottom_shapes)
        x = tuple(bottom_shapes[0])
        if len(x) < 3:
            raise self.error(f"bottom 0 must be (T, N, C, ...); received {x}")
        if len(bottom_shapes) == 1:
            return [(x[1], x[0], 1, 1)]
        if legacy_shape(bottom_shapes[1], self, "bottom 1")[0] != x[1]:
            raise self.error(f"the labels must be (N, L) with N = {x[1]}; received {tuple(bottom_shapes[1])}")
        return [(1, 2, 1, 1)]

    def forward(self, x: Tensor, *rest: Tensor):  # type: ignore[override]
        if not self.ocr:
            return super().forward(x, *rest)
        shapes = self.reshape([tuple(b.shape) for b in (x, *rest)])
        t_steps, n_seq = x.shape[0], x.shape[1]
        dev = x.device
        probs = x.detach().reshape(t_steps, n_seq, -1)[:, :, :x.shape[2]]
        best = probs.argmax(-1) if probs.shape[-1] else torch.zeros((t_steps, n_seq), dtype=torch.int64, device=dev)
        prev = torch.cat([torch.full_like(best[:1], -1), best[:-1]], 0)
        emit = (best != self.blank) & ~((best == prev) & self.merge)
        pos = torch.where(emit, torch.cumsum(emit.to(torch.int64), 0) - 1, t_steps)
        seq = torch.full((n_seq, t_steps + 1), -1, dtype=torch.int64, device=dev)
        seq = seq.scatter_(1, pos.t(), torch.where(emit, best, -1).t())[:, :t_steps]
        if not rest:
            return seq.to(x.dtype).reshape(shapes[0])
        lab = rest[0].detach().to(torch.float64)
        lab = lab.reshape(lab.shape[0], lab.shape[1] if lab.dim() > 1 else 1, -1)[:, :, 0]  # offset(n, t)
        n_lab = lab.shape[1]
        cols = torch.arange(n_lab, device=dev)[None, :]
        within = cols < first_row((lab < 0).t(), n_lab)[:, None]
        tl = torch.trunc(0.5 + lab).to(torch.int64)
        keep = within & (tl != self.blank)
        t_len = keep.sum(1)
        tpos = torch.where(keep, torch.cumsum(keep.to(torch.int64), 1) - 1, n_lab)
        tgt = torch.full((n_seq, n_lab + 1), -1, dtype=torch.int64, device=dev)
        tgt = tgt.scatter_(1, tpos, torch.where(keep, tl, -1))[:, :n_lab]
        o_len = emit.sum(0)
        dist = edit_distance(tgt, t_len, seq, o_len)
        longest = torch.maximum(t_len, o_len)
        counted = longest > 0
        rate = torch.where(counted, dist.to(torch.float64) / longest.clamp(min=1), 0.0)
        right = (counted & (dist == 0)).sum()
        acc_edit = 1 - rate.sum() / n_seq
        acc_line = right.to(torch.float64) / n_seq
        return torch.stack([acc_edit, acc_line]).to(x.dtype).reshape(1, 2, 1, 1)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(158)
        base = 'name: "dec" type: "CTCGreedyDecoder" bottom: "x" '
        return _TextBoxesDecoder.examples() + [
            Example(base + 'top: "seq"', [r.standard_normal((5, 2, 4))], grad_bottoms=(), grad_params=False),
            Example(base + 'top: "seq" ctc_decoder_param { blank_index: -1 ctc_merge_repeated: false }',
                    [r.standard_normal((5, 2, 4))], grad_bottoms=(), grad_params=False),
        ]  # the 2-bottom accuracy form needs the net's lineage: tests/layers/test_caffe_ocr.py builds it in nets


__all__ = ["CTCGreedyDecoder", "WarpCTCLoss"]
