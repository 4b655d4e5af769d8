"""Real models and real-Caffe outputs through our Net: the 2015 OpenCV layer goldens (made with real
pycaffe) and the real V1/V2 LeNet caffemodels on the 10,000 MNIST test images."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from tests.conftest import shared_path

OPENCV = ["convolution", "deconvolution", "inner_product", "lrn_channels", "lrn_spatial", "mvn",
          "pooling_ave", "pooling_max", "softmax"]


@pytest.mark.parametrize("name", OPENCV)
def test_opencv_layer_goldens(name):
    folder = shared_path("realdata", "opencv_caffe_layers_2015")
    net = Net(read_net(str(folder / f"layer_{name}.prototxt")), 1, source=f"layer_{name}.prototxt")
    if (folder / f"layer_{name}.caffemodel").exists():
        net.copy_from(str(folder / f"layer_{name}.caffemodel"))
    inp = folder / (f"layer_{name}.input.npy" if (folder / f"layer_{name}.input.npy").exists() else "blob.npy")
    x = np.load(inp).astype(np.float32)
    net.set_blob(net.inputs[0], torch.from_numpy(x))
    with torch.no_grad():
        net.forward()
    ref = np.load(folder / f"layer_{name}.npy")
    out = net.blob_data["output"].numpy()
    assert out.shape == ref.shape
    scale = float(np.abs(ref).max())
    assert float(np.abs(out - ref).max()) <= 1e-5 * max(scale, 1.0)


def _mnist_test():
    folder = shared_path("realdata", "mnist_idx_pypi")
    images = np.frombuffer(gzip.decompress((folder / "t10k-images.idx3-ubyte.gz").read_bytes()), np.uint8, offset=16)
    labels = np.frombuffer(gzip.decompress((folder / "t10k-labels.idx1-ubyte.gz").read_bytes()), np.uint8, offset=8)
    return images.reshape(-1, 1, 28, 28), labels


@pytest.mark.parametrize("model,key", [("lenet_v1_2014/lenet_iter_10000.caffemodel", "lenet_v1_iter10000"),
                                       ("lenet_v1_2014/lenet_iter_5000.caffemodel", "lenet_v1_iter5000"),
                                       ("lenet_v2_2016/lenet_iter_10000.caffemodel", "lenet_v2_iter10000")])
def test_real_lenet_accuracy_and_logits(model, key):
    weights = shared_path("realdata", model)
    ref = json.loads(shared_path("fixtures", "models", "ref_results.json").read_text())[key]
    logits100 = np.load(shared_path("fixtures", "models", f"{key}_ip2_first100.npy"))
    net = Net(read_net(str(weights.parent / "lenet.prototxt")), 1, source="lenet.prototxt")
    net.copy_from(str(weights))
    images, labels = _mnist_test()
    batch = 1000
    net.set_blob("data", torch.zeros(batch, 1, 28, 28))
    correct, first100 = 0, None
    with torch.no_grad():
        for i in range(0, len(images), batch):
            net.set_blob("data", torch.from_numpy(images[i:i + batch].astype(np.float32) * np.float32(0.00390625)))
            net.forward()
            ip2 = net.blob_data["ip2"].numpy()
            if first100 is None:
                first100 = ip2[:100].copy()
            correct += int((ip2.argmax(1) == labels[i:i + batch]).sum())
    assert correct / len(images) == pytest.approx(ref["accuracy_t10k"], abs=1e-9)
    np.testing.assert_allclose(first100, logits100, atol=1e-4, rtol=0)
    np.testing.assert_allclose(first100[0], ref["ip2_img0"], atol=1e-4, rtol=0)
