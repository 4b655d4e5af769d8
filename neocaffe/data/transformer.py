"""Caffe's DataTransformer (``transform_param``): crop, mirror, subtract mean, scale; BGR, C x H x W.

Split in two so the heavy part can run on the GPU after the uint8 batch crosses to the device:

* host (worker processes): ``DataTransformer.crop_batch`` draws each item's crop offset and mirror
  flag and cuts the uint8 crops (random crop in TRAIN, centre crop ``(H - crop) // 2`` in TEST;
  ``mirror`` flips at random in either phase, as in Caffe);
* device (:mod:`neocaffe.data.batch_transform`; its ``transform_batch``, ``mean_crops`` and ``load_mean_file``
  are re-exported here): ``transform_batch`` turns the uint8 crops into float32 ``(pixel - mean) * scale`` with the
  mean cropped at each item's offset (mirrored with the item: Caffe subtracts the mean at each
  pixel's source position, in its Datum and cv::Mat paths alike); the host already flipped the uint8
  crops, so the device only gathers every item's mean crop in one indexing op and subtracts once.

Under a crop, the items of one batch may differ in size (each cropped from its own, as Caffe's per-item
``Transform``); without one they must match the first. LRCN's ``flow`` (:func:`flow_mirror`) is applied by the
Data layer's batch maker to raw Datums only, as the fork's Datum ``Transform``.

Arithmetic is float32 ``(x - m) * s`` as in Caffe, so results match it exactly. Random draws come from a NumPy generator the caller seeds (from
``neocaffe.rng``); Caffe's own boost streams cannot be reproduced, seeded runs repeat within neocaffe.

NVCaffe's random resize (``img_rand_resize_*``, ``rand_resize_ratio_*``, ``*_stretch_*``, ``allow_upscale``,
``interpolation_algo_*``; :mod:`neocaffe.data.nv_resize`), when on, follows NVCaffe's cv::Mat path
(``DataTransformer::Transform(const cv::Mat&, ...)``): per item the resize, then the crop (random in TRAIN,
centre in TEST) and the mirror, drawn in that order; the mean file is centre-cropped to the crop's size
(not taken at the crop's offset) and the arithmetic is NVCaffe's ``x * scale - mean * scale``.

neocaffe's opt-in colour augmentation (``pca_lighting``, ``*_jitter``; ``neocaffe.data.color``) draws on
the host with the crops and runs on the device before the mean, only when its fields are set.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from neocaffe.data.batch_transform import load_mean_file, mean_crops, transform_batch
from neocaffe.data.pixels import PixelStage
from neocaffe.data.color import ColorAugment
from neocaffe.data.datum import DatumError
from neocaffe.data.nv_resize import NVResize
from neocaffe.data.transfer import to_device

__all__ = ["DataTransformer", "HostBatch", "flow_mirror", "transform_batch", "mean_crops", "load_mean_file"]

TRAIN = 0


@dataclass
class HostBatch:
    """Crops cut on the host: ``data`` (N, C, h, w) uint8 (float32 for float datums) with mirrored
    items already flipped, each item's ``offsets`` (h_off, w_off) in its source image and ``mirror``
    flag, the ``labels``, and ``color``: the colour augmentation's (N, 6) draws (None when off)."""

    data: np.ndarray
    offsets: np.ndarray
    mirror: np.ndarray
    labels: np.ndarray
    color: np.ndarray | None = None


def flow_mirror(out: np.ndarray, items: np.ndarray) -> None:
    """LRCN's ``transform_param.flow`` (LisaAnne/lisa-caffe-public @ 49b8643d, ``src/caffe/data_transformer.cpp``
    ``Transform(const Datum&, Dtype*)``, uint8 and ``float_data`` alike): in each flagged (mirrored) item of
    ``out`` (N, C, h, w), channel 2 (the x flow, when there are 3 or more) becomes ``255 - v`` (uint8, or float32
    for float datums), before the mean and scale, in place."""
    if out.shape[1] < 3:
        return
    for i in np.flatnonzero(items):
        np.subtract(out.dtype.type(255), out[i, 2], out=out[i, 2])


