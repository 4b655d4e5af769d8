"""Caffe's DataTransformer (``transform_param``): crop, mirror, subtract mean, scale; BGR, C x H x W.

Split in two so the heavy part can run on the GPU after the uint8 batch crosses to the device:

* host (worker processes): ``DataTransformer.crop_batch`` draws each item's crop offset and mirror
  flag and cuts the uint8 crops (random crop in TRAIN, centre crop ``(H - crop) // 2`` in TEST;
  ``mirror`` flips at random in either phase, as in Caffe);
* device: ``transform_batch`` turns the uint8 crops into float32 ``(pixel - mean) * scale`` with the
  mean cropped at each item's offset, then mirrors, as Caffe's ``Transform(const Datum&)`` does.

Caffe's ``Transform(const cv::Mat&)`` (ImageData, encoded datums) reads the mean at the *mirrored*
position (it indexes the mean with the output column); ``mirrored_mean=True`` reproduces that. The two
agree whenever nothing is mirrored or no mean file is used. Arithmetic is float32 ``(x - m) * s`` as in
Caffe, so results match it exactly. Random draws come from a NumPy generator the caller seeds (from
``neocaffe.rng``); Caffe's own boost streams cannot be reproduced, seeded runs repeat within neocaffe.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from neocaffe.data.datum import DatumError

__all__ = ["DataTransformer", "HostBatch", "transform_batch", "load_mean_file"]

TRAIN = 0


def load_mean_file(path: str) -> np.ndarray:
    """The mean of a ``.binaryproto`` (compute_image_mean's BlobProto) as float32 C x H x W."""
    from neocaffe.io.binaryproto import read_blobproto

    blob = read_blobproto(path)
    arr = np.asarray(blob.data, np.float32)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise DatumError(f"{path}: mean file holds a blob of shape {tuple(blob.data.shape)}; expected 1 x C x H x W")
    return np.ascontiguousarray(arr)


@dataclass
class HostBatch:
    """Crops cut on the host: ``data`` (N, C, h, w) uint8 (float32 for float datums), each item's
    ``offsets`` (h_off, w_off) in its source image and ``mirror`` flag, the ``labels``, and whether the
    mean is read at mirrored positions (Caffe's cv::Mat path)."""

    data: np.ndarray
    offsets: np.ndarray
    mirror: np.ndarray
    labels: np.ndarray
    mirrored_mean: bool = False


def transform_batch(
    x: Tensor,
    offsets: Tensor | None = None,
    mirror: Tensor | None = None,
    *,
    scale: float = 1.0,
    mean: Tensor | None = None,
    mean_values: Tensor | None = None,
    mirrored_mean: bool = False,
) -> Tensor:
    """float32 ``(x - mean) * scale``, mirrored where ``mirror`` says, for a batch of crops.

    ``x``: (N, C, h, w) uint8 or float crops; ``offsets``: (N, 2) where each crop starts in the image
    the ``mean`` (C, H, W) covers; ``mean_values``: (C,) per-channel means (instead of ``mean``).
    Runs wherever ``x`` lives (CPU or CUDA).
    """
    y = x.to(torch.float32)
    n, c, h, w = y.shape
    flip = None
    if mirror is not None:
        flip = mirror.to(device=y.device, dtype=torch.bool).view(n, 1, 1, 1)
        if not bool(flip.any()):
            flip = None
    if mirrored_mean and flip is not None:
        y = torch.where(flip, y.flip(-1), y)
    if mean is not None:
        mean = mean.to(device=y.device, dtype=torch.float32)
        if offsets is None:
            offsets = torch.zeros(n, 2, dtype=torch.long)
        offs = offsets.to(device=y.device, dtype=torch.long)
        first = offs[:1]
        if bool((offs == first).all()):
            h0, w0 = (int(v) for v in first[0].tolist()) if n else (0, 0)
            m = mean[:, h0 : h0 + h, w0 : w0 + w].unsqueeze(0)
        else:
            rows = offs[:, 0:1] + torch.arange(h, device=y.device)  # (N, h)
            cols = offs[:, 1:2] + torch.arange(w, device=y.device)  # (N, w)
            m = mean[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)  # (N, C, h, w)
        y = y - m
    elif mean_values is not None:
        y = y - mean_values.to(device=y.device, dtype=torch.float32).view(1, c, 1, 1)
    if scale != 1.0:
        y = y * torch.tensor(scale, dtype=torch.float32, device=y.device)
    if flip is not None and not mirrored_mean:
        y = torch.where(flip, y.flip(-1), y)
    return y.contiguous()


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
        self.mean_values = np.asarray(list(param.mean_value), np.float32) if len(param.mean_value) else None

    @property
    def needs_rand(self) -> bool:
        return self.mirror or (self.phase == TRAIN and self.crop_size > 0)

    def output_shape(self, c: int, h: int, w: int, what: str = "image") -> tuple[int, int, int]:
        """Shape of one transformed item from a C x H x W source; checks crop, mean and mean_value."""
        crop = self.crop_size
        if crop and (h < crop or w < crop):
            raise DatumError(f"{what}: crop_size {crop} is larger than the image ({c}x{h}x{w}); {self.where}")
        if self.mean is not None and tuple(self.mean.shape) != (c, h, w):
            ms = "x".join(str(d) for d in self.mean.shape)
            raise DatumError(
                f"{what}: mean_file '{self.mean_file}' is {ms} but the image is {c}x{h}x{w}; {self.where}"
            )
        if self.mean_values is not None and len(self.mean_values) not in (1, c):
            raise DatumError(
                f"{what}: specify either 1 mean_value or as many as channels ({c}); "
                f"received {len(self.mean_values)}; {self.where}"
            )
        return (c, crop, crop) if crop else (c, h, w)

    def draw(self, n: int, h: int, w: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """Crop offsets (n, 2) and mirror flags (n,) for ``n`` items of size ``h`` x ``w``."""
        crop = self.crop_size
        if self.needs_rand and rng is None:
            raise ValueError("a random generator is needed for mirror / TRAIN random crops")
        mirror = rng.integers(0, 2, n).astype(bool) if self.mirror else np.zeros(n, bool)  # type: ignore[union-attr]
        offsets = np.zeros((n, 2), np.int64)
        if crop:
            if self.phase == TRAIN:
                offsets[:, 0] = rng.integers(0, h - crop + 1, n)  # type: ignore[union-attr]
                offsets[:, 1] = rng.integers(0, w - crop + 1, n)  # type: ignore[union-attr]
            else:
                offsets[:, 0] = (h - crop) // 2
                offsets[:, 1] = (w - crop) // 2
        return offsets, mirror

    def crop_batch(
        self,
        arrays: Sequence[np.ndarray],
        labels: Sequence[float],
        rng: np.random.Generator | None,
        names: Sequence[str] | None = None,
        mirrored_mean: bool = False,
    ) -> HostBatch:
        """Cut every item's crop into one (N, C, h, w) array. All items must share the first one's
        shape (Caffe shapes each batch from its first datum); ``names`` label items in errors."""
        n = len(arrays)
        if n == 0:
            raise ValueError("crop_batch needs at least one item")
        c, h, w = arrays[0].shape
        what0 = names[0] if names else "item 0"
        oc, oh, ow = self.output_shape(c, h, w, what0)
        for i, a in enumerate(arrays[1:], 1):
            if a.shape != (c, h, w):
                what = names[i] if names else f"item {i}"
                raise DatumError(
                    f"{what}: image is {'x'.join(map(str, a.shape))} but the batch's first item ({what0}) is "
                    f"{c}x{h}x{w}; every item of a batch must have the same size (resize them, or use crop_size)"
                )
        offsets, mirror = self.draw(n, h, w, rng)
        dtype = np.uint8 if all(a.dtype == np.uint8 for a in arrays) else np.float32
        out = np.empty((n, oc, oh, ow), dtype)
        for i, a in enumerate(arrays):
            h0, w0 = offsets[i]
            out[i] = a[:, h0 : h0 + oh, w0 : w0 + ow]
        return HostBatch(out, offsets, mirror, np.asarray(labels, np.float32), mirrored_mean)

    def mean_tensor(self) -> Tensor | None:
        return torch.from_numpy(self.mean) if self.mean is not None else None

    def mean_values_tensor(self, channels: int) -> Tensor | None:
        if self.mean_values is None:
            return None
        mv = self.mean_values if len(self.mean_values) == channels else np.repeat(self.mean_values, channels)
        return torch.from_numpy(np.ascontiguousarray(mv, np.float32))

    def apply(self, batch: HostBatch | dict, device: torch.device | str | None = None,
              mean: Tensor | None = None, mean_values: Tensor | None = None) -> Tensor:
        """The float32 batch from host crops, computed on ``device`` (the crops are moved there first).
        ``mean``/``mean_values`` may be given already on the device (layer buffers)."""
        get = batch.get if isinstance(batch, dict) else lambda k: getattr(batch, k)
        data, offsets, mirror = get("data"), get("offsets"), get("mirror")
        x = torch.as_tensor(data)
        if device is not None and x.device != torch.device(device):
            x = x.to(device, non_blocking=True)
        c = x.shape[1]
        if mean is None and self.mean is not None:
            mean = self.mean_tensor()
        if mean_values is None and self.mean is None:
            mean_values = self.mean_values_tensor(c)
        return transform_batch(
            x, torch.as_tensor(offsets), torch.as_tensor(mirror), scale=self.scale,
            mean=mean if self.mean is not None else None,
            mean_values=mean_values if self.mean is None else None,
            mirrored_mean=bool(get("mirrored_mean")),
        )

    def transform(self, arrays: Sequence[np.ndarray], rng: np.random.Generator | None = None,
                  mirrored_mean: bool = False, device: torch.device | str | None = None) -> Tensor:
        """Crop + transform a list of C x H x W arrays in one go (tests, MemoryData-style use)."""
        hb = self.crop_batch(arrays, [0.0] * len(arrays), rng, mirrored_mean=mirrored_mean)
        return self.apply(hb, device)
