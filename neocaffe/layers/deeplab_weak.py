"""DeepLab's weak-supervision layers (image-level labels, EM-Adapt): ``UniqueLabel``, ``BiasChannel``,
``AdaptiveBiasChannel``.

Lineage and source files: hszhao/PSPNet @ 798bdc9 (DeepLab v2's caffe), ``src/caffe/layers/unique_label_layer.cpp``,
``bias_channel_layer.cpp`` and ``adaptive_bias_channel_layer.cpp``. A weakly supervised DeepLab net turns
its label image (or image-level labels) into a label list with UniqueLabel, biases the scores of the
classes present (BiasChannel: fixed biases; AdaptiveBiasChannel: biases that make each present class
cover a set portion of the image), and trains on the arg max of the result as a pixel target.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe import rng
from neocaffe.layers.base import Example, Layer, Shape, legacy_shape
from neocaffe.layers.registry import register_layer

_IMAGE, _PIXEL = 1, 2  # BiasChannelParameter.LabelType


class _PassGradient(torch.autograd.Function):
    """Forward: ``value`` (computed from ``x`` without a graph); backward: the top's gradient to ``x``
    unchanged (BiasChannel's backward copies the diff)."""

    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor) -> Tensor:  # type: ignore[override]
        return value

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


def _labels(layer: Layer, values: Tensor, channels: int, ignore: set[int]) -> list[int]:
    """The listed labels (``static_cast<int>``) that are not ignored; one outside 0..channels-1 is an
    error, as the fork's LOG(FATAL)."""
    out = []
    for v in values.tolist():
        label = int(v)
        if label in ignore:
            continue
        if not 0 <= label < channels:
            raise layer.error(f"unexpected label {label}; expected 0..{channels - 1} or an ignored label "
                              f"{sorted(ignore)}")
        out.append(label)
    return out


@register_layer("UniqueLabel")
class UniqueLabelLayer(Layer):
    """``unique_label_param`` ``max_labels`` (required, more than the forced labels), ``ignore_label``
    (repeated), ``force_label`` (repeated, always listed). Bottom: a label image (N, 1, H, W). Top
    (N, max_labels, 1, 1): each image's distinct label values not ignored, with the forced ones, in
    ascending order, then -1s. More distinct values than ``max_labels`` is an error (the fork's CHECK).
    No gradient."""

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.unique_label_param
        self.max_labels = int(p.max_labels)
        self.ignore = [float(np.float32(v)) for v in p.ignore_label]
        self.force = sorted({float(np.float32(v)) for v in p.force_label})
        if self.max_labels <= len(self.force):
            raise self.error(f"unique_label_param.max_labels ({self.max_labels}) must exceed the number of "
                             f"force_label values ({len(self.force)}): one more label than the forced ones must fit")

    def allow_force_backward(self, bottom: int) -> bool:
        return False  # the fork: "Cannot propagate down to label input"

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        n, c, _, _ = legacy_shape(bottom_shapes[0], self, "bottom 0")
        if c != 1:
            raise self.error(f"the label image must have one channel; received shape {tuple(bottom_shapes[0])}")
        return [(n, self.max_labels, 1, 1)]

    def forward(self, label: Tensor) -> Tensor:  # type: ignore[override]
        n = label.shape[0]
        top = torch.full((n, self.max_labels, 1, 1), -1.0, dtype=label.dtype, device=label.device)
        flat = label.detach().reshape(n, -1)
        for i in range(n):
            vals = torch.unique(flat[i])
            if self.ignore:
                vals = vals[~torch.isin(vals, torch.tensor(self.ignore, dtype=vals.dtype, device=vals.device))]
            if self.force:
                vals = torch.unique(torch.cat([vals, torch.tensor(self.force, dtype=vals.dtype, device=vals.device)]))
            if vals.numel() > self.max_labels:
                raise self.error(f"image {i} has {vals.numel()} distinct labels {vals.tolist()}; max_labels is "
                                 f"{self.max_labels} (increase it)")
            top[i, : vals.numel(), 0, 0] = vals
        return top

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        r = np.random.default_rng(20)
        lab = r.integers(0, 4, (2, 1, 3, 4)).astype(float)
        lab[0, 0, 0, 0] = 255
        return [Example('name: "u" type: "UniqueLabel" bottom: "l" top: "u" unique_label_param { max_labels: 6 '
                        "ignore_label: 255 force_label: 0 }", [lab], grad_bottoms=())]


