"""Loop-by-loop NumPy ports of TI caffe-jacinto's code (mathmanu/caffe-jacinto caffe-0.17 @
2678b2b8556cc64ba66d801537bb066fc070889a), the references of tests/layers/test_jacinto_image_label_data.py and
tests/layers/test_jacinto_label_weights.py:

* ``src/caffe/layers/softmax_loss_layer.cpp``: ``Forward_cpu`` with ``label_weights``, ``Backward_cpu`` (which
  never reads them) and ``get_normalizer``; the softmax as NVCaffe's ``SoftmaxLayer::Forward_cpu`` (max, exp, sum);
* ``src/caffe/layers/image_label_data_layer.cpp`` over NVCaffe 0.17's ``DataLayer`` / ``DataReader`` (records in
  key order, wrapping) and ``DataTransformer::Transform(const Datum&, Dtype*, rand[3])`` (the V1 path of raw
  uint8 Datums: mirror ``rand[0] % 2``, TRAIN offsets ``rand[1] % (H - crop + 1)``, ``rand[2] % (W - crop + 1)``,
  TEST centre ``(H - crop) / 2``; ``(x - mean) * scale``), once with the layer's transform_param for the image
  and once with its copy for the label (mean values replaced by zeros, everything else kept).
"""
from __future__ import annotations

import math

import numpy as np

FLT_MIN = np.float32(1.17549435e-38)
FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """SoftmaxLayer::Forward_cpu: per (outer, inner) position, subtract the max over the axis, exp, divide by the sum."""
    outer, c = math.prod(x.shape[:axis]), x.shape[axis]
    inner = math.prod(x.shape[axis + 1:])
    xs = x.reshape(outer, c, inner)
    out = np.empty_like(xs)
    for i in range(outer):
        for j in range(inner):
            m = xs[i, 0, j]
            for k in range(1, c):
                m = max(m, xs[i, k, j])
            s = xs.dtype.type(0)
            for k in range(c):
                out[i, k, j] = np.exp(xs[i, k, j] - m)
                s += out[i, k, j]
            for k in range(c):
                out[i, k, j] /= s
    return out.reshape(x.shape)


def get_normalizer(mode: int, outer: int, inner: int, valid_count: int) -> float:
    n = {FULL: outer * inner, VALID: valid_count if valid_count != -1 else outer * inner, BATCH_SIZE: outer,
         NONE: 1}[mode]
    return max(1.0, float(n))


def softmax_loss_forward(x: np.ndarray, label: np.ndarray, weights: list[float] | None, ignore: int | None,
                         mode: int, axis: int = 1) -> tuple[float, np.ndarray]:
    """Forward_cpu: the loss and prob."""
    prob = softmax(x, axis)
    outer, c = math.prod(x.shape[:axis]), x.shape[axis]
    inner = math.prod(x.shape[axis + 1:])
    p = prob.reshape(-1)
    lab = label.reshape(-1)
    dim = c * inner
    loss, count = 0.0, 0
    for i in range(outer):
        for j in range(inner):
            v = int(lab[i * inner + j])
            if ignore is not None and v == ignore:
                continue
            lweight = weights[v] if weights is not None else 1.0
            loss -= math.log(max(float(p[i * dim + v * inner + j]), float(FLT_MIN))) * lweight
            count += 1
    return loss / get_normalizer(mode, outer, inner, count), prob


def softmax_loss_backward(prob: np.ndarray, label: np.ndarray, ignore: int | None, mode: int, top_diff: float,
                          axis: int = 1) -> np.ndarray:
    """Backward_cpu: prob, minus 1 at each label, 0 at ignored positions, times top_diff / normalizer."""
    outer, c = math.prod(prob.shape[:axis]), prob.shape[axis]
    inner = math.prod(prob.shape[axis + 1:])
    diff = prob.reshape(-1).copy()
    lab = label.reshape(-1)
    dim = c * inner
    count = 0
    for i in range(outer):
        for j in range(inner):
            v = int(lab[i * inner + j])
            if ignore is not None and v == ignore:
                for k in range(c):
                    diff[i * dim + k * inner + j] = 0
            else:
                diff[i * dim + v * inner + j] -= 1
                count += 1
    diff *= top_diff / get_normalizer(mode, outer, inner, count)
    return diff.reshape(prob.shape)


def transform_v1(data: np.ndarray, rand: tuple[int, int, int], crop_size: int, train: bool, mirror: bool,
                 mean_values: list[float], scale: float) -> np.ndarray:
    """DataTransformer::Transform(datum, transformed_data, rand) on a raw uint8 C x H x W datum, float32 out."""
    c_n, dh, dw = data.shape
    do_mirror = mirror and (rand[0] % 2) == 1
    mv = list(mean_values)
    if c_n > 1 and len(mv) == 1:
        mv = mv * c_n
    assert not mv or len(mv) == c_n, "Specify either 1 mean_value or as many as channels"
    height, width, h_off, w_off = dh, dw, 0, 0
    if crop_size:
        height = width = crop_size
        if train:
            h_off = rand[1] % (dh - crop_size + 1)
            w_off = rand[2] % (dw - crop_size + 1)
        else:
            h_off = (dh - crop_size) // 2
            w_off = (dw - crop_size) // 2
    flat = data.reshape(-1)
    out = np.zeros(c_n * height * width, np.float32)
    m = -1 if do_mirror else 1
    s = np.float32(scale)
    for c in range(c_n):
        cdho = c * dh + h_off
        ch = c * height
        mnv = np.float32(mv[c]) if mv else np.float32(0)
        for h in range(height):
            top_index = (ch + h + 1) * width - 1 if do_mirror else (ch + h) * width
            data_index = (cdho + h) * dw + w_off
            for _ in range(width):
                e = np.float32(flat[data_index])
                if s == 1:
                    out[top_index] = e - mnv if mv else e
                else:
                    out[top_index] = (e - mnv) * s if mv else e * s
                data_index += 1
                top_index += m
    return out.reshape(c_n, height, width)


def read_raw_db(path: str) -> list[np.ndarray]:
    """The raw uint8 Datums of an LMDB, C x H x W, in key order."""
    import lmdb

    from neocaffe.proto import caffe_pb2

    out = []
    env = lmdb.open(path, readonly=True, lock=False)
    with env.begin() as txn:
        for _, value in txn.cursor():
            d = caffe_pb2.Datum()
            d.ParseFromString(value)
            out.append(np.frombuffer(d.data, np.uint8).reshape(d.channels, d.height, d.width))
    env.close()
    return out


def image_label_item(images: list[np.ndarray], labels: list[np.ndarray], batch_size: int, k: int, i: int,
                     rand: tuple[int, int, int], crop_size: int, train: bool, mirror: bool,
                     mean_values: list[float], scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Item ``i`` of batch ``k``: record ``(k * batch_size + i) mod n`` of each database (the readers walk in
    key order and wrap), through the image's transformer and the label's (mean values zeroed, the same
    ``rand``, the same scale: the fork's copy of transform_param)."""
    r = (k * batch_size + i) % len(images)
    img = transform_v1(images[r], rand, crop_size, train, mirror, mean_values, scale)
    lab = transform_v1(labels[r], rand, crop_size, train, mirror, [0.0] * len(mean_values), scale)
    return img, lab
