"""Loop-by-loop NumPy port of TextBoxes v1's PriorBox (MhLiao/TextBoxes @ fd4d7a96dce686938a8485ea5c2e895df592610a,
``src/caffe/layers/prior_box_layer.cpp``: LayerSetUp, Reshape, Forward_cpu; the fork has no .cu for it), Dtype =
float. C++ types kept: ``float`` members and locals (``min_size_``, ``max_size_``, ``aspect_ratios_``,
``step_x``, ``center_x``, ``box_width``) are np.float32; ``w + 0.5``, ``x / 2.`` and the divisions by the int image
sides are double; ``sqrt`` of a float is the global ``::sqrt(double)``. The test reference only."""
from __future__ import annotations

import math

import numpy as np

f32 = np.float32


def _store(x: float) -> np.float32:
    return f32(x)


def forward(layer_height: int, layer_width: int, img_height: int, img_width: int, min_size: float,
            max_size: float | None, ars: list[float], flip: bool, clip: bool, variance: list[float]) -> np.ndarray:
    """The top (1, 2, H*W*num_priors*4) of the fork's PriorBox."""
    min_size_ = f32(min_size)
    max_size_ = f32(-1)
    aspect_ratios_ = [f32(1.0)]
    for a in ars:
        ar = f32(a)
        if not any(abs(float(ar) - float(r)) < 1e-6 for r in aspect_ratios_):
            aspect_ratios_.append(ar)
            if flip:
                aspect_ratios_.append(f32(1.0 / float(ar)))
    num_priors_ = len(aspect_ratios_)
    if max_size is not None:
        max_size_ = f32(max_size)
        num_priors_ += 1
    num_priors_ = 2 * num_priors_
    dim = layer_height * layer_width * num_priors_ * 4
    top = np.zeros(2 * dim, np.float32)
    step_x = f32(f32(img_width) / f32(layer_width))
    step_y = f32(f32(img_height) / f32(layer_height))
    idx = 0

    def box(cx: np.float32, cy: np.float32, bw: np.float32, bh: np.float32) -> None:
        nonlocal idx
        top[idx] = _store((float(cx) - float(bw) / 2.) / img_width)
        top[idx + 1] = _store((float(cy) - float(bh) / 2.) / img_height)
        top[idx + 2] = _store((float(cx) + float(bw) / 2.) / img_width)
        top[idx + 3] = _store((float(cy) + float(bh) / 2.) / img_height)
        idx += 4

    for h in range(layer_height):
        for w in range(layer_width):
            center_x = f32((w + 0.5) * float(step_x))
            center_y = f32((h + 0.5) * float(step_y))
            center_y_offset_1 = f32((h + 1.0) * float(step_y))
            box_width = box_height = min_size_
            box(center_x, center_y, box_width, box_height)
            box(center_x, center_y_offset_1, box_width, box_height)
            if max_size_ > 0:
                box_width = box_height = f32(math.sqrt(float(f32(min_size_ * max_size_))))
                box(center_x, center_y, box_width, box_height)
                box(center_x, center_y_offset_1, box_width, box_height)
            for ar in aspect_ratios_:
                if abs(float(ar) - 1.) < 1e-6:
                    continue
                box_width = f32(float(min_size_) * math.sqrt(float(ar)))
                box_height = f32(float(min_size_) / math.sqrt(float(ar)))
                box(center_x, center_y, box_width, box_height)
                box(center_x, center_y_offset_1, box_width, box_height)
    assert idx == dim
    if clip:
        for d in range(dim):
            top[d] = min(max(float(top[d]), 0.), 1.)
    if len(variance) == 1:
        top[dim:] = f32(variance[0])
    else:
        count = 0
        for _h in range(layer_height):
            for _w in range(layer_width):
                for _i in range(num_priors_):
                    for j in range(4):
                        top[dim + count] = f32(variance[j])
                        count += 1
    return top.reshape(1, 2, dim)
