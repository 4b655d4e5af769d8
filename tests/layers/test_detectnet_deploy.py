"""DIGITS' DetectNet deploy net (data -> GoogLeNet -> coverage/bbox heads -> ClusterDetections) builds from
its prototxt text and runs forward with random weights at a reduced input size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from neocaffe import rng
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_prototxt
from neocaffe.proto import caffe_pb2
from tests.layers import detectnet_reference as ref

DEPLOY = Path(__file__).parent / "data" / "detectnet" / "deploy.prototxt"


def test_detectnet_deploy_net_runs_forward_at_reduced_size():
    param = read_prototxt(str(DEPLOY), caffe_pb2.NetParameter)
    layers = {lp.name: lp for lp in param.layer}
    assert layers["cluster"].python_param.param_str == "1248, 352, 16, 0.6, 3, 0.02, 22, 1"
    # 1x3x384x1248 -> 1x3x64x128: a 4 x 8 grid of 16-pixel cells; clustering loose enough to group cells
    layers["deploy_data"].input_param.shape[0].dim[:] = [1, 3, 64, 128]
    layers["cluster"].python_param.param_str = "128, 64, 16, 0.6, 1, 0.6, 0, 1"
    rng.set_seed(3)
    net = Net(param, 1)
    assert net.blob_shapes["coverage"] == (1, 1, 4, 8) and net.blob_shapes["bboxes"] == (1, 4, 4, 8)
    assert net.blob_shapes["bbox-list"] == (1, 50, 5)
    with torch.no_grad():
        net.layer("cvg/classifier").blobs[1].fill_(2.0)  # every cell covered
        net.layer("bbox/regressor").blobs[1].copy_(torch.tensor([-20.0, -10.0, 40.0, 30.0]))
    r = np.random.default_rng(0)
    image = torch.from_numpy((r.random((1, 3, 64, 128)) * 255).astype(np.float32))
    net.forward({"data": image})
    cvg = net.blob_data["coverage"].detach().numpy()
    boxes = net.blob_data["bboxes"].detach().numpy()
    assert np.all(np.isfinite(boxes)) and cvg.min() >= 0.6
    got = net.blob_data["bbox-list"].detach().numpy()
    want = ref.cluster(cvg, boxes, 128, 64, 16, 0.6, 1, 0.6, 0)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    assert np.count_nonzero(got[0, :, 4]) >= 1  # groups were found and compared
