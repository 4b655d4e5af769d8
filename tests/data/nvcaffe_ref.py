"""A plain NumPy/cv2 port of NVCaffe's cv::Mat transform path (NVIDIA/caffe caffe-0.17 @ 87a25543,
src/caffe/data_transformer.cpp: image_random_resize, image_random_crop / image_center_crop,
apply_mean_scale_mirror), on an H x W x C image as NVCaffe holds it, given every draw explicitly.
Written from the C++ line by line, independently of neocaffe.data.nv_resize."""
from __future__ import annotations

import math

import cv2
import numpy as np

UM = 4294967295.0


def rand_ab(a, b, r):
    a, b = float(np.float32(a)), float(np.float32(b))
    if a == b:
        return np.float32(a)
    lo, up = (a, b) if a < b else (b, a)
    return np.float32(lo + (up - lo) * float(r) / UM)


def lround(x):
    x = float(x)
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def random_resize(src, p, size_k=0, ratio_r=0, wide=False, vert_r=0, horiz_r=0):
    """``image_random_resize``: ``size_k`` is Rand(upper - lower + 1), ``wide`` Rand(2) > 0, the ``*_r`` the raw
    32-bit draws of Rand(a, b). ``p``: dict of the transform_param fields (NVCaffe's defaults filled)."""
    f = np.float32
    img_height, img_width = src.shape[:2]
    new_size = min(img_height, img_width)
    lower_sz, upper_sz = p["img_rand_resize_lower"], p["img_rand_resize_upper"]
    if lower_sz > 0 and upper_sz > 0:
        new_size = lower_sz + size_k
    scale = f(new_size) / f(img_height) if img_width >= img_height else f(new_size) / f(img_width)
    new_fheight = f(scale * f(img_height))
    new_fwidth = f(scale * f(img_width))
    rl, ru = f(p["rand_resize_ratio_lower"]), f(p["rand_resize_ratio_upper"])
    if rl >= f(1) and ru > f(1):
        ratio = rand_ab(rl, ru, ratio_r)
        if new_fwidth > new_fheight:
            new_fwidth = f(new_fheight * ratio)
        elif new_fwidth < new_fheight:
            new_fheight = f(new_fwidth * ratio)
        elif wide:
            new_fwidth = f(new_fheight * ratio)
        else:
            new_fheight = f(new_fwidth * ratio)
    vl, vu = f(p["vertical_stretch_lower"]), f(p["vertical_stretch_upper"])
    if vl > 0 and vu > 0:
        new_fheight = f(new_fheight * rand_ab(vl, vu, vert_r))
    hl, hu = f(p["horizontal_stretch_lower"]), f(p["horizontal_stretch_upper"])
    if hl > 0 and hu > 0:
        new_fwidth = f(new_fwidth * rand_ab(hl, hu, horiz_r))
    new_height = max(p["crop_size"], lround(new_fheight))
    new_width = max(p["crop_size"], lround(new_fwidth))
    if not p["allow_upscale"]:
        new_height = min(new_height, img_height)
        new_width = min(new_width, img_width)
    if new_height == img_height and new_width == img_width:
        return src
    algo = p["interpolation_algo_down"] if new_height <= img_height and new_width <= img_width \
        else p["interpolation_algo_up"]
    dst = cv2.resize(src, (new_width, new_height), fx=0.0, fy=0.0, interpolation=algo)
    return dst.reshape(new_height, new_width, -1)


def transform(src, p, phase, mean=None, mean_values=(), crop_h=0, crop_w=0, mirror_draw=0, **draws):
    """``Transform(const cv::Mat&, ...)``: resize, crop (``crop_h``/``crop_w``: Rand of the offsets in TRAIN),
    mean / scale / mirror; returns C x H x W float32 as FloatCVMatToBuf lays it out. ``mean``: H x W x C float."""
    tmp = random_resize(src, p, **draws)
    cs = p["crop_size"]
    if cs > 0:
        h, w = tmp.shape[:2]
        if phase == 0:
            oh = 0 if h == cs else crop_h
            ow = 0 if w == cs else crop_w
        else:
            oh, ow = (h - cs) // 2, (w - cs) // 2
        tmp = tmp[oh:oh + cs, ow:ow + cs]
    scale = np.float32(p["scale"])
    ch = tmp.shape[2]
    mean_mat = None
    if mean is not None:
        mh, mw = mean.shape[:2]
        mean_mat = mean[(mh - tmp.shape[0]) // 2:(mh - tmp.shape[0]) // 2 + tmp.shape[0],
                        (mw - tmp.shape[1]) // 2:(mw - tmp.shape[1]) // 2 + tmp.shape[1]].astype(np.float32) * scale
    elif len(mean_values):
        mv = [np.float32(mean_values[0] if len(mean_values) == 1 else mean_values[i]) for i in range(ch)]
        mean_mat = np.empty(tmp.shape, np.float32)
        for i in range(ch):
            mean_mat[..., i] = np.float32(scale * mv[i])
    do_mirror = p["mirror"] and mirror_draw > 0
    dst = tmp.astype(np.float32) * scale
    if mean_mat is not None:
        dst = dst - mean_mat
    if do_mirror:
        dst = dst[:, ::-1]
    return np.ascontiguousarray(dst.transpose(2, 0, 1))


DEFAULTS = dict(img_rand_resize_lower=0, img_rand_resize_upper=0, rand_resize_ratio_lower=0.0,
                rand_resize_ratio_upper=0.0, vertical_stretch_lower=1.0, vertical_stretch_upper=1.0,
                horizontal_stretch_lower=1.0, horizontal_stretch_upper=1.0, interpolation_algo_down=0,
                interpolation_algo_up=2, allow_upscale=False, crop_size=0, scale=1.0, mirror=False)
