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

import functools
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers._permutohedral import Lattice
from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.registry import register_layer

F32 = np.float32
FLT_MIN = float(np.finfo(F32).tiny)


def _above(limit: float) -> float:
    """The smallest float32 greater than ``limit``: float32 ``x > limit`` (compared in double, as the
    fork's ``x > 0.69*2*2*2``) is ``x >= _above(limit)``."""
    f = np.float32(limit)
    return float(f if float(f) > limit else np.nextafter(f, np.float32(np.inf)))


_POLY = [float(F32(c)) for c in (0.9999999995, 0.4999999206, 0.1666653019, 0.0416573475, 0.0083013598,
                                  0.0013298820, 0.0001413161)]
#: fast_exp halves |x| while over 0.69, 0.69 * 2, ..., 0.69 * 16 (its loops dividing by 8, 4 and 2 run at
#: most 1, 1 and 2 times for |x| <= 20; compared in double, so ``>`` is ``>=`` the next float32): the
#: halvings of a float32 ``a`` are the count of those thresholds it reaches, which adding ``_CARRY`` to
#: its bits carries into the exponent field: ``m = clip(((bits(a) + _CARRY) >> 23) - 126, 0, 5)``
_CARRY = (1 << 23) - (int(F32(_above(0.69)).view(np.int32)) & 0x7FFFFF)


@functools.lru_cache(maxsize=None)
def _constants(device: str) -> dict[str, Any]:
    """``_exp_neg``'s constants as 0-d tensors on ``device`` (cheaper operands than Python numbers)."""
    f = {"poly": [*_POLY, 1.0], "level": [float(126 + k) for k in range(1, 6)]}
    out: dict[str, Any] = {k: [torch.tensor(x, dtype=torch.float32, device=device) for x in v] for k, v in f.items()}
    for k, v in {"one": 1.0, "slope": -2.0 ** 19, "shift": 20.0 * 2 ** 19 + 1}.items():
        out[k] = torch.tensor(v, dtype=torch.float32, device=device)
    for k, v in {"carry": _CARRY, "bias": 126 << 23}.items():
        out[k] = torch.tensor(v, dtype=torch.int32, device=device)
    return out


def _exp_neg(a: Tensor, out: Tensor, work: tuple[Tensor, Tensor, Tensor], big: bool = True) -> Tensor:
    """``fast_exp(-a)`` for ``a >= 0`` (float32), bit for bit, into ``out``; ``a`` and ``work`` (two
    float32 and one int32 tensor of its shape) are overwritten. No branches: ``a`` scaled by ``2^-m``
    through its exponent bits, the polynomial, then ``m`` squarings as ``y *= clamp(k - m, min=y, max=1)``
    for k = 1..5 (1 where m < k, else y), and 0 beyond 20 (``big``: false when no ``a`` is over 20)."""
    keep, halvings, t = work
    c = _constants(str(a.device))
    if big:
        a.clamp_(max=21.0)  # beyond 20 the result is 0 anyway; keeps every intermediate finite
        torch.mul(a, c["slope"], out=keep).add_(c["shift"]).clamp_(0, 1)  # 1 where a <= 20, else 0 (exact)
    bits = a.view(torch.int32)
    torch.add(bits, c["carry"], out=t).bitwise_right_shift_(23).clamp_(126, 131)
    halvings.copy_(t)  # 126 + m
    bits.sub_(t.bitwise_left_shift_(23).sub_(c["bias"]))  # a * 2^-m, exactly
    poly = c["poly"]
    torch.mul(a, poly[6], out=out)
    for coef in poly[5::-1]:
        torch.sub(coef, out, out=out).mul_(a)
    torch.sub(poly[7], out, out=out)
    if big:
        out.mul_(keep)  # and 0 stays 0 through the squarings
    for level in c["level"]:
        torch.sub(level, halvings, out=a)
        out.mul_(torch.clamp(a, min=out, max=c["one"], out=a))
    return out


def _labels_major(dst: Tensor, src: Tensor) -> None:
    """``dst[:] = src.t()`` for ``src`` (B, M) (on the CPU with NumPy, the faster one there)."""
    if dst.device.type == "cpu":
        np.copyto(dst.numpy(), src.numpy().T)
    else:
        dst.copy_(src.t())


def _sum_rows(v: Tensor, out: Tensor) -> Tensor:
    """``out = ((v[0] + v[1]) + v[2]) + ...``, in that order. NumPy reduces a leading axis so when the
    rows have two or more elements (one element: the rows are one contiguous run, summed pairwise)."""
    if v.device.type == "cpu" and v.shape[1] > 1:
        np.add.reduce(v.numpy(), axis=0, out=out.numpy())
    else:
        out.copy_(v[0])
        for row in v[1:]:
            out.add_(row)
    return out


