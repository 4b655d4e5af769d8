"""A .caffemodel written by neocaffe is read by OpenCV's Caffe importer and computes what NumPy computes."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from neocaffe.io import LayerWeights, fit_blob, load_weights, read_net, save_caffemodel, weights_by_name

cv2 = pytest.importorskip("cv2")

TINY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "ip1" top: "prob" }
"""


def _tiny_numpy(x: np.ndarray, w1, b1, w2, b2) -> np.ndarray:
    x = x.astype(np.float64)
    win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))
    conv = np.maximum(np.einsum("nchwij,ocij->nohw", win, w1) + b1[None, :, None, None], 0)
    n, c, h, w = conv.shape
    pool = conv.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5)).reshape(n, -1)
    logits = pool @ w2.T.astype(np.float64) + b2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("mode", ["layers_only", "with_net_param", "legacy_dims"])
def test_opencv_reads_our_caffemodel(tmp_path: Path, mode: str):
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((4, 1, 3, 3), dtype=np.float32)
    b1 = rng.standard_normal(4, dtype=np.float32)
    w2 = (rng.standard_normal((3, 100), dtype=np.float32) * 0.1).astype(np.float32)
    b2 = rng.standard_normal(3, dtype=np.float32)
    layers = [LayerWeights("conv1", "Convolution", [w1, b1]), LayerWeights("ip1", "InnerProduct", [w2, b2])]
    if mode == "legacy_dims":  # V1-style blobs: IP weights 1x1xOUTxIN, biases 1x1x1xN
        layers = [LayerWeights("conv1", "Convolution", [w1, b1.reshape(1, 1, 1, 4)], [w1.shape, (1, 1, 1, 4)]),
                  LayerWeights("ip1", "InnerProduct", [w2.reshape(1, 1, 3, 100), b2.reshape(1, 1, 1, 3)],
                               [(1, 1, 3, 100), (1, 1, 1, 3)])]
    prototxt = tmp_path / "tiny.prototxt"
    prototxt.write_text(TINY)
    model = tmp_path / "tiny.caffemodel"
    save_caffemodel(model, layers, net_param=read_net(prototxt) if mode == "with_net_param" else None)
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(model))
    x = rng.standard_normal((2, 1, 12, 12), dtype=np.float32)
    net.setInput(x)
    got = net.forward("prob")
    np.testing.assert_allclose(got.reshape(2, 3), _tiny_numpy(x, w1, b1, w2, b2), rtol=1e-4, atol=1e-6)


def test_opencv_runs_real_v1_lenet_weights_saved_by_us(shared, tmp_path: Path):
    """V1 LeNet weights (legacy dims) fitted to current shapes, saved by us, run by OpenCV = Caffe's logits."""
    v1 = weights_by_name(load_weights(shared / "realdata" / "lenet_v1_2014" / "lenet_iter_10000.caffemodel"))
    shapes = {"conv1": [(20, 1, 5, 5), (20,)], "conv2": [(50, 20, 5, 5), (50,)], "ip1": [(500, 800), (500,)],
              "ip2": [(10, 500), (10,)]}
    layers = [LayerWeights(name, v1[name].type, [fit_blob(b, s, leg) for b, s, leg in
                                                  zip(v1[name].blobs, shapes[name], v1[name].legacy_shapes)])
              for name in shapes]
    model = tmp_path / "lenet_v2_from_v1.caffemodel"
    save_caffemodel(model, layers)
    net = cv2.dnn.readNetFromCaffe(str(shared / "realdata" / "lenet_v2_2016" / "lenet.prototxt"), str(model))
    raw = gzip.decompress((shared / "realdata" / "mnist_idx_pypi" / "t10k-images.idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw, np.uint8, 16 * 784, 16).reshape(16, 1, 28, 28).astype(np.float32) * 0.00390625
    net.setInput(images)
    got = net.forward("ip2")
    expected = np.load(shared / "fixtures" / "models" / "lenet_v1_iter10000_ip2_first100.npy")[:16]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