@register_layer("BiasChannel")
class BiasChannelLayer(Layer):
    """``bias_channel_param`` ``bg_bias`` (default 1), ``fg_bias`` (default 2), both >= 0,
    ``ignore_label`` (repeated; -1 always ignored), ``label_type`` (IMAGE: bottom 1 is a label list
    (N, L, 1, 1) and each listed class's whole score plane gets ``bg_bias`` for class 0 or ``fg_bias``
    otherwise, once per listing; PIXEL: bottom 1 is (N, 1, H, W) and each pixel's class gets
    ``fg_bias``, and with a background (``background_label`` or ``bg_bias`` set) the background class
    gets ``bg_bias`` at every pixel not ignored, ``fg_bias`` not added when the pixel is background).
    The scores' gradient passes through unchanged; labels get none."""

    exact_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.bias_channel_param
        self.bg, self.fg = float(np.float32(p.bg_bias)), float(np.float32(p.fg_bias))
        if self.bg < 0 or self.fg < 0:
            raise self.error(f"bias_channel_param bg_bias and fg_bias must be >= 0; received {self.bg}, {self.fg}")
        self.ignore = {-1, *(int(v) for v in p.ignore_label)}
        self.label_type = int(p.label_type)
        self.background = int(p.background_label) if p.HasField("background_label") or p.HasField("bg_bias") else None

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom == 0

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        n, c, h, w = legacy_shape(bottom_shapes[0], self, "bottom 0")
        ln, lc, lh, lw = legacy_shape(bottom_shapes[1], self, "bottom 1")
        want = (n, lc, 1, 1) if self.label_type == _IMAGE else (n, 1, h, w)
        if (ln, lc, lh, lw) != want or lc < 1:
            kind = "a label list (N, L, 1, 1)" if self.label_type == _IMAGE else "a label image (N, 1, H, W)"
            raise self.error(f"label_type {'IMAGE' if self.label_type == _IMAGE else 'PIXEL'}: bottom 1 must be {kind} "
                             f"for scores {tuple(bottom_shapes[0])}; received {tuple(bottom_shapes[1])}")
        return [tuple(bottom_shapes[0])]

    def _biased(self, x: Tensor, label: Tensor) -> Tensor:
        """The biased scores (no graph): each addition in the fork's order, so a class listed twice
        rounds as the fork's two additions do."""
        n, c = x.shape[0], x.shape[1]
        y = x.clone()
        if self.label_type == _IMAGE:
            for i in range(n):
                for lab in _labels(self, label[i].reshape(-1), c, self.ignore):
                    y[i, lab] += self.bg if lab == 0 else self.fg
            return y
        lab = label.reshape(n, -1).trunc().to(torch.int64)
        keep = ~torch.isin(lab, torch.tensor(sorted(self.ignore), device=lab.device))
        bad = keep & ((lab < 0) | (lab >= c))
        if bool(bad.any()):
            _labels(self, lab[bad][:1], c, self.ignore)  # raises, naming the label
        flat = y.reshape(n, c, -1)
        if self.background is not None:
            if not 0 <= self.background < c:
                raise self.error(f"background_label {self.background} is not a class of the {c} score channels")
            flat[:, self.background] += keep.to(x.dtype) * self.bg
            keep = keep & (lab != self.background)
        fg = torch.zeros_like(flat).scatter_(1, lab.clamp(0, c - 1).unsqueeze(1), keep.to(x.dtype).unsqueeze(1))
        return (flat + fg * self.fg).reshape(x.shape)

    def forward(self, x: Tensor, label: Tensor) -> Tensor:  # type: ignore[override]
        return _PassGradient.apply(x, self._biased(x.detach(), label.detach()))

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        r = np.random.default_rng(21)
        pix = r.integers(0, 3, (2, 1, 3, 3)).astype(float)
        pix[0, 0, 0, :2] = -1
        return [
            Example('name: "b" type: "BiasChannel" bottom: "x" bottom: "l" top: "y"',
                    [r.standard_normal((2, 3, 2, 2)), np.array([[0, 2, -1], [1, -1, -1]], float).reshape(2, 3, 1, 1)]),
            Example('name: "b" type: "BiasChannel" bottom: "x" bottom: "l" top: "y" bias_channel_param { '
                    "label_type: PIXEL bg_bias: 0.5 fg_bias: 3 }", [r.standard_normal((2, 3, 3, 3)), pix]),
        ]


