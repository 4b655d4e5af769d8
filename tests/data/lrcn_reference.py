"""Loop-by-loop NumPy/OpenCV port of LRCN's image reading and DataTransformer, the reference of
tests/data/test_lrcn_flow.py.

LisaAnne/lisa-caffe-public `lstm_video_deploy` @ 49b8643ddef23a4f6120017968de30c45e693f59:
``src/caffe/util/io.cpp`` (``ReadImageToCVMat`` with ``min_height``/``min_width``) and
``src/caffe/data_transformer.cpp`` (``Transform(const Datum&, Dtype*)`` with ``flow``, uint8 and ``float_data``;
``Transform(const cv::Mat&, Blob*)``, which never reads ``flow``). intel/caffe @
44d536385dc41804a673c527b4c2df2675770dff has the same ``ReadImageToCVMat``; its live Datum path is the templated
``Transform<has_uint8, do_mirror, ...>``, which never reads ``flow`` (``intel=True`` below).

The random draws (``do_mirror``, ``h_off``, ``w_off``) are arguments: the forks draw them from Caffe's boost stream.
"""
from __future__ import annotations

import struct

import cv2
import numpy as np


def f32(x: float) -> float:
    """``x`` rounded to IEEE single precision (what a C++ ``float`` holds)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def read_image_to_cvmat(filename: str, height: int, width: int, is_color: bool, min_height: int,
                        min_width: int) -> np.ndarray | None:
    """``ReadImageToCVMat(filename, height, width, is_color, min_height, min_width)``: H x W (x 3) uint8."""
    cv_img_origin = cv2.imread(filename, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if cv_img_origin is None:
        return None
    rows, cols = cv_img_origin.shape[:2]
    if height > 0 and width > 0:
        cv_img = cv2.resize(cv_img_origin, (width, height))
    elif rows < min_height or cols < min_width:
        resize_width = min_width - cols > min_height - rows
        if resize_width:
            # int height_aspect_ratio = float(min_width)*(float(rows)/float(cols)) + 0.5;
            height_aspect_ratio = int(f32(f32(float(min_width)) * f32(f32(float(rows)) / f32(float(cols)))) + 0.5)
            cv_img = cv2.resize(cv_img_origin, (min_width, height_aspect_ratio))
        else:
            width_aspect_ratio = int(f32(f32(float(min_height)) * f32(f32(float(cols)) / f32(float(rows)))) + 0.5)
            cv_img = cv2.resize(cv_img_origin, (width_aspect_ratio, min_height))
    else:
        cv_img = cv_img_origin
    return cv_img


def _mean_at(mean_values: list[float], c: int) -> float:
    return mean_values[0] if len(mean_values) == 1 else mean_values[c]


def transform_datum(data: np.ndarray, crop_size: int, scale: float, train: bool, do_mirror: bool, h_off: int,
                    w_off: int, flow: bool, mean: np.ndarray | None = None, mean_values: list[float] | None = None,
                    intel: bool = False) -> np.ndarray:
    """``Transform(const Datum&, Dtype*)`` for a raw Datum ``data`` (C x H x W, uint8 or float32 for
    ``float_data``); ``h_off``/``w_off`` are used in TRAIN only (TEST: the centre). ``intel``: Intel's live
    overload, without the ``flow`` lines. Returns C x crop x crop (or C x H x W) float32."""
    datum_channels, datum_height, datum_width = data.shape
    flat = data.reshape(-1)
    height, width = datum_height, datum_width
    if crop_size:
        height = width = crop_size
        if not train:
            h_off = (datum_height - crop_size) // 2
            w_off = (datum_width - crop_size) // 2
    else:
        h_off = w_off = 0
    out = np.zeros(datum_channels * height * width, np.float32)
    mflat = mean.reshape(-1) if mean is not None else None
    sc = np.float32(scale)
    for c in range(datum_channels):
        for h in range(height):
            for w in range(width):
                data_index = (c * datum_height + h_off + h) * datum_width + w_off + w
                if do_mirror:
                    top_index = (c * height + h) * width + (width - 1 - w)
                else:
                    top_index = (c * height + h) * width + w
                datum_element = np.float32(flat[data_index])
                if flow and not intel and c == 2 and do_mirror:
                    datum_element = np.float32(255) - datum_element
                if mflat is not None:
                    out[top_index] = (datum_element - np.float32(mflat[data_index])) * sc
                elif mean_values:
                    out[top_index] = (datum_element - np.float32(_mean_at(mean_values, c))) * sc
                else:
                    out[top_index] = datum_element * sc
    return out.reshape(datum_channels, height, width)


def transform_mat(cv_img: np.ndarray, crop_size: int, scale: float, train: bool, do_mirror: bool, h_off: int,
                  w_off: int, mean: np.ndarray | None = None, mean_values: list[float] | None = None) -> np.ndarray:
    """``Transform(const cv::Mat&, Blob*)`` (no ``flow``: neither fork reads it here) for an H x W (x C) uint8
    image; returns C x crop x crop (or C x H x W) float32."""
    img = cv_img if cv_img.ndim == 3 else cv_img[:, :, None]
    img_height, img_width, img_channels = img.shape
    height, width = img_height, img_width
    if crop_size:
        height = width = crop_size
        if not train:
            h_off = (img_height - crop_size) // 2
            w_off = (img_width - crop_size) // 2
    else:
        h_off = w_off = 0
    cropped = img[h_off:h_off + height, w_off:w_off + width]
    out = np.zeros(img_channels * height * width, np.float32)
    mflat = mean.reshape(-1) if mean is not None else None
    sc = np.float32(scale)
    for h in range(height):
        row = cropped[h].reshape(-1)
        img_index = 0
        for w in range(width):
            for c in range(img_channels):
                if do_mirror:
                    top_index = (c * height + h) * width + (width - 1 - w)
                else:
                    top_index = (c * height + h) * width + w
                pixel = np.float32(row[img_index])
                img_index += 1
                if mflat is not None:
                    mean_index = (c * img_height + h_off + h) * img_width + w_off + w
                    out[top_index] = (pixel - np.float32(mflat[mean_index])) * sc
                elif mean_values:
                    out[top_index] = (pixel - np.float32(_mean_at(mean_values, c))) * sc
                else:
                    out[top_index] = pixel * sc
    return out.reshape(img_channels, height, width)
