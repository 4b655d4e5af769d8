"""DeepLab's ``DenseCRF``: mean-field inference of a fully connected CRF over the net's scores.

Lineage and source files: hszhao/PSPNet @ 798bdc9 (DeepLab v1/v2's caffe), ``src/caffe/layers/densecrf_layer.cpp``,
``src/caffe/util/densecrf_pairwise.cpp`` (Potts potentials with per-pixel normalization),
``include/caffe/util/densecrf_util.hpp`` (``fast_exp``) and ``src/caffe/util/permutohedral.cpp`` (the
lattice: ``neocaffe.layers._permutohedral``). Forward only (the fork's backward is empty).

Fields read (``dense_crf_param``): ``max_iter``; ``pos_w`` / ``pos_xy_std`` (Gaussian kernels over x, y;
as many of each), ``bi_w`` / ``bi_xy_std`` / ``bi_rgb_std`` (bilateral kernels over x, y and the three
channels of bottom 2, the transformed image as the data layer gives it); ``output_probability`` (true:
the marginals; false: their log, floored at FLT_MIN). Bottoms: the scores (N, M, H, W) (the unary is
their negative), each image's size (N, 1, 1, 2; ImageSegData's ``data_dim``), and optionally the image
(N, 3, H, W). Inference runs on the first ``h`` x ``w`` pixels (the size, or the blob's when the image
is larger than it); the rest of the top is 0. Mean field starts from the softmax of the scores and
repeats ``max_iter`` times: ``Q = normalize(fast_exp(scores + sum_k w_k * norm_k * filter_k(Q)))``,
with the fork's ``fast_exp`` (a polynomial with range reduction) and float32 arithmetic throughout.

Two deliberate differences, both where the fork is broken: with several images the fork takes every
image's bilateral features from the first image (its pointer is not offset per image); here each image
uses its own. And a size larger than the blob in one dimension only makes the fork read past it; here
each dimension is clipped to the blob.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers._permutohedral import Lattice
from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.registry import register_layer

FLT_MIN = float(np.finfo(np.float32).tiny)


def _above(limit: float) -> float:
    """The smallest float32 greater than ``limit``: float32 ``x > limit`` (compared in double, as the
    fork's ``x > 0.69*2*2*2``) is ``x >= _above(limit)``."""
    f = np.float32(limit)
    return float(f if float(f) > limit else np.nextafter(f, np.float32(np.inf)))


#: fast_exp's range reduction loops as (threshold, factor, squarings per step, steps): for |x| <= 20 the
#: loop dividing by 8 runs at most once, the one by 4 once and the one by 2 twice
_REDUCE = [(_above(0.69 * 8), 0.125, 3, 1), (_above(0.69 * 4), 0.25, 2, 1), (_above(0.69), 0.5, 1, 2)]
_POLY = [0.9999999995, 0.4999999206, 0.1666653019, 0.0416573475, 0.0083013598, 0.0013298820, 0.0001413161]


def fast_exp(x: Tensor) -> Tensor:
    """The fork's scalar ``fast_exp`` (float32): 0 beyond |x| > 20; |x| divided by 8, 4 and 2 while over
    0.69 * 8, 0.69 * 4 and 0.69 (exact: powers of two), a degree-7 polynomial for exp(-|x|), squared
    back once per halving (three per division by 8), inverted for positive x."""
    a = x.abs()
    mult = torch.zeros_like(a)
    for limit, factor, squarings, steps in _REDUCE:
        for _ in range(steps):
            big = (a >= limit).to(a.dtype)
            a = a * (1 - (1 - factor) * big)  # a * factor where big, else a * 1: exact either way
            mult += big * squarings
    p = torch.full_like(a, _POLY[6])
    for c in _POLY[5::-1]:
        p = torch.tensor(c, dtype=torch.float32, device=a.device) - a * p
    y = 1 - a * p
    for k in range(1, int(mult.max()) + 1 if mult.numel() else 1):
        y = torch.where(mult >= k, y * y, y)
    y = torch.where(x < 0, y, 1 / y)
    return torch.where(x.abs() > 20, torch.zeros_like(y), y)


def exp_and_normalize(x: Tensor, scale: float, rows: int = 8192) -> Tensor:
    """Per pixel (rows of ``x``, (N, M)): ``fast_exp(scale * x - max)``, summed over the labels in
    order, divided by that sum. Worked in blocks of ``rows`` pixels, which stay in cache (faster on
    the CPU than whole-image passes)."""
    out = torch.empty_like(x)
    for i in range(0, x.shape[0], rows):
        s = x[i:i + rows] * scale
        v = fast_exp(s - s.max(1, keepdim=True).values)
        total = v[:, 0].clone()
        for j in range(1, v.shape[1]):
            total += v[:, j]
        out[i:i + rows] = v / total[:, None]
    return out


class _Potts:
    """A Potts potential of one kernel: ``w * norm * filter(Q)``, norm the per-pixel normalization."""

    def __init__(self, features: np.ndarray, w: float, device: torch.device) -> None:
        self.lattice = Lattice(features)
        ones = torch.ones((features.shape[0], 1), dtype=torch.float32, device=device)
        self.norm = 1.0 / (self.lattice.filter(ones)[:, 0] + torch.tensor(1e-20, dtype=torch.float32, device=device))
        self.wn = (torch.tensor(w, dtype=torch.float32, device=device) * self.norm)[:, None]

    def add_to(self, out: Tensor, q: Tensor) -> Tensor:
        return out + self.wn * self.lattice.filter(q)


@register_layer("DenseCRF")
class DenseCRFLayer(Layer):
    """See the module docstring."""

    min_bottoms = 2
    max_bottoms = 3
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.dense_crf_param
        self.max_iter, self.output_prob = int(p.max_iter), bool(p.output_probability)
        self.pos = list(zip((float(np.float32(v)) for v in p.pos_w), (float(np.float32(v)) for v in p.pos_xy_std)))
        self.bi = list(zip(*(tuple(float(np.float32(v)) for v in f) for f in (p.bi_w, p.bi_xy_std, p.bi_rgb_std))))
        if len(p.pos_w) != len(p.pos_xy_std):
            raise self.error(f"dense_crf_param: pos_w and pos_xy_std need the same number of values; received "
                             f"{len(p.pos_w)} and {len(p.pos_xy_std)}")
        if not len(p.bi_w) == len(p.bi_xy_std) == len(p.bi_rgb_std):
            raise self.error(f"dense_crf_param: bi_w, bi_xy_std and bi_rgb_std need the same number of values; "
                             f"received {len(p.bi_w)}, {len(p.bi_xy_std)}, {len(p.bi_rgb_std)}")
        self.has_image = len(bottom_shapes) == 3
        if self.has_image and not self.bi:
            raise self.error("an image is given (bottom 2) but no bilateral kernel (bi_w, bi_xy_std, bi_rgb_std)")
        if any(s <= 0 for _, s in self.pos) or any(s <= 0 or r <= 0 for _, s, r in self.bi):
            raise self.error("dense_crf_param standard deviations must be positive; received "
                             f"pos_xy_std {list(p.pos_xy_std)}, bi_xy_std {list(p.bi_xy_std)}, bi_rgb_std {list(p.bi_rgb_std)}")

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = tuple(bottom_shapes[0])
        if len(x) != 4:
            raise self.error(f"bottom 0 (scores) must be N x M x H x W; received {x}")
        dims = tuple(bottom_shapes[1])
        if not dims or dims[0] != x[0] or math.prod(dims[1:]) != 2:
            raise self.error(f"bottom 1 (image sizes) must hold (height, width) per image, e.g. {(x[0], 1, 1, 2)}; "
                             f"received {dims}")
        if self.has_image and tuple(bottom_shapes[2]) != (x[0], 3, x[2], x[3]):
            raise self.error(f"bottom 2 (image) must be {(x[0], 3, x[2], x[3])}, a colour image of the scores' size; "
                             f"received {tuple(bottom_shapes[2])}")
        return [x]

    def _infer(self, scores: Tensor, image: Tensor | None, h: int, w: int) -> Tensor:
        """One image: the marginals (h * w, M) after ``max_iter`` mean-field steps."""
        m, dev = scores.shape[0], scores.device
        unary = -scores[:, :h, :w].reshape(m, -1).t().contiguous().float()
        jj, ii = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        pots = [_Potts(np.stack([ii.ravel() / np.float32(s), jj.ravel() / np.float32(s)], 1), wt, dev)
                for wt, s in self.pos]
        if image is not None:
            im = image[:, :h, :w].reshape(3, -1).t().float().cpu().numpy()
            for wt, s, r in self.bi:
                feats = np.concatenate([ii.reshape(-1, 1) / np.float32(s), jj.reshape(-1, 1) / np.float32(s),
                                        im / np.float32(r)], 1)
                pots.append(_Potts(feats, wt, dev))
        q = exp_and_normalize(unary, -1.0)
        for _ in range(self.max_iter):
            nxt = -unary
            for pot in pots:
                nxt = pot.add_to(nxt, q)
            q = exp_and_normalize(nxt, 1.0)
        return q

    def forward(self, x: Tensor, dims: Tensor, image: Tensor | None = None) -> Tensor:  # type: ignore[override]
        n, m, hh, ww = x.shape
        out = torch.zeros_like(x)
        sizes = dims.detach().reshape(n, 2).to(torch.int64).tolist()
        with torch.no_grad():
            for i, (h, w) in enumerate(sizes):
                h, w = (hh, ww) if (hh <= h and ww <= w) else (min(h, hh), min(w, ww))
                if h <= 0 or w <= 0:
                    continue
                q = self._infer(x[i].detach(), image[i].detach() if image is not None else None, h, w)
                res = q if self.output_prob else torch.log(q.clamp(min=FLT_MIN).double())  # the C library's double log
                out[i, :, :h, :w] = res.t().reshape(m, h, w).to(x.dtype)
        return out

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        r = np.random.default_rng(24)
        return [
            Example('name: "crf" type: "DenseCRF" bottom: "x" bottom: "dim" bottom: "im" top: "y" dense_crf_param { '
                    "max_iter: 3 pos_w: 3 pos_xy_std: 3 bi_w: 5 bi_xy_std: 5 bi_rgb_std: 10 }",
                    [r.standard_normal((2, 3, 5, 6)), np.array([5, 6, 4, 3], float).reshape(2, 1, 1, 2),
                     r.uniform(-100, 100, (2, 3, 5, 6))], grad_bottoms=()),
            Example('name: "crf" type: "DenseCRF" bottom: "x" bottom: "dim" top: "y" dense_crf_param { '
                    "max_iter: 2 pos_w: 2 pos_xy_std: 1 output_probability: false }",
                    [r.standard_normal((1, 2, 4, 4)), np.array([4, 4], float).reshape(1, 1, 1, 2)], grad_bottoms=()),
        ]
