"""Loop ports of HED's C++ (s9xie/hed @ 912632b9), for tests/layers/test_hed.py: its class-balanced
``sigmoid_cross_entropy_loss_layer.cpp`` (Forward_cpu, Backward_cpu) in float32 scalars, and its
``crop_layer.cpp`` (LayerSetUp's walk with ``util/coords.hpp``'s DiagonalAffineMap in float32, Forward_cpu
and Backward_cpu row copies)."""
from __future__ import annotations

import math

import numpy as np

f32 = np.float32


def sce_forward_backward(x: np.ndarray, t: np.ndarray, top_diff: float = 1.0) -> tuple[float, np.ndarray]:
    """The fork's loss and bottom diff, statement by statement."""
    x, t = np.asarray(x, f32), np.asarray(t, f32)
    num = x.shape[0]
    dim = x.size // num
    xs, ts = x.reshape(-1), t.reshape(-1)
    loss_pos = loss_neg = f32(0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for i in range(num):
            tp = tn = cp = cn = f32(0)
            for j in range(dim):
                v, tt = xs[i * dim + j], ts[i * dim + j]
                ge = f32(v >= 0)
                term = f32(v * (tt - ge) - f32(np.log(f32(1) + f32(np.exp(f32(v - f32(2) * v * ge))))))
                if tt == 1:
                    cp += f32(1)
                    tp = f32(tp - term)
                elif tt == 0:
                    cn += f32(1)
                    tn = f32(tn - term)
            loss_pos = f32(loss_pos + f32(f32(tp * cn) / f32(cp + cn)))
            loss_neg = f32(loss_neg + f32(f32(tn * cp) / f32(cp + cn)))
        loss = f32(f32(loss_pos * f32(1) + loss_neg) / f32(num))
        diff = (f32(1) / (f32(1) + np.exp(-xs))).astype(f32) - ts
        for i in range(num):
            seg = ts[i * dim:(i + 1) * dim]
            cp, cn = f32((seg == 1).sum()), f32((seg == 0).sum())
            for j in range(dim):
                if seg[j] == 1:
                    diff[i * dim + j] *= f32(f32(1) * cn / f32(cp + cn))
                elif seg[j] == 0:
                    diff[i * dim + j] *= f32(cp / f32(cp + cn))
        diff *= f32(f32(top_diff) / f32(num))
    return float(loss), diff.reshape(x.shape)


# -- Crop -------------------------------------------------------------------------------------------
def _filter_map(k, s, p):
    return [(f32(s), f32(f32(k - 1) / f32(2) - f32(p)))] * 2


def _inv(m):
    return [(f32(f32(1) / a), f32(-b / a)) for a, b in m]


def _compose(left, right):
    return [(f32(la * ra), f32(la * rb + lb)) for (la, lb), (ra, rb) in zip(left, right)]


_IDENTITY = [(f32(1), f32(0))] * 2
_ID_TYPES = {"ReLU", "Sigmoid", "Dropout", "Concat", "Eltwise", "Split", "Slice", "LRN", "TanH", "Power"}


def _coord_map(lp, crops):
    """coord_map() of the layer types HED's Caffe gives one (square kernels as HED's nets write them)."""
    if lp.type in _ID_TYPES:
        return _IDENTITY
    if lp.type in ("Convolution", "Deconvolution"):
        cp = lp.convolution_param
        fm = _filter_map(cp.kernel_size[0], cp.stride[0] if len(cp.stride) else 1, cp.pad[0] if len(cp.pad) else 0)
        return fm if lp.type == "Deconvolution" else _inv(fm)
    if lp.type == "Pooling":
        pp = lp.pooling_param
        return _inv(_filter_map(pp.kernel_size, pp.stride, pp.pad))
    if lp.type == "Crop":
        ch, cw = crops[id(lp)]
        return [(f32(1), f32(-ch)), (f32(1), f32(-cw))]
    raise AssertionError(f"NOT_IMPLEMENTED: coord_map of {lp.type}")


def _double_eq(a: float, b: float) -> bool:  # gtest's CHECK_DOUBLE_EQ: within 4 ULPs
    return abs(a - b) <= 4 * np.spacing(max(abs(a), abs(b), 1e-300))


def crop_offsets(layers) -> list[tuple[int, int]]:
    """(crop_h, crop_w) of every Crop of ``layers`` (a split-inserted net's LayerParameters, in order),
    by LayerSetUp's walk over the layers set up before it (``top_vecs``/``bottom_vecs`` so far)."""
    crops: dict[int, tuple[int, int]] = {}
    out = []
    for idx, me in enumerate(layers):
        if me.type != "Crop":
            continue
        down_map: dict[str, int] = {}
        for li in range(idx + 1):
            for top in layers[li].top:
                down_map.setdefault(top, li)
        blob = me.bottom[0]
        path = {blob}
        while blob in down_map:
            li = down_map[blob]
            if not len(layers[li].bottom):
                break
            blob = layers[li].bottom[0]
            path.add(blob)
        inter = me.bottom[1]
        while inter not in path:
            assert inter in down_map, "Cannot align apparently disconnected blobs."
            assert len(layers[down_map[inter]].bottom) > 0, "Cannot align apparently disconnected blobs."
            inter = layers[down_map[inter]].bottom[0]
        maps = [_IDENTITY, _IDENTITY]
        for i in range(2):
            blob = me.bottom[i]
            while blob != inter:
                maps[i] = _compose(maps[i], _coord_map(layers[down_map[blob]], crops))
                blob = layers[down_map[blob]].bottom[0]
        crop_map = _compose(maps[1], _inv(maps[0]))
        for a, b in crop_map:
            assert _double_eq(float(a), 1.0), "scale mismatch"
            assert b <= 0, "Negative crop width."
            assert _double_eq(float(b), float(round(b))), "crop width is not an integer"
        crops[id(me)] = (int(-round(crop_map[0][1])), int(-round(crop_map[1][1])))
        out.append(crops[id(me)])
    return out


def crop_forward(x: np.ndarray, ref_shape, crop: tuple[int, int]) -> np.ndarray:
    n, c = x.shape[:2]
    h, w = ref_shape[2:4]
    top = np.empty((n, c, h, w), x.dtype)
    for i in range(n):
        for ch in range(c):
            for r in range(h):
                top[i, ch, r, :] = x[i, ch, crop[0] + r, crop[1]:crop[1] + w]
    return top


def crop_backward(top_diff: np.ndarray, bottom_shape, crop: tuple[int, int]) -> np.ndarray:
    diff = np.zeros(bottom_shape, top_diff.dtype)
    n, c, h, w = top_diff.shape
    for i in range(n):
        for ch in range(c):
            for r in range(h):
                diff[i, ch, crop[0] + r, crop[1]:crop[1] + w] = top_diff[i, ch, r, :]
    return diff


def bilinear_kernel(size: int) -> np.ndarray:
    """examples/hed/solve.py's upsample_filt: the deconvolutions' fixed bilinear weights."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


def centre_offset(big: int, small: int) -> int:
    """OpenCV's samples/dnn/edge_detection.py CropLayer: ``(input - target) // 2``."""
    return math.floor((big - small) / 2)
