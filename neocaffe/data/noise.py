"""SSD's ``transform_param.noise_param`` (weiliu89/caffe ``ssd``: ``ApplyNoise``, ``colorReduce`` and
``constantNoise`` of ``src/caffe/util/im_transforms.cpp``; ``DataTransformer::Transform`` calls it after
``resize_param``, before the crop, for every image it transforms from pixels: AnnotatedData, VideoData).

In the fork's order, each when set: ``decolorize`` (BGR -> gray -> BGR), ``gauss_blur`` (7x7, sigma 1.5),
``hist_eq`` (the Y plane of YCrCb equalized; a gray image itself), ``clahe`` (the same with OpenCV's CLAHE,
clip limit 4), ``jpeg`` (> 0: encoded at that quality, truncated to an integer, and decoded as colour),
``erode`` (3x3 ellipse), ``posterize`` (each byte to ``v / 64 * 64 + 32``), ``inverse`` (bitwise not),
``saltpepper`` (``floor(fraction * width * height)`` pixels at uniform random positions set to
``saltpepper_param.value``: one value for every channel or one per channel), ``convert_to_hsv``
(OpenCV's 8-bit HSV), ``convert_to_lab`` (float Lab of the image / 255).

As in the fork, ``noise_param.prob`` is not read: a ``noise_param`` applies to every image. And as in the
fork, a Lab image stays float32 while the transform reads its rows as bytes: each row of the crop gives
its first ``width * channels`` bytes of float data as the pixels (:func:`as_fork_reads`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from neocaffe.data.datum import DatumError


def _y_plane(img: np.ndarray, equalize: Any) -> np.ndarray:
    import cv2

    if img.ndim == 2 or img.shape[2] == 1:
        return equalize(img if img.ndim == 2 else img[:, :, 0]).reshape(img.shape)
    ycrcb = cv2.cvtColor(img, cv2.COLOR_BGR2YCrCb)
    ycrcb[:, :, 0] = equalize(np.ascontiguousarray(ycrcb[:, :, 0]))
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)


def _salt_values(p: Any, channels: int) -> list[int]:
    vals = [int(np.uint8(np.int64(v) & 0xFF)) for v in p.saltpepper_param.value]  # uchar(float)
    if vals and len(vals) not in (1, channels):
        raise DatumError(f"noise_param.saltpepper_param: Specify either 1 value or as many as channels: {channels}; "
                         f"received {len(vals)}")
    return vals * channels if len(vals) == 1 else vals


def apply_noise(img: np.ndarray, p: Any, rng: np.random.Generator) -> np.ndarray:
    """``ApplyNoise(img, noise_param)`` on an 8-bit HxW(xC) image; random positions from ``rng``."""
    import cv2

    out = img
    channels = 1 if img.ndim == 2 else img.shape[2]
    if p.decolorize:
        if channels != 3:
            raise DatumError(f"noise_param.decolorize needs 3-channel (BGR) images; received {channels} channel(s)")
        out = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if p.gauss_blur:
        out = cv2.GaussianBlur(out, (7, 7), 1.5)
    if p.hist_eq:
        out = _y_plane(out, cv2.equalizeHist)
    if p.clahe:
        clahe = cv2.createCLAHE()
        clahe.setClipLimit(4)
        out = _y_plane(out, clahe.apply)
    if p.jpeg > 0:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(p.jpeg)])
        if not ok:
            raise DatumError("noise_param.jpeg: OpenCV could not encode the image as JPEG")
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if p.erode:
        out = cv2.erode(out, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3), (1, 1)))
    if p.posterize:
        out = cv2.LUT(out, (np.arange(256) // 64 * 64 + 32).astype(np.uint8))
    if p.inverse:
        out = cv2.bitwise_not(out)
    channels = 1 if out.ndim == 2 else out.shape[2]
    values = _salt_values(p, channels)
    if p.saltpepper:
        rows, cols = out.shape[:2]
        n = int(np.floor(np.float32(p.saltpepper_param.fraction) * np.float32(cols) * np.float32(rows)))
        if n > 0 and not values:
            raise DatumError("noise_param.saltpepper needs saltpepper_param.value (the fork reads a value it "
                             "was not given)")
        if channels in (1, 3):  # constantNoise draws and sets pixels of 1- and 3-channel images only
            out = out.copy() if out is img else out
            for _ in range(n):
                i, j = int(rng.integers(cols)), int(rng.integers(rows))  # caffe_rng_rand() % cols, then % rows
                out[j, i] = values[0] if channels == 1 else values[:3]
    if p.convert_to_hsv:
        out = cv2.cvtColor(out, cv2.COLOR_BGR2HSV)
    if p.convert_to_lab:
        out = cv2.cvtColor(out.astype(np.float32) * np.float32(1.0 / 255), cv2.COLOR_BGR2Lab)
    return out


def as_fork_reads(crop: np.ndarray) -> np.ndarray:
    """The bytes ``DataTransformer`` reads from a crop of a float32 image (``convert_to_lab``): per row its
    first ``width * channels`` bytes, as uint8 pixels; an 8-bit crop unchanged."""
    if crop.dtype == np.uint8:
        return crop
    h, w = crop.shape[:2]
    c = 1 if crop.ndim == 2 else crop.shape[2]
    rows = np.ascontiguousarray(crop).view(np.uint8).reshape(h, -1)[:, : w * c]
    return rows.reshape((h, w) if crop.ndim == 2 else (h, w, c))
