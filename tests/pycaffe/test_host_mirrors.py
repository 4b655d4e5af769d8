"""Blob views as host mirrors (what ``.data`` / ``.diff`` are on CUDA), exercised on the CPU:
``HostMirrors.copy_on_cpu`` makes every view a host copy that is written back before the next
forward, backward or solver step, exactly as on a GPU."""
from __future__ import annotations

import numpy as np
import pytest

import caffe
from caffe._blob import HostMirrors


INPUT_NET = """name: 'mirrornet' force_backward: true
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 3 dim: 4 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 2 weight_filler { type: 'gaussian' std: 1 }
                        bias_filler { type: 'constant' value: 0.5 } } }
"""


@pytest.fixture(autouse=True)
def host_copies(monkeypatch):
    monkeypatch.setattr(HostMirrors, "copy_on_cpu", True)


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "mirror.prototxt"
    path.write_text(INPUT_NET)
    return caffe.Net(str(path), caffe.TEST)


def _ip(net, x):
    return x @ net.params["ip"][0].data.T + net.params["ip"][1].data


def test_views_are_host_copies_written_back_on_forward(net):
    view = net.blobs["data"].data
    assert not np.shares_memory(view, net._net.blob_data["data"].numpy())  # a mirror, not the tensor
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    view[...] = x
    np.testing.assert_allclose(net.forward()["ip"], _ip(net, x), rtol=1e-6)