def fast_exp(x: Tensor) -> Tensor:
    """The fork's scalar ``fast_exp`` (float32): 0 beyond |x| > 20; |x| divided by 8, 4 and 2 while over
    0.69 * 8, 0.69 * 4 and 0.69 (exact: powers of two), a degree-7 polynomial for exp(-|x|), squared
    back once per halving (three per division by 8), inverted for x >= 0."""
    x = x.detach().float()
    a = x.abs().contiguous()
    work = (torch.empty_like(a), torch.empty_like(a), torch.empty_like(a, dtype=torch.int32))
    y = _exp_neg(a, torch.empty_like(a), work)
    return torch.where(x >= 0, torch.where(y == 0, y, 1 / y), y)


class _ExpNormalize:
    """``exp_and_normalize`` of blocks of up to ``rows`` pixels, with its buffers (labels-major)."""

    def __init__(self, k: int, rows: int, device: torch.device) -> None:
        self.s = torch.empty((5, k, rows), dtype=torch.float32, device=device)
        self.t = torch.empty((k, rows), dtype=torch.int32, device=device)
        self.rows, self.cpu = rows, device.type == "cpu"

    def __call__(self, x: Tensor, scale: float, out: Tensor) -> None:
        """``out`` (B, M) = the normalized ``fast_exp(scale * x - max)`` of ``x`` (B, M), B <= rows."""
        b = x.shape[0]
        sb, ab, vb, w1, w2 = self.s if b == self.rows else self.s[:, :, :b]
        _labels_major(sb, x)
        if scale != 1.0:
            sb.mul_(scale)
        mx = sb.amax(0, keepdim=True)
        big = not self.cpu or float((mx - sb.amin(0, keepdim=True)).max()) > 20.0  # any a over 20
        _exp_neg(torch.sub(mx, sb, out=ab), vb, (w1, w2, self.t[:, :b]), big)  # a = -(s - max), exactly
        out.copy_(vb.div_(_sum_rows(vb, sb[0])).t())  # back to pixels-major: torch's copy is the faster


def exp_and_normalize(x: Tensor, scale: float, out: Tensor | None = None, rows: int = 4096) -> Tensor:
    """Per pixel (rows of ``x``, (N, M)): ``fast_exp(scale * x - max)``, summed over the labels in
    order, divided by that sum (into ``out`` if given). Worked in blocks of ``rows`` pixels,
    labels-major, in buffers that stay in cache."""
    n, k = x.shape
    out = torch.empty_like(x) if out is None else out
    run = _ExpNormalize(k, min(rows, n), x.device)
    for i in range(0, n, rows):
        run(x[i:i + rows], scale, out[i:i + rows])
    return out


class _Potts:
    """A Potts potential of one kernel: ``w * norm * filter(Q)``, norm the per-pixel normalization."""

    def __init__(self, features: np.ndarray, w: float, device: torch.device) -> None:
        self.lattice = Lattice(features)
        ones = torch.ones((features.shape[0], 1), dtype=torch.float32, device=device)
        self.norm = 1.0 / (self.lattice.filter(ones)[:, 0] + torch.tensor(1e-20, dtype=torch.float32, device=device))
        self.wn = (torch.tensor(w, dtype=torch.float32, device=device) * self.norm)[:, None]


def _mean_field(pots: list[_Potts], scores: Tensor, steps: int, rows: int = 4096) -> Tensor:
    """``Q = exp_and_normalize(-unary + sum_k w_k * norm_k * filter_k(Q), 1)``, ``steps`` times from
    ``exp_and_normalize(unary, -1)``, for ``scores`` (N, M) = -unary (the fork's ``-1 * unary`` and
    ``-unary``, exactly). After each step's splats, the slices, sums and normalization go ``rows``
    pixels at a time, writing Q in place (which keeps them in cache)."""
    n, k = scores.shape
    rows = min(rows, n)
    run = _ExpNormalize(k, rows, scores.device)
    q, neg = exp_and_normalize(scores, 1.0, rows=rows), scores
    nxt = torch.empty((rows, k), dtype=scores.dtype, device=scores.device)
    work = torch.empty((2, rows, k), dtype=scores.dtype, device=scores.device)
    for _ in range(steps):
        lats = [pot.lattice.splat_blur(q) for pot in pots]
        for i in range(0, n, rows):
            e = min(i + rows, n)
            x = nxt[:e - i]
            for p, (pot, lat) in enumerate(zip(pots, lats)):  # next = -unary + w * norm * filter(Q) + ...
                pot.lattice.slice(lat, i, e, x, work, pot.wn[i:e], None if p else neg[i:e])
            if not pots:
                x.copy_(neg[i:e])
            run(x, 1.0, q[i:e])
    return q


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
        pixels = scores[:, :h, :w].reshape(m, -1).t().float().contiguous()  # (h * w, M): -unary
        jj, ii = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        pots = [_Potts(np.stack([ii.ravel() / np.float32(s), jj.ravel() / np.float32(s)], 1), wt, dev)
                for wt, s in self.pos]
        if image is not None:
            im = image[:, :h, :w].reshape(3, -1).t().float().cpu().numpy()
            for wt, s, r in self.bi:
                feats = np.concatenate([ii.reshape(-1, 1) / np.float32(s), jj.reshape(-1, 1) / np.float32(s),
                                        im / np.float32(r)], 1)
                pots.append(_Potts(feats, wt, dev))
        return _mean_field(pots, pixels, self.max_iter)

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
