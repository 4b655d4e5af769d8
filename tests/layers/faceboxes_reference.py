"""A loop-by-loop NumPy port of sfzhang15/FaceBoxes' PriorBox (@ b52cc92f9362d3adc08d54666aeb9ebb62fdb7da,
``src/caffe/layers/prior_box_layer.cpp``: ``LayerSetUp``'s ``num_priors_`` and ``Forward_cpu``), for tests.

C++ types are kept: ``float`` values as ``np.float32``, expressions with a ``2.`` literal in double (Python
float), stores to the ``Dtype`` (float) top as ``np.float32``. The fork's ``sqrt`` of a float is taken in
double and rounded to float, as neocaffe's SSD PriorBox does.
"""
from __future__ import annotations

import math

import numpy as np

f32 = np.float32


def aspect_ratios(ars: list[float], flip: bool) -> list[np.float32]:
    """LayerSetUp's aspect_ratios_ (float)."""
    out = [f32(1.0)]
    for a in ars:
        ar = f32(a)
        if not any(abs(float(ar) - float(r)) < 1e-6 for r in out):
            out.append(ar)
            if flip:
                out.append(f32(1.0 / float(ar)))
    return out


def num_priors(min_sizes: list[float], ratios: list[np.float32], max_sizes: list[float]) -> int:
    """LayerSetUp's num_priors_."""
    n = 21 if len(min_sizes) == 3 else len(ratios) * len(min_sizes)
    return n + len(max_sizes)


def forward(layer_h: int, layer_w: int, img_h: int, img_w: int, min_sizes: list[float], max_sizes: list[float],
            ars: list[float], flip: bool, clip: bool, variance: list[float], step_h: float = 0.0,
            step_w: float = 0.0, offset: float = 0.5, img_h_param: int = 0, img_w_param: int = 0
            ) -> tuple[np.ndarray, int]:
    """Forward_cpu's top (1, 2, layer_h*layer_w*num_priors*4) and the number of box values it wrote (the
    fork's ``idx``; the top holds ``dim`` of them); ``img_h``/``img_w``: bottom 1's size."""
    ratios = aspect_ratios(ars, flip)
    n_priors = num_priors(min_sizes, ratios, max_sizes)
    if img_h_param == 0 or img_w_param == 0:
        img_width, img_height = img_w, img_h
    else:
        img_width, img_height = img_w_param, img_h_param
    if step_w == 0 or step_h == 0:
        sw = f32(f32(img_width) / f32(layer_w))
        sh = f32(f32(img_height) / f32(layer_h))
    else:
        sw, sh = f32(step_w), f32(step_h)
    off = f32(offset)
    dim = layer_h * layer_w * n_priors * 4
    top = np.zeros(2 * dim, f32)
    idx = 0

    def put(v: float) -> None:
        nonlocal idx
        top[idx] = f32(v)   # raises IndexError where the fork would write past its blob
        idx += 1

    for h in range(layer_h):
        for w in range(layer_w):
            center_x = f32(f32(f32(w) + off) * sw)
            center_y = f32(f32(f32(h) + off) * sh)
            for s in range(len(min_sizes)):
                min_size_ = int(min_sizes[s])
                if min_size_ == 32:
                    for i in range(-2, 2):
                        for j in range(-2, 2):
                            bw = f32(min_size_)
                            half = float(f32(bw - f32(1))) / 2.0
                            put((float(f32(center_x + f32(j * 8))) - half) / img_width)
                            put((float(f32(center_y + f32(i * 8))) - half) / img_height)
                            put((float(f32(center_x + f32(j * 8))) + half) / img_width)
                            put((float(f32(center_y + f32(i * 8))) + half) / img_height)
                elif min_size_ == 64:
                    for i in range(-1, 1):
                        for j in range(-1, 1):
                            bw = f32(min_size_)
                            half = float(f32(bw - f32(1))) / 2.0
                            put((float(f32(center_x + f32(j * 16))) - half) / img_width)
                            put((float(f32(center_y + f32(i * 16))) - half) / img_height)
                            put((float(f32(center_x + f32(j * 16))) + half) / img_width)
                            put((float(f32(center_y + f32(i * 16))) + half) / img_height)
                else:
                    bw = f32(min_size_)
                    half = float(f32(bw - f32(1))) / 2.0
                    put((float(center_x) - half) / img_width)
                    put((float(center_y) - half) / img_height)
                    put((float(center_x) + half) / img_width)
                    put((float(center_y) + half) / img_height)
                if max_sizes:
                    max_size_ = int(max_sizes[s])
                    bw = bh = f32(math.sqrt(min_size_ * max_size_))
                    put((float(center_x) - float(bw) / 2.0) / img_width)
                    put((float(center_y) - float(bh) / 2.0) / img_height)
                    put((float(center_x) + float(bw) / 2.0) / img_width)
                    put((float(center_y) + float(bh) / 2.0) / img_height)
                for ar in ratios:
                    if abs(float(ar) - 1.0) < 1e-6:
                        continue
                    bw = f32(min_size_ * math.sqrt(float(ar)))
                    bh = f32(min_size_ / math.sqrt(float(ar)))
                    put((float(center_x) - float(bw) / 2.0) / img_width)
                    put((float(center_y) - float(bh) / 2.0) / img_height)
                    put((float(center_x) + float(bw) / 2.0) / img_width)
                    put((float(center_y) + float(bh) / 2.0) / img_height)
    if idx > dim:
        raise IndexError(f"the fork writes {idx} values into a top of {dim}")
    if clip:
        for d in range(dim):
            top[d] = min(max(top[d], f32(0.0)), f32(1.0))
    if len(variance) == 1:
        top[dim:] = f32(variance[0])
    else:
        count = 0
        for _h in range(layer_h):
            for _w in range(layer_w):
                for _i in range(n_priors):
                    for j in range(4):
                        top[dim + count] = f32(variance[j])
                        count += 1
    return top.reshape(1, 2, dim), idx


# -- the fork's data-side changes (src/caffe/util/sampler.cpp, src/caffe/util/bbox_util.cpp) -----------------
def sample_bbox_size(scale: float, img_width: int, img_height: int) -> tuple[np.float32, np.float32]:
    """SampleBBox's (bbox_width, bbox_height) for a drawn ``scale`` (float arithmetic, as the fork)."""
    s = f32(scale)
    if img_width > img_height:
        return f32(f32(s * f32(img_height)) / f32(img_width)), s
    return s, f32(f32(s * f32(img_width)) / f32(img_height))


def meet_emit_center(img_heigh: int, img_width: int, src: list[float], bbox: list[float]) -> bool:
    """MeetEmitConstraint, ``emit_type: CENTER``, for one box (NormalizedBBox fields are float)."""
    xmin, ymin, xmax, ymax = (f32(v) for v in bbox)
    x_center = f32(f32(xmin + xmax) / f32(2))
    y_center = f32(f32(ymin + ymax) / f32(2))
    width = f32(f32(f32(xmax * f32(img_width)) - f32(xmin * f32(img_width))) + f32(1))
    height = f32(f32(f32(ymax * f32(img_heigh)) - f32(ymin * f32(img_heigh))) + f32(1))
    s = [f32(v) for v in src]
    return bool(x_center >= s[0] and x_center <= s[2] and y_center >= s[1] and y_center <= s[3]
                and width > 16 and height > 16)
