"""PSPNet's and DeepLab v2's ``Interp``: bilinear resize with aligned corners.

Lineage and source files: hszhao/PSPNet @ 798bdc90, ``src/caffe/layers/interp_layer.cpp`` and
``src/caffe/util/interp.cpp`` (``caffe_cpu_interp2`` and its adjoint; George Papandreou's code, the
same in DeepLab v2's ``deeplab-public-ver2``).

Fields read (``interp_param``): ``zoom_factor``, ``shrink_factor``, ``height``, ``width``, ``pad_beg``,
``pad_end``. The input is first cropped: ``pad_beg``/``pad_end`` must be <= 0 (the fork's CHECK) and
the effective input is ``H + pad_beg + pad_end`` rows (and columns) starting at row (and column)
``-pad_beg``. The output size, in the fork's order of precedence:

* ``shrink_factor`` only: ``(in - 1) / shrink + 1``;
* ``zoom_factor`` only: ``in + (in - 1) * (zoom - 1)``;
* ``height`` and ``width``: as given (also when both factors are set);
* both factors: shrink first, then zoom.

Each output row ``h2`` reads input row ``h1 = int(r * h2)`` and the next one (none past the last),
with weight ``r * h2 - h1``, where ``r = (in - 1) / (out - 1)`` (0 for a 1-pixel output) and both
``r`` and ``r * h2`` are computed in float32, as in the fork whatever the blob's type. Same sizes:
a copy. Backward: the adjoint (each top diff spread onto its 4 sources with the same weights), which
autograd of the gathers gives.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.registry import register_layer

f32 = np.float32


@functools.lru_cache(maxsize=256)
def interp_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one axis: the first source index ``i0``, the second ``i1`` (``i0 + 1``, or ``i0`` at the
    last pixel) and the float32 weight of the second, per output index (util/interp.cpp)."""
    ratio = f32(size_in - 1) / f32(size_out - 1) if size_out > 1 else f32(0)
    pos = (ratio * np.arange(size_out, dtype=np.float32)).astype(np.float32)
    i0 = pos.astype(np.int64)  # C's float -> int conversion (non-negative: truncation)
    i1 = i0 + (i0 < size_in - 1)
    lam = (pos - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, lam


def caffe_interp2(x: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """Bilinear resize of the last two axes of ``x`` to ``out_hw`` by the fork's formula:
    ``h0 * (w0 * x[a, c] + w1 * x[a, d]) + h1 * (w0 * x[b, c] + w1 * x[b, d])``."""
    hin, win = int(x.shape[-2]), int(x.shape[-1])  # plain ints also under torch.jit.trace
    if (hin, win) == tuple(out_hw):
        return x.clone()
    dev, dt = x.device, x.dtype
    (h_a, h_b, h_l), (w_a, w_b, w_l) = interp_taps(hin, out_hw[0]), interp_taps(win, out_hw[1])
    idx = {k: torch.from_numpy(v).to(dev) for k, v in (("ha", h_a), ("hb", h_b), ("wa", w_a), ("wb", w_b))}
    h1 = torch.from_numpy(h_l).to(device=dev, dtype=dt).unsqueeze(1)   # [Ho, 1]
    w1 = torch.from_numpy(w_l).to(device=dev, dtype=dt)                # [Wo]
    h0, w0 = 1 - h1, 1 - w1                                            # Dtype(1) - lambda, in the blob's type
    top, bot = x.index_select(-2, idx["ha"]), x.index_select(-2, idx["hb"])
    row_top = w0 * top.index_select(-1, idx["wa"]) + w1 * top.index_select(-1, idx["wb"])
    row_bot = w0 * bot.index_select(-1, idx["wa"]) + w1 * bot.index_select(-1, idx["wb"])
    return h0 * row_top + h1 * row_bot


@register_layer("Interp")
class InterpLayer(Layer):
    """Bilinear (align-corners) resize of an N x C x H x W bottom, PSPNet/DeepLab v2 (see the module)."""

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.interp_param
        self.pad_beg, self.pad_end = int(p.pad_beg), int(p.pad_end)
        if self.pad_beg > 0 or self.pad_end > 0:
            raise self.error(f"interp_param.pad_beg/pad_end: only non-positive padding (cropping) is supported; "
                             f"received {self.pad_beg}, {self.pad_end}")
        has = {f: p.HasField(f) for f in ("shrink_factor", "zoom_factor", "height", "width")}
        self.shrink = int(p.shrink_factor) if has["shrink_factor"] else None
        self.zoom = int(p.zoom_factor) if has["zoom_factor"] else None
        self.size = (int(p.height), int(p.width)) if has["height"] and has["width"] else None
        if self.shrink is None and self.zoom is None and self.size is None:
            raise self.error("interp_param needs shrink_factor, zoom_factor, or height and width; received none")
        if self.shrink is not None and self.shrink < 1:
            raise self.error(f"interp_param.shrink_factor must be positive; received {self.shrink}")
        if self.zoom is not None and self.zoom < 1:
            raise self.error(f"interp_param.zoom_factor must be positive; received {self.zoom}")
        self.reshape(bottom_shapes)

    def _sizes(self, shape: Shape) -> tuple[tuple[int, int], tuple[int, int]]:
        """(effective input H, W), (output H, W)."""
        if len(shape) != 4:
            raise self.error(f"needs an N x C x H x W bottom; received shape {tuple(shape)}")
        eff = (shape[2] + self.pad_beg + self.pad_end, shape[3] + self.pad_beg + self.pad_end)
        if min(eff) <= 0:
            raise self.error(f"bottom {tuple(shape)} cropped by pad_beg {self.pad_beg}, pad_end {self.pad_end} is empty")
        if self.shrink is not None and self.zoom is None:
            out = tuple((e - 1) // self.shrink + 1 for e in eff)
        elif self.zoom is not None and self.shrink is None:
            out = tuple(e + (e - 1) * (self.zoom - 1) for e in eff)
        elif self.size is not None:
            out = self.size
        else:  # both factors: shrink, then zoom
            shrunk = tuple((e - 1) // self.shrink + 1 for e in eff)  # type: ignore[operator]
            out = tuple(s + (s - 1) * (self.zoom - 1) for s in shrunk)  # type: ignore[operator]
        if min(out) <= 0:
            raise self.error(f"output size {out} must be positive (interp_param.height/width)")
        return (int(eff[0]), int(eff[1])), (int(out[0]), int(out[1]))

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        _, out = self._sizes(s)
        return [(s[0], s[1]) + out]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        eff, out = self._sizes(tuple(int(d) for d in x.shape))
        b = -self.pad_beg
        if eff != tuple(x.shape[2:]):
            x = x[:, :, b:b + eff[0], b:b + eff[1]]
        return caffe_interp2(x, out)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(14)
        x = r.standard_normal((2, 3, 5, 4))
        L = 'name: "i" type: "Interp" bottom: "x" top: "y" interp_param '
        return [Example(L + '{ zoom_factor: 3 }', [x]),
                Example(L + '{ height: 7 width: 3 }', [x]),
                Example(L + '{ shrink_factor: 2 pad_beg: -1 pad_end: 0 }', [x]),
                Example(L + '{ shrink_factor: 2 zoom_factor: 3 pad_end: -1 }', [x]),
                Example(L + '{ height: 1 width: 6 }', [x])]
