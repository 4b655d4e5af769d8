"""Loop ports of RCF's C++ (yun-liu/RCF @ fc9e0f9f), for tests/layers/test_rcf.py: ``auto_crop_layer.cpp``
(LayerSetUp's walk with ``util/coords.hpp``'s DiagonalAffineMap in float32 and the ``coord_map()`` of RCF's layer
headers, Forward_cpu and Backward_cpu row copies; ``auto_crop_layer.cu``'s ``copy_kernel`` does the same copies),
``sigmoid_cross_entropy_loss_layer.cpp`` (Forward_cpu, Backward_cpu) in float32 scalars with the double literal 1.1,
and ``image_labelmap_data_layer.cpp`` + ``data_transformer.cpp``'s ``LabelmapTransform`` label encoding."""
from __future__ import annotations

import numpy as np

f32 = np.float32

# NeuronLayer subclasses of RCF's Caffe (include/caffe/layers/*.hpp) and the other layers with an identity coord_map()
_ID_TYPES = {"AbsVal", "BNLL", "Dropout", "ELU", "Exp", "Log", "Power", "PReLU", "ReLU", "Sigmoid", "TanH",
             "Threshold", "Concat", "Eltwise", "LRN", "MVN", "Softmax", "Split", "Slice"}
_IDENTITY = [(f32(1), f32(0))] * 2


def _filter_map(kh, kw, sh, sw, ph, pw):
    return [(f32(sh), f32(f32(kh - 1) / f32(2) - f32(ph))), (f32(sw), f32(f32(kw - 1) / f32(2) - f32(pw)))]


def _inv(m):
    return [(f32(f32(1) / a), f32(-b / a)) for a, b in m]


def _compose(left, right):
    return [(f32(la * ra), f32(la * rb + lb)) for (la, lb), (ra, rb) in zip(left, right)]


def _two(rep, default):
    v = list(rep)
    return (v[0], v[-1]) if v else (default, default)


def _coord_map(lp, crops):
    """coord_map() of RCF's layers (conv_layer.hpp, deconv_layer.hpp, pooling_layer.hpp, crop_layer.hpp,
    auto_crop_layer.hpp, neuron_layer.hpp, ...)."""
    if lp.type in _ID_TYPES:
        return _IDENTITY
    if lp.type in ("Convolution", "Deconvolution"):
        cp = lp.convolution_param
        k, s, p, d = _two(cp.kernel_size, 0), _two(cp.stride, 1), _two(cp.pad, 0), _two(cp.dilation, 1)
        ext = [d[i] * (k[i] - 1) + 1 for i in range(2)]
        fm = _filter_map(ext[0], ext[1], s[0], s[1], p[0], p[1])
        return fm if lp.type == "Deconvolution" else _inv(fm)
    if lp.type == "Pooling":
        pp = lp.pooling_param
        return _inv(_filter_map(pp.kernel_size, pp.kernel_size, pp.stride, pp.stride, pp.pad, pp.pad))
    if lp.type in ("Crop", "AutoCrop"):  # Crop: offsets[0], offsets[1], the offsets of axes 0 and 1
        a, b = crops[id(lp)]
        return [(f32(1), f32(-a)), (f32(1), f32(-b))]
    raise AssertionError(f"NOT_IMPLEMENTED: coord_map of {lp.type}")


def _crop_axis01(lp, n_axes=4):
    """BVLC Crop's Reshape: ``offsets`` over every axis; the first two (what its coord_map reads)."""
    cp = lp.crop_param
    start = cp.axis + n_axes if cp.axis < 0 else cp.axis
    offsets = [0] * n_axes
    for i in range(n_axes):
        if i >= start:
            offsets[i] = cp.offset[0] if len(cp.offset) == 1 else (cp.offset[i - start] if len(cp.offset) > 1 else 0)
    return offsets[0], offsets[1]


def _double_eq(a: float, b: float) -> bool:  # gtest's CHECK_DOUBLE_EQ: within 4 ULPs
    return abs(a - b) <= 4 * np.spacing(max(abs(a), abs(b), 1e-300))


def auto_crop_offsets(layers) -> list[tuple[int, int]]:
    """(crop_h, crop_w) of every AutoCrop of ``layers`` (a split-inserted net's LayerParameters, in order), by
    LayerSetUp's walk over the layers set up before it; Crops met get their Reshape's offsets."""
    crops: dict[int, tuple[int, int]] = {}
    out = []
    for idx, me in enumerate(layers):
        if me.type == "Crop":
            crops[id(me)] = _crop_axis01(me)
        if me.type != "AutoCrop":
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


def auto_crop_forward(x: np.ndarray, ref_shape, crop: tuple[int, int]) -> np.ndarray:
    """Forward_cpu: one caffe_copy of ``width`` per (n, c, h)."""
    n, c = x.shape[:2]
    h, w = ref_shape[2:4]
    top = np.empty((n, c, h, w), x.dtype)
    for i in range(n):
        for ch in range(c):
            for r in range(h):
                top[i, ch, r, :] = x[i, ch, crop[0] + r, crop[1]:crop[1] + w]
    return top


def auto_crop_backward(top_diff: np.ndarray, bottom_shape, crop: tuple[int, int]) -> np.ndarray:
    """Backward_cpu: caffe_set(0), then the rows copied back into the window."""
    diff = np.zeros(bottom_shape, top_diff.dtype)
    n, c, h, w = top_diff.shape
    for i in range(n):
        for ch in range(c):
            for r in range(h):
                diff[i, ch, crop[0] + r, crop[1]:crop[1] + w] = top_diff[i, ch, r, :]
    return diff


def sce_forward_backward(x: np.ndarray, t: np.ndarray, top_diff: float = 1.0) -> tuple[float, np.ndarray]:
    """RCF's loss and bottom diff, statement by statement (``1.1`` is a double literal: those products in double)."""
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
        loss = f32((float(loss_pos) * 1 + float(loss_neg) * 1.1) / num)
        diff = (f32(1) / (f32(1) + np.exp(-xs))).astype(f32) - ts
        for i in range(num):
            cp = cn = f32(0)
            for j in range(dim):
                if ts[i * dim + j] == 1:
                    cp += f32(1)
                elif ts[i * dim + j] == 0:
                    cn += f32(1)
            for j in range(dim):
                if ts[i * dim + j] == 1:
                    diff[i * dim + j] *= f32(f32(1 * cn) / f32(cp + cn))
                elif ts[i * dim + j] == 0:
                    diff[i * dim + j] = f32(float(diff[i * dim + j]) * (1.1 * float(cp) / float(cp + cn)))
                else:
                    diff[i * dim + j] *= f32(0)
        diff *= f32(f32(top_diff) / f32(num))
    return float(loss), diff.reshape(x.shape)


def encode_label(gt: np.ndarray) -> np.ndarray:
    """``cv_gt.convertTo(CV_32F); cv_gt / 255`` (OpenCV: convertTo with alpha = 1/255., a float multiply), then
    LabelmapTransform's ``if (pixel > 0.5) pixel = 1``, pixel by pixel."""
    out = np.empty(gt.shape, f32)
    scale = f32(1.0 / 255)
    for idx in np.ndindex(*gt.shape):
        pixel = f32(f32(gt[idx]) * scale)
        out[idx] = f32(1) if pixel > 0.5 else pixel
    return out


def bilinear_kernel(size: int) -> np.ndarray:
    """examples/rcf/solve.py's upsample_filt: the deconvolutions' fixed bilinear weights."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