class DataTransformer:
    """``transform_param`` for one layer and phase.

    ``mean_file`` is read at construction (relative to the working directory, as Caffe does);
    ``mean_value`` gives one value or one per channel. ``where`` prefixes error messages.
    """

    def __init__(self, param: Any, phase: int, where: str = "transform_param") -> None:
        self.where = where
        self.phase = int(phase)
        self.scale = float(np.float32(param.scale))
        self.mirror = bool(param.mirror)
        self.crop_size = int(param.crop_size)
        # (height, width) of the crop: crop_size, else SSD's crop_h and crop_w (both, or neither)
        self.crop = (self.crop_size,) * 2 if self.crop_size else (int(param.crop_h), int(param.crop_w))
        if not self.crop_size and (self.crop[0] > 0) != (self.crop[1] > 0):
            raise DatumError(f"{where}: crop_h and crop_w must be set together; received crop_h {self.crop[0]}, "
                             f"crop_w {self.crop[1]}")
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        if self.force_color and self.force_gray:
            raise DatumError(f"{where}: cannot set both force_color and force_gray")
        self.mean: np.ndarray | None = None
        self.mean_file = param.mean_file if param.HasField("mean_file") else ""
        if self.mean_file and len(param.mean_value):
            raise DatumError(f"{where}: cannot specify mean_file and mean_value at the same time")
        if self.mean_file:
            if not os.path.exists(self.mean_file):
                raise DatumError(f"{where}: mean_file '{self.mean_file}' not found (cwd {os.getcwd()})")
            self.mean = load_mean_file(self.mean_file)
        # the mean mirrored left-right, for mirrored items (once, here)
        self._mean_flipped = (torch.from_numpy(np.ascontiguousarray(self.mean[:, :, ::-1]))
                              if self.mean is not None and self.mirror else None)
        self.mean_values = np.asarray(list(param.mean_value), np.float32) if len(param.mean_value) else None
        self.color = ColorAugment.from_param(param, where)  # None unless a colour field is set
        # SSD's resize_param / noise_param, for images the layer reads as pixels (neocaffe.data.pixels)
        self.pixels = PixelStage.from_param(param, where)
        # NVCaffe's random resize / stretch (neocaffe.data.nv_resize), in TRAIN and TEST as NVCaffe's; None: off
        self.nv_resize = NVResize.from_param(param, where)

    @property
    def needs_rand(self) -> bool:
        return (self.mirror or (self.phase == TRAIN and self.crop[0] > 0) or self.color is not None
                or (self.pixels is not None and self.pixels.needs_rand)
                or (self.nv_resize is not None and self.nv_resize.needs_rand))

    def output_shape(self, c: int, h: int, w: int, what: str = "image") -> tuple[int, int, int]:
        """Shape of one transformed item from a C x H x W source; checks crop, mean and mean_value."""
        ch, cw = self.crop
        if self.nv_resize is not None:  # each item's size is known once resized: crop_batch checks it
            return self._nv_output_shape(c, h, w, what)
        if ch and (h < ch or w < cw):
            size = f"crop_size {ch}" if self.crop_size else f"crop {ch}x{cw} (crop_h x crop_w)"
            raise DatumError(f"{what}: {size} is larger than the image ({c}x{h}x{w}); {self.where}")
        if self.mean is not None and tuple(self.mean.shape) != (c, h, w):
            ms = "x".join(str(d) for d in self.mean.shape)
            raise DatumError(
                f"{what}: mean_file '{self.mean_file}' is {ms} but the image is {c}x{h}x{w}; {self.where}"
            )
        self._check_channels(c, what)
        return (c, ch, cw) if ch else (c, h, w)

    def _check_channels(self, c: int, what: str) -> None:
        """``mean_value`` (one, or one per channel) and the colour augmentation fit ``c`` channels."""
        if self.mean_values is not None and len(self.mean_values) not in (1, c):
            raise DatumError(
                f"{what}: specify either 1 mean_value or as many as channels ({c}); "
                f"received {len(self.mean_values)}; {self.where}"
            )
        if self.color is not None:
            self.color.check_channels(c, what)

    def _nv_output_shape(self, c: int, h: int, w: int, what: str) -> tuple[int, int, int]:
        """``output_shape`` under NVCaffe's random resize: the crop's size (else the source's, as NVCaffe
        shapes its top from the unresized datum); the mean file must cover it (it is centre-cropped)."""
        ch, cw = self.crop
        oh, ow = (ch, cw) if ch else (h, w)
        if self.mean is not None and (self.mean.shape[0] != c or (ch and (self.mean.shape[1] < oh
                                                                          or self.mean.shape[2] < ow))):
            ms = "x".join(str(d) for d in self.mean.shape)
            raise DatumError(f"{what}: mean_file '{self.mean_file}' is {ms}; with the random resize NVCaffe "
                             f"centre-crops it to each {c}x{oh}x{ow} item, so it must cover that; {self.where}")
        self._check_channels(c, what)
        return (c, oh, ow)

    def nv_item(self, a: np.ndarray, rng: np.random.Generator | None, what: str,
                draws: Any = None) -> tuple[np.ndarray, tuple[int, int], bool]:
        """One item through NVCaffe's cv::Mat path up to the mean: random resize, crop (random in TRAIN,
        centre in TEST; NVCaffe's ``image_random_crop``/``image_center_crop``), mirror flag; draws in
        NVCaffe's order from ``rng`` (``draws``: fixed resize draws, tests). Returns the (flipped) crop,
        its offset in the resized image and the flag."""
        assert self.nv_resize is not None
        c, h, w = a.shape
        d = self.nv_resize.draw(h, w, rng) if draws is None else draws
        r = self.nv_resize(a, d)
        _, rh, rw = r.shape
        ch, cw = self.crop
        off = (0, 0)
        if ch:
            if rh < ch or rw < cw:
                raise DatumError(f"{what}: resized to {c}x{rh}x{rw} (random resize), smaller than the crop "
                                 f"{ch}x{cw} (allow_upscale is {str(self.nv_resize.allow_upscale).lower()}); "
                                 f"{self.where}")
            if self.phase == TRAIN:
                off = (0 if rh == ch else int(rng.integers(0, rh - ch + 1)),  # type: ignore[union-attr]
                       0 if rw == cw else int(rng.integers(0, rw - cw + 1)))  # type: ignore[union-attr]
            else:
                off = ((rh - ch) // 2, (rw - cw) // 2)
            r = r[:, off[0] : off[0] + ch, off[1] : off[1] + cw]
        flip = bool(self.mirror and rng.integers(0, 2) > 0)  # type: ignore[union-attr]
        return (r[:, :, ::-1] if flip else r), off, flip

    def _nv_crop_batch(self, arrays: Sequence[np.ndarray], labels: Sequence[float], rng: np.random.Generator | None,
                       names: Sequence[str] | None, alloc: Callable[[tuple[int, ...], Any], np.ndarray] | None
                       ) -> HostBatch:
        n = len(arrays)
        c = arrays[0].shape[0]
        what0 = names[0] if names else "item 0"
        self.output_shape(*arrays[0].shape, what0)
        items = [self.nv_item(a, rng, names[i] if names else f"item {i}") for i, a in enumerate(arrays)]
        shape0 = items[0][0].shape
        for i, (r, _, _) in enumerate(items[1:], 1):
            if r.shape != shape0:
                what = names[i] if names else f"item {i}"
                raise DatumError(
                    f"{what}: comes out {'x'.join(map(str, r.shape))} after the random resize but the batch's first "
                    f"item ({what0}) {'x'.join(map(str, shape0))}; set crop_size so every item has one size")
        _, oh, ow = shape0
        if self.mean is not None:  # NVCaffe centre-crops the mean to the item's size
            mh, mw = self.mean.shape[1:]
            if mh < oh or mw < ow or self.mean.shape[0] != c:
                ms = "x".join(str(d) for d in self.mean.shape)
                raise DatumError(f"{what0}: mean_file '{self.mean_file}' is {ms}, smaller than the resized "
                                 f"{c}x{oh}x{ow} items it is centre-cropped to; {self.where}")
            offsets = np.tile(np.asarray([(mh - oh) // 2, (mw - ow) // 2], np.int64), (n, 1))
        else:
            offsets = np.asarray([off for _, off, _ in items], np.int64).reshape(n, 2)
        mirror = np.asarray([f for _, _, f in items], bool)
        color = self.color.draw(n, rng) if self.color is not None else None  # type: ignore[arg-type]
        dtype = np.uint8 if all(a.dtype == np.uint8 for a in arrays) else np.float32
        out = alloc((n, c, oh, ow), dtype) if alloc is not None else np.empty((n, c, oh, ow), dtype)
        for i, (r, _, _) in enumerate(items):
            out[i] = r
        return HostBatch(out, offsets, mirror, np.asarray(labels, np.float32), color)

    def draw(self, n: int, h: int | np.ndarray, w: int | np.ndarray,
             rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """Crop offsets (n, 2) and mirror flags (n,) for ``n`` items of size ``h`` x ``w`` (or (n,) sizes, one
        per item)."""
        ch, cw = self.crop
        if self.needs_rand and rng is None:
            raise ValueError("a random generator is needed for mirror / TRAIN random crops")
        mirror = rng.integers(0, 2, n).astype(bool) if self.mirror else np.zeros(n, bool)  # type: ignore[union-attr]
        offsets = np.zeros((n, 2), np.int64)
        if ch:
            if self.phase == TRAIN:
                offsets[:, 0] = rng.integers(0, h - ch + 1, n)  # type: ignore[union-attr]
                offsets[:, 1] = rng.integers(0, w - cw + 1, n)  # type: ignore[union-attr]
            else:
                offsets[:, 0] = (h - ch) // 2
                offsets[:, 1] = (w - cw) // 2
        return offsets, mirror

    def crop_batch(
        self,
        arrays: Sequence[np.ndarray],
        labels: Sequence[float],
        rng: np.random.Generator | None,
        names: Sequence[str] | None = None,
        alloc: Callable[[tuple[int, ...], Any], np.ndarray] | None = None,
        flow: Sequence[bool] | None = None,
    ) -> HostBatch:
        """Cut every item's crop into one (N, C, h, w) array, mirrored items flipped. Without a crop all
        items must share the first one's shape (Caffe shapes each batch from its first datum); ``names`` label
        items in errors. ``alloc(shape, dtype)``: where to put the crops (a worker's shared buffers).
        ``flow``: per item, whether LRCN's ``transform_param.flow`` applies (its raw-Datum ``Transform``,
        :func:`flow_mirror`); None: for none."""
        n = len(arrays)
        if n == 0:
            raise ValueError("crop_batch needs at least one item")
        if self.nv_resize is not None:
            if self.needs_rand and rng is None:
                raise ValueError("a random generator is needed for the random resize / mirror / TRAIN random crops")
            return self._nv_crop_batch(arrays, labels, rng, names, alloc)
        c, h, w = arrays[0].shape
        what0 = names[0] if names else "item 0"
        oc, oh, ow = self.output_shape(c, h, w, what0)
        sizes = None  # items of other sizes under a crop: each cropped from its own size, as Caffe's Transform
        for i, a in enumerate(arrays[1:], 1):
            if a.shape != (c, h, w):
                what = names[i] if names else f"item {i}"
                if self.crop[0] and a.shape[0] == c:
                    self.output_shape(*a.shape, what)
                    sizes = np.asarray([x.shape[1:] for x in arrays], np.int64)
                    continue
                raise DatumError(
                    f"{what}: image is {'x'.join(map(str, a.shape))} but the batch's first item ({what0}) is "
                    f"{c}x{h}x{w}; every item of a batch must have the same size (resize them, or use crop_size)"
                )
        offsets, mirror = self.draw(n, h, w, rng) if sizes is None else self.draw(n, sizes[:, 0], sizes[:, 1], rng)
        color = self.color.draw(n, rng) if self.color is not None else None  # type: ignore[arg-type]
        dtype = np.uint8 if all(a.dtype == np.uint8 for a in arrays) else np.float32
        shape = (n, oc, oh, ow)
        out = alloc(shape, dtype) if alloc is not None else np.empty(shape, dtype)
        for i, a in enumerate(arrays):
            h0, w0 = offsets[i]
            crop = a[:, h0 : h0 + oh, w0 : w0 + ow]
            out[i] = crop[:, :, ::-1] if mirror[i] else crop
        if flow is not None:
            flow_mirror(out, mirror & np.asarray(flow, bool))
        return HostBatch(out, offsets, mirror, np.asarray(labels, np.float32), color)

    def mean_tensor(self) -> Tensor | None:
        return torch.from_numpy(self.mean) if self.mean is not None else None

    def mean_flipped_tensor(self) -> Tensor | None:
        """The mean mirrored left-right (mirrored items subtract views of it); None without a mean
        file or without ``mirror``."""
        return self._mean_flipped

    def mean_values_tensor(self, channels: int) -> Tensor | None:
        if self.mean_values is None:
            return None
        mv = self.mean_values if len(self.mean_values) == channels else np.repeat(self.mean_values, channels)
        return torch.from_numpy(np.ascontiguousarray(mv, np.float32))

    def apply(self, batch: HostBatch | dict, device: torch.device | str | None = None,
              mean: Tensor | None = None, mean_values: Tensor | None = None,
              mean_flipped: Tensor | None = None, out: Tensor | None = None) -> Tensor:
        """The float32 batch from host crops, computed on ``device`` (the crops are moved there first).
        ``mean``/``mean_values``/``mean_flipped`` may be given already on the device (layer buffers);
        the colour augmentation (when on) applies the batch's ``color`` draws there first."""
        get = batch.get if isinstance(batch, dict) else lambda k: getattr(batch, k)
        data, offsets, mirror = get("data"), get("offsets"), get("mirror")
        x = torch.as_tensor(data)
        if device is not None and x.device != torch.device(device):
            x = to_device(x, device)
        if self.color is not None:
            draws = get("color")
            if draws is None:
                raise ValueError(f"{self.where}: colour augmentation is on but the batch carries no draws "
                                 "(cut it with crop_batch)")
            x = self.color.apply(x, torch.as_tensor(draws))
        c = x.shape[1]
        if mean is None and self.mean is not None:
            mean = self.mean_tensor()
        if mean_flipped is None and self.mean is not None and self.mirror:
            mean_flipped = self.mean_flipped_tensor()
        if mean_values is None and self.mean is None:
            mean_values = self.mean_values_tensor(c)
        return transform_batch(
            x, torch.as_tensor(offsets), torch.as_tensor(mirror), scale=self.scale,
            mean=mean if self.mean is not None else None,
            mean_values=mean_values if self.mean is None else None,
            mean_flipped=mean_flipped, out=out, scale_first=self.nv_resize is not None,
        )

    def transform(self, arrays: Sequence[np.ndarray], rng: np.random.Generator | None = None,
                  device: torch.device | str | None = None) -> Tensor:
        """Crop + transform a list of C x H x W arrays in one go (tests, MemoryData-style use)."""
        hb = self.crop_batch(arrays, [0.0] * len(arrays), rng)
        return self.apply(hb, device)