@register_layer("AdaptiveBiasChannel")
class AdaptiveBiasChannelLayer(Layer):
    """EM-Adapt: ``adaptive_bias_channel_param`` ``num_iter`` (> 0), ``bg_portion``/``fg_portion`` (in
    [0, 1]), ``suppress_others``, ``margin_others`` (>= 0). Bottom 1 lists each image's labels (N, L, 1, 1),
    -1 for none. Per image with labels: with ``suppress_others`` the scores of absent classes are clipped
    to the minimum over present classes minus the margin; then ``num_iter`` times, over the present
    labels in a random order (background, when present, always first), each class's plane is raised by
    the ``int(portion * H * W)``-th smallest gap between the running pointwise maximum and its own score,
    so it wins that portion of the pixels; finally every score shifts so the mean pointwise maximum is
    what it was. The order comes from ``neocaffe.rng`` (the fork's ``std::random_shuffle``). A portion of
    1 takes the largest gap (the fork reads one past its buffer). No gradient: the fork's backward is
    empty, its top is a target."""

    exact_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.adaptive_bias_channel_param
        self.num_iter, self.suppress, self.margin = int(p.num_iter), bool(p.suppress_others), float(p.margin_others)
        self.bg_portion, self.fg_portion = float(np.float32(p.bg_portion)), float(np.float32(p.fg_portion))
        if self.num_iter <= 0:
            raise self.error(f"adaptive_bias_channel_param.num_iter must be positive; received {self.num_iter}")
        if self.margin < 0:
            raise self.error(f"adaptive_bias_channel_param.margin_others must be >= 0; received {self.margin}")
        for name, v in (("bg_portion", self.bg_portion), ("fg_portion", self.fg_portion)):
            if not 0 <= v <= 1:
                raise self.error(f"adaptive_bias_channel_param.{name} must be in [0, 1]; received {v}")

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        n = legacy_shape(bottom_shapes[0], self, "bottom 0")[0]
        ln, lc, lh, lw = legacy_shape(bottom_shapes[1], self, "bottom 1")
        if (ln, lh, lw) != (n, 1, 1) or lc < 1:
            raise self.error(f"bottom 1 must be a label list (N, L, 1, 1) for scores {tuple(bottom_shapes[0])}; "
                             f"received {tuple(bottom_shapes[1])}")
        return [tuple(bottom_shapes[0])]

    def _adapt(self, s: Tensor, labels: list[int], g: np.random.Generator) -> Tensor:
        """One image's scores (C, H*W) biased for its present ``labels``."""
        labels = sorted(labels)
        m = s.shape[1]
        present = torch.zeros(s.shape[0], dtype=torch.bool, device=s.device)
        present[labels] = True
        if self.suppress:
            low = s[present].min(0).values
            s = torch.where(~present[:, None] & (s > low), low - np.float32(self.margin), s)
        top = s[labels].max(0).values
        mean0 = top.double().mean()
        bg = int(labels[0] == 0)
        for _ in range(self.num_iter):
            labels[bg:] = [labels[bg + int(j)] for j in g.permutation(len(labels) - bg)]
            for lab in labels:
                nth = min(int(np.float32(self.bg_portion if lab == 0 else self.fg_portion) * np.float32(m)), m - 1)
                gap = torch.kthvalue(top - s[lab], nth + 1).values  # the fork's nth_element
                s[lab] += gap
                top = torch.maximum(top, s[lab])
        return s + (mean0 - top.double().mean()).to(s.dtype)

    def forward(self, x: Tensor, label: Tensor) -> Tensor:  # type: ignore[override]
        x = x.detach()
        n, c = x.shape[0], x.shape[1]
        out = x.clone().reshape(n, c, -1)
        g = rng.numpy_rng()
        for i in range(n):
            labels = _labels(self, label[i].reshape(-1), c, {-1})
            if labels:
                out[i] = self._adapt(out[i], labels, g)
        return out.reshape(x.shape)

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        r = np.random.default_rng(22)
        return [Example('name: "a" type: "AdaptiveBiasChannel" bottom: "x" bottom: "l" top: "y" '
                        "adaptive_bias_channel_param { num_iter: 2 bg_portion: 0.3 fg_portion: 0.2 }",
                        [r.standard_normal((2, 4, 3, 3)), np.array([[0, 2, 3], [-1, -1, -1]], float).reshape(2, 3, 1, 1)],
                        grad_bottoms=())]
