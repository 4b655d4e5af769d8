"""SSD's pixel stage of ``transform_param`` for the data layers that read pixels: ``resize_param`` then
``noise_param`` (weiliu89/caffe ``ssd``: ``DataTransformer::Transform(const cv::Mat&)`` runs ``ApplyResize``
then ``ApplyNoise`` before the crop; ``InferBlobShape`` sizes the top by ``InferNewSize``). The fork's
Data layer goes that way for encoded Datums (raw Datums keep their pixels), and ImageData for every image
(after its own ``new_height``/``new_width``); AnnotatedData and VideoData have it in their own transform.

``convert_to_lab`` leaves float Lab pixels that the fork reads back as bytes; only AnnotatedData and
VideoData reproduce that (:func:`neocaffe.data.noise.as_fork_reads` on their crop), so here it is an error.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from neocaffe.data.annotated_batches import new_size, resize
from neocaffe.data.datum import DatumError, chw_to_hwc, hwc_to_chw
from neocaffe.data.noise import apply_noise

__all__ = ["PixelStage"]


class PixelStage:
    """``resize_param`` (one, as SSD's optional field) and ``noise_param`` of one ``transform_param``."""

    def __init__(self, param: Any, where: str) -> None:
        if len(param.resize_param) > 1:
            raise DatumError(f"{where}: {len(param.resize_param)} resize_param; expected at most one (SSD's field)")
        self.rp = param.resize_param[0] if len(param.resize_param) else None
        if self.rp is not None and (self.rp.height <= 0 or self.rp.width <= 0):
            raise DatumError(f"{where}: resize_param needs a positive height and width; received "
                             f"{self.rp.height} x {self.rp.width}")
        self.noise = param.noise_param if param.HasField("noise_param") else None
        # what a call without a generator draws from: only the choice among one interpolation (needs_rand False)
        self._fixed = np.random.default_rng(0)
        if self.noise is not None and self.noise.convert_to_lab:
            raise DatumError(f"{where}: noise_param.convert_to_lab is reproduced by AnnotatedData and VideoData "
                             "only (the fork reads the float Lab pixels back as bytes)")

    @classmethod
    def from_param(cls, param: Any, where: str) -> "PixelStage | None":
        """The stage, or None when ``param`` has neither field."""
        if not len(param.resize_param) and not param.HasField("noise_param"):
            return None
        return cls(param, where)

    @property
    def needs_rand(self) -> bool:
        """Whether it draws: an interpolation among several, salt-and-pepper positions."""
        return (self.rp is not None and len(self.rp.interp_mode) > 1) or bool(self.noise and self.noise.saltpepper)

    def shape(self, c: int, h: int, w: int) -> tuple[int, int, int]:
        """The C x H x W of a C x H x W image after the stage (InferNewSize)."""
        if self.rp is None:
            return c, h, w
        nw, nh = new_size(self.rp, w, h)
        return c, nh, nw

    def __call__(self, chw: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """A C x H x W uint8 image after ``resize_param`` and ``noise_param``."""
        img = chw_to_hwc(chw)
        rng = rng if rng is not None else self._fixed
        if self.rp is not None:
            img = resize(img, self.rp, rng)
        if self.noise is not None:
            img = apply_noise(img, self.noise, rng)
        return hwc_to_chw(img)
