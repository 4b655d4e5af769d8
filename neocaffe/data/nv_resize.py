"""NVCaffe's random resize of ``transform_param`` (NVIDIA/caffe caffe-0.17 @ 87a25543,
``src/caffe/data_transformer.cpp``: ``image_random_resize``, ``image_random_resize_enabled``, ``Rand``).

Fields: ``img_rand_resize_lower``/``upper`` (the shorter side becomes ``lower + Rand(upper - lower + 1)``
when both are > 0, else stays), ``rand_resize_ratio_lower``/``upper`` (when lower >= 1 and upper > 1: the
longer side becomes ``shorter * Rand(lower, upper)``; a square image picks the side with ``Rand(2)``),
``vertical_stretch_lower``/``upper`` and ``horizontal_stretch_lower``/``upper`` (when both > 0: the height,
the width times ``Rand(lower, upper)``), then ``max(crop_size, lround(.))`` per side, clamped to the source
size unless ``allow_upscale``; ``cv::resize`` with ``interpolation_algo_down`` when neither side grows,
else ``interpolation_algo_up`` (OpenCV's own flag numbers, which cv2 shares). The stage is on when either
``img_rand_resize_*`` is non-zero or any of the six float fields is *present* (its value aside), and runs
in TRAIN and TEST alike (NVCaffe checks no phase here), before the crop, the mirror and the mean.

NVCaffe's arithmetic is reproduced: float32 scale and sides, ``Rand(a, b)`` as ``float(lo + (up - lo) *
r / UINT_MAX)`` in double from a 32-bit ``r`` (``a`` itself, with no draw, when ``a == b``). The draws
(``r``, ``Rand(n)``) come from neocaffe's seeded generator, not boost's mt19937 stream: the distribution
and the arithmetic are NVCaffe's, the values drawn are neocaffe's (``Rand(n)`` is uniform here, mt19937's
``% n`` is within 2**-32 of it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from neocaffe.data.datum import DatumError

__all__ = ["NVResize", "ResizeDraws", "UM", "rand_float"]

UM = float(2**32 - 1)  # NVCaffe's UM: static_cast<double>(UINT_MAX)

_FLOAT_FIELDS = ("rand_resize_ratio_lower", "rand_resize_ratio_upper", "vertical_stretch_lower",
                 "vertical_stretch_upper", "horizontal_stretch_lower", "horizontal_stretch_upper")


def rand_float(a: float, b: float, r: int) -> np.float32:
    """NVCaffe's ``DataTransformer::Rand(float a, float b)`` given its 32-bit draw ``r``."""
    a, b = float(np.float32(a)), float(np.float32(b))
    if a == b:
        return np.float32(a)
    lo, up = min(a, b), max(a, b)
    return np.float32(lo + (up - lo) * float(r) / UM)


def _lround(x: np.float32) -> int:
    """C's ``std::lround`` (half away from zero) of a float."""
    v = float(x)
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


@dataclass
class ResizeDraws:
    """One item's draws: ``new_size`` (the shorter side, None: unchanged), the 32-bit draws behind
    ``Rand(lower, upper)`` of the ratio and the stretches (None: not drawn), ``wide`` (``Rand(2) > 0`` of a
    square image under the ratio: widen rather than heighten)."""

    new_size: int | None = None
    ratio_r: int | None = None
    wide: bool = False
    vertical_r: int | None = None
    horizontal_r: int | None = None


