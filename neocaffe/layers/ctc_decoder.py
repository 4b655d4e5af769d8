"""TextBoxes++'s CTC decoder (its CRNN recogniser's): ``CTCGreedyDecoder``, registered by :mod:`neocaffe.layers.ocr`,
whose subclass adds caffe_ocr's forms. The loss is in :mod:`neocaffe.layers.ctc`.

Lineage: MhLiao/TextBoxes_plusplus @ 39d4898de1504c53a2ed3d67966a57b3595836d0 (textboxes in proto/NUMBERING.md),
``src/caffe/layers/ctc_decoder_layer.cpp``, ``include/caffe/layers/ctc_decoder_layer.hpp`` (ChWick et al.'s CTC for
Caffe; CPU only, no ``.cu``), tests ``src/caffe/test/test_ctc_decoder_layer.cpp``; ``ctc_decoder_param``
(``CTCDecoderParameter``).

**CTCGreedyDecoder** (``blank_index``, ``ctc_merge_repeated``): bottoms x (T, N, C, ...), indicators,
optionally targets; tops the sequences (N, T, 1, 1) (classes, then -1), with 2 bottoms optionally the scores
(N, 1, 1, 1), with 3 the accuracy (1, 1, 1, 1), optionally after the scores (sequences, [scores], accuracy).
Sequence n runs from t = 0 until t + 1 = T or the indicator at t + 1 is exactly 0; each step emits its first
largest class unless it is the blank or (merge) the previous step's class; score ``sum -max``. Accuracy ``1 -
mean_n ed_n / max(|target_n|, |out_n|)`` (Levenshtein; two empty sequences add 0; targets ``int(0.5 + v)``
up to the first negative). No diff.

Deviations: indicator or target blobs too small for the decoder's ``data_at(t, n)`` are an error (the fork reads out
of bounds).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape, legacy_shape
from neocaffe.layers.ctc import first_row


class CTCGreedyDecoder(Layer):
    """Best-path decoding: bottoms x (T, N, C), indicators, [targets]; tops sequences, [scores], [accuracy].
    (Registered by ``neocaffe.layers.ocr``, whose subclass adds caffe_ocr's forms.)"""

    min_bottoms = 2
    max_bottoms = 3
    min_tops = 1
    max_tops = 3
    allow_in_place = False

    def allow_force_backward(self, bottom: int) -> bool:
        return False  # the fork's Backward is NOT_IMPLEMENTED

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.ctc_decoder_param
        n_b, n_t = len(bottom_shapes), len(self.param.top)
        if n_b == 2 and n_t == 3:
            raise self.error("with 2 bottoms it takes 1 or 2 tops (sequences, scores); received 3")
        self.score_top = 1 if n_t == 3 or (n_b == 2 and n_t == 2) else None
        self.accuracy_top = n_t - 1 if n_b == 3 and n_t >= 2 else None
        self.merge = bool(p.ctc_merge_repeated)
        if len(bottom_shapes[0]) < 3:
            raise self.error(f"bottom 0 must be (T, N, C, ...); received {tuple(bottom_shapes[0])}")
        self.blank = int(p.blank_index) if p.blank_index >= 0 else int(bottom_shapes[0][2]) - 1  # at first Reshape
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = tuple(bottom_shapes[0])
        if len(x) < 3:
            raise self.error(f"bottom 0 must be (T, N, C, ...); received {x}")
        t_steps, n_seq = x[0], x[1]
        for i in range(1, len(bottom_shapes)):
            num, ch, h, w = legacy_shape(bottom_shapes[i], self, f"bottom {i}")
            if t_steps > 1 and ((t_steps - 1) * ch + n_seq - 1) * h * w >= num * ch * h * w:
                raise self.error(f"bottom {i} {tuple(bottom_shapes[i])} is too small for its (t, n) reads with "
                                 f"T = {t_steps}, N = {n_seq} (the fork reads out of bounds)")
        shapes: list[Shape] = [(n_seq, t_steps, 1, 1)]
        if self.score_top is not None:
            shapes.append((n_seq, 1, 1, 1))
        if self.accuracy_top is not None:
            shapes.append((1, 1, 1, 1))
        return shapes

    @staticmethod
    def _at(blob: Tensor, t_steps: int, n_seq: int) -> Tensor:
        """``data_at(t, n, 0, 0)`` for t < T, n < N as (T, N)."""
        _, ch, h, w = (tuple(blob.shape) + (1, 1, 1, 1))[:4]  # legacy shape (reshape refused > 4 axes)
        idx = ((torch.arange(t_steps, device=blob.device)[:, None] * ch
                + torch.arange(n_seq, device=blob.device)[None, :]) * h * w)
        return blob.detach().reshape(-1)[idx.reshape(-1)].reshape(t_steps, n_seq)

    def forward(self, x: Tensor, ind: Tensor, *target: Tensor):  # type: ignore[override]
        shapes = self.reshape([tuple(b.shape) for b in (x, ind, *target)])
        t_steps, n_seq = x.shape[0], x.shape[1]
        dev = x.device
        probs = x.detach().reshape(t_steps, n_seq, -1)[:, :, :x.shape[2]]
        best = probs.argmax(-1) if probs.shape[-1] else torch.zeros((t_steps, n_seq), dtype=torch.int64, device=dev)
        top = probs.gather(-1, best[..., None])[..., 0]
        rows = torch.arange(t_steps, device=dev)[:, None]
        stops = (self._at(ind, t_steps, n_seq) == 0) & (rows >= 1)
        length = first_row(stops, t_steps)
        run = rows < length[None, :]
        prev = torch.cat([torch.full_like(best[:1], -1), best[:-1]], 0)
        emit = run & (best != self.blank) & ~((best == prev) & self.merge)
        pos = torch.where(emit, torch.cumsum(emit.to(torch.int64), 0) - 1, t_steps)  # column T: a dump
        seq = torch.full((n_seq, t_steps + 1), -1, dtype=torch.int64, device=dev)
        seq = seq.scatter_(1, pos.t(), torch.where(emit, best, -1).t())[:, :t_steps]
        tops = [seq.to(x.dtype).reshape(shapes[0])]
        if self.score_top is not None:
            score = torch.where(run, -top, torch.zeros_like(top)).sum(0)
            tops.append(score.reshape(n_seq, 1, 1, 1))
        if self.accuracy_top is not None:
            tv = self._at(target[0], t_steps, n_seq).to(torch.float64)
            t_len = first_row(tv < 0, t_steps)
            tl = torch.trunc(0.5 + tv).to(torch.int64).t()
            o_len = emit.sum(0)
            dist = edit_distance(tl, t_len, seq, o_len)
            longest = torch.maximum(t_len, o_len)
            rate = torch.where(longest > 0, dist.to(torch.float64) / longest.clamp(min=1), 0.0)
            acc = 1 - rate.sum() / n_seq if n_seq else torch.ones((), dtype=torch.float64, device=dev)
            tops.append(acc.to(x.dtype).reshape(1, 1, 1, 1))
        return tops[0] if len(tops) == 1 else tuple(tops)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(149)
        ind = np.array([[0.0, 0], [1, 1], [1, 1], [1, 0], [0, 0]])
        tgt = np.array([[1.0, 0], [2, -1], [-1, -1], [-1, -1], [-1, -1]])
        base = 'name: "dec" type: "CTCGreedyDecoder" bottom: "x" bottom: "ind" '
        return [
            Example(base + 'top: "seq"', [r.standard_normal((5, 2, 4)), ind], grad_bottoms=(), grad_params=False),
            Example(base + 'top: "seq" top: "score" ctc_decoder_param { blank_index: 0 ctc_merge_repeated: false }',
                    [r.standard_normal((5, 2, 4)), ind], grad_bottoms=(), grad_params=False),
            Example(base + 'bottom: "tgt" top: "seq" top: "score" top: "acc"',
                    [r.standard_normal((5, 2, 4)), ind, tgt], grad_bottoms=(), grad_params=False),
        ]


def edit_distance(s1: Tensor, len1: Tensor, s2: Tensor, len2: Tensor) -> Tensor:
    """Levenshtein distances of (N, T1) ``s1[:len1]`` and (N, T2) ``s2[:len2]``, batched: one DP row per
    step, the insertion chain as ``j + cummin(a_j - j)``."""
    n_seq, t2 = s2.shape
    dev = s2.device
    cols = torch.arange(t2 + 1, device=dev)[None, :]
    row = cols.expand(n_seq, t2 + 1).clone()
    out = row.gather(1, len2[:, None])[:, 0] * (len1 == 0)
    for i in range(1, s1.shape[1] + 1):
        sub = row[:, :-1] + (s1[:, i - 1:i] != s2).to(row.dtype)
        a = torch.cat([torch.full((n_seq, 1), i, dtype=row.dtype, device=dev), torch.minimum(sub, row[:, 1:] + 1)], 1)
        row = cols + torch.cummin(a - cols, 1).values
        out = torch.where(len1 == i, row.gather(1, len2[:, None])[:, 0], out)
    return out