class NVResize:
    """The random resize of one ``transform_param`` (None from :meth:`from_param` when off)."""

    def __init__(self, param: Any, where: str = "transform_param") -> None:
        self.where = where
        self.lower, self.upper = int(param.img_rand_resize_lower), int(param.img_rand_resize_upper)
        if self.lower > 0 and self.upper > 0 and self.upper < self.lower:
            raise DatumError(f"{where}: img_rand_resize_upper ({self.upper}) is less than img_rand_resize_lower "
                             f"({self.lower}); random resize upper bound can't be less than lower (NVCaffe's CHECK)")
        f32 = lambda f: float(np.float32(getattr(param, f)))  # noqa: E731
        self.ratio = (f32("rand_resize_ratio_lower"), f32("rand_resize_ratio_upper"))
        self.vertical = (f32("vertical_stretch_lower"), f32("vertical_stretch_upper"))
        self.horizontal = (f32("horizontal_stretch_lower"), f32("horizontal_stretch_upper"))
        self.crop_size = int(param.crop_size)
        self.allow_upscale = bool(param.allow_upscale)
        self.interp_down, self.interp_up = int(param.interpolation_algo_down), int(param.interpolation_algo_up)

    @staticmethod
    def enabled(param: Any) -> bool:
        """NVCaffe's ``image_random_resize_enabled``."""
        return (param.img_rand_resize_lower != 0 or param.img_rand_resize_upper != 0
                or any(param.HasField(f) for f in _FLOAT_FIELDS))

    @classmethod
    def from_param(cls, param: Any, where: str = "transform_param") -> "NVResize | None":
        return cls(param, where) if cls.enabled(param) else None

    @staticmethod
    def refusal(what: str) -> str:
        """The error of a layer that reads a label beside its image: the resize would miss the ``what``."""
        return ("NVCaffe's random resize/stretch fields (transform_param.img_rand_resize_*, rand_resize_ratio_*, "
                f"*_stretch_*) would resize the image and not its {what}; NVCaffe applies them to Data and ImageData "
                "only")

    @property
    def sizes_on(self) -> bool:
        return self.lower > 0 and self.upper > 0

    @property
    def ratio_on(self) -> bool:
        return self.ratio[0] >= 1.0 and self.ratio[1] > 1.0

    @property
    def vertical_on(self) -> bool:
        return self.vertical[0] > 0.0 and self.vertical[1] > 0.0

    @property
    def horizontal_on(self) -> bool:
        return self.horizontal[0] > 0.0 and self.horizontal[1] > 0.0

    @property
    def needs_rand(self) -> bool:
        return ((self.sizes_on and self.upper > self.lower) or self.ratio_on  # a square image draws its side
                or (self.vertical_on and self.vertical[0] != self.vertical[1])
                or (self.horizontal_on and self.horizontal[0] != self.horizontal[1]))

    def draw(self, h: int, w: int, rng: np.random.Generator | None) -> ResizeDraws:
        """One item's draws for an ``h`` x ``w`` source, in NVCaffe's order (size, ratio, square's side,
        vertical, horizontal); ``Rand(a, a)`` draws nothing, as in NVCaffe."""
        def r32() -> int:
            if rng is None:
                raise ValueError(f"{self.where}: the random resize needs a random generator")
            return int(rng.integers(0, 2**32, dtype=np.uint64))

        d = ResizeDraws()
        if self.sizes_on:
            d.new_size = self.lower + (int(rng.integers(0, self.upper - self.lower + 1))  # type: ignore[union-attr]
                                       if self.upper > self.lower else 0)
        if self.ratio_on:
            d.ratio_r = r32() if self.ratio[0] != self.ratio[1] else 0
            if h == w:  # the scaled sides tie only when the source's do: NVCaffe's Rand(2)
                d.wide = bool(rng.integers(0, 2) > 0)  # type: ignore[union-attr]
        if self.vertical_on:
            d.vertical_r = r32() if self.vertical[0] != self.vertical[1] else 0
        if self.horizontal_on:
            d.horizontal_r = r32() if self.horizontal[0] != self.horizontal[1] else 0
        return d

    def size(self, h: int, w: int, d: ResizeDraws) -> tuple[int, int]:
        """The resized (height, width) of an ``h`` x ``w`` source given the draws (NVCaffe's arithmetic)."""
        f = np.float32
        new_size = d.new_size if (self.sizes_on and d.new_size is not None) else min(h, w)
        scale = f(new_size) / f(h) if w >= h else f(new_size) / f(w)
        fh, fw = f(scale * f(h)), f(scale * f(w))
        if self.ratio_on:
            ratio = rand_float(self.ratio[0], self.ratio[1], d.ratio_r or 0)
            if fw > fh:
                fw = f(fh * ratio)
            elif fw < fh:
                fh = f(fw * ratio)
            elif d.wide:
                fw = f(fh * ratio)
            else:
                fh = f(fw * ratio)
        if self.vertical_on:
            fh = f(fh * rand_float(self.vertical[0], self.vertical[1], d.vertical_r or 0))
        if self.horizontal_on:
            fw = f(fw * rand_float(self.horizontal[0], self.horizontal[1], d.horizontal_r or 0))
        nh, nw = max(self.crop_size, _lround(fh)), max(self.crop_size, _lround(fw))
        if not self.allow_upscale:
            nh, nw = min(nh, h), min(nw, w)
        return nh, nw

    def __call__(self, chw: np.ndarray, d: ResizeDraws) -> np.ndarray:
        """A C x H x W image resized as NVCaffe's ``image_random_resize`` does with draws ``d``."""
        c, h, w = chw.shape
        nh, nw = self.size(h, w, d)
        if (nh, nw) == (h, w):
            return chw
        interp = self.interp_down if nh <= h and nw <= w else self.interp_up
        hwc = np.ascontiguousarray(chw.transpose(1, 2, 0))
        out = cv2.resize(hwc, (nw, nh), interpolation=interp)
        if out.ndim == 2:
            out = out[:, :, None]
        return np.ascontiguousarray(out.transpose(2, 0, 1))
