"""A Net's TF32 choice on CUDA (neocaffe.graph.cuda_math): IEEE float32 by default, whatever PyTorch's
process switches say outside, and those switches back as they were afterwards."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from neocaffe.graph import cuda_math as cm
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net

CONV_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 16 dim: 20 dim: 20 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 32 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.01 } } }
"""


@pytest.fixture()
def switches():
    """The process switches as the test found them, put back afterwards."""
    before = cm.tf32_switches()
    assert before is not None
    yield before
    cm.set_tf32_switches(*before)


def fake_net(device: str, tf32: bool = False) -> SimpleNamespace:
    return SimpleNamespace(device=torch.device(device), tf32=tf32)


@pytest.mark.parametrize("outside", [(True, True), (False, True), (False, False)])
@pytest.mark.parametrize("tf32", [False, True])
def test_cuda_net_runs_with_its_choice_and_restores_the_process_switches(switches, outside, tf32):
    cm.set_tf32_switches(*outside)
    with cm.cuda_math(fake_net("cuda", tf32)):
        assert cm.tf32_switches() == (tf32, tf32)
    assert cm.tf32_switches() == outside


def test_restores_after_an_error(switches):
    cm.set_tf32_switches(True, True)
    with pytest.raises(ValueError):
        with cm.cuda_math(fake_net("cuda")):
            raise ValueError("inside")
    assert cm.tf32_switches() == (True, True)


def test_cpu_net_leaves_the_switches_alone(switches, monkeypatch):
    calls = []
    monkeypatch.setattr(cm, "set_tf32_switches", lambda *a: calls.append(a))
    torch.backends.cudnn.allow_tf32 = True
    with cm.cuda_math(fake_net("cpu")):
        assert torch.backends.cudnn.allow_tf32 is True
    assert calls == []
    net = Net(read_net(CONV_NET), 1)
    net.forward({"data": torch.randn(2, 16, 20, 20)})
    net.backward({"ip": torch.ones(2, 10)})
    assert calls == []


def test_unreadable_mixed_settings_are_left_alone_with_one_warning(switches, caplog, monkeypatch):
    monkeypatch.setattr(cm, "_warned", [])
    cm.set_tf32_switches(False, False)
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # the new API for conv only: conv and RNN now differ
    with pytest.raises(RuntimeError):
        _ = torch.backends.cudnn.allow_tf32
    with caplog.at_level(logging.WARNING, logger="neocaffe.graph"):
        for _ in range(2):
            with cm.cuda_math(fake_net("cuda")):
                assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    warnings = [r for r in caplog.records if "TF32 switches unreadable" in r.getMessage()]
    assert len(warnings) == 1, caplog.text


def test_a_net_defaults_to_ieee_and_the_solver_sets_its_mode(tmp_path):
    from neocaffe.solver.speed import SpeedModes, apply_modes

    net = Net(read_net(CONV_NET), 1)
    assert net.tf32 is False
    tests = [Net(read_net(CONV_NET), 1)]
    rule = SimpleNamespace(history=[])
    apply_modes(SpeedModes(precision="tf32"), torch.device("cpu"), net, tests, rule)
    assert net.tf32 and tests[0].tf32
    apply_modes(SpeedModes(precision="bf16"), torch.device("cpu"), net, tests, rule)
    assert not net.tf32 and not tests[0].tf32


def test_pycaffe_gpu_net_reads_neocaffe_precision(monkeypatch, tmp_path):
    caffe = pytest.importorskip("caffe")
    from caffe import _net

    made = []

    class Recording(_net.CoreNet):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **k):
            super().__init__(*a, **{**k, "device": None})
            self.device = torch.device("cuda")
            made.append(self)

    monkeypatch.setattr(_net, "CoreNet", Recording)
    path = tmp_path / "net.prototxt"
    path.write_text(CONV_NET)
    for env, want in (("", False), ("tf32", True), ("bf16", False)):
        monkeypatch.setenv("NEOCAFFE_PRECISION", env)
        caffe.Net(str(path), caffe.TEST)
        assert made[-1].tf32 is want, env


def test_net_forward_and_backward_run_inside_the_scope(monkeypatch):
    from neocaffe.graph import net as net_module

    entered = []

    class Recording(cm.cuda_math):
        def __enter__(self):
            entered.append(self.want)
            return super().__enter__()

    monkeypatch.setattr(net_module, "cuda_math", Recording)
    for keep in (True, False):
        net = Net(read_net(CONV_NET), 1, keep_blob_diffs=keep)
        net.tf32 = True
        entered.clear()
        net.forward({"data": torch.randn(2, 16, 20, 20)})
        net.backward({"ip": torch.ones(2, 10)})
        assert entered == [None, None]  # both entered; on the CPU nothing to choose


@pytest.mark.gpu
def test_cuda_conv_and_ip_are_ieee_float32_under_pytorchs_tf32_default(switches):
    """cuDNN and cuBLAS may use TF32 under PyTorch's default switches (cuDNN's is on); a Net must not: on
    CUDA it gives the CPU's float32 result to float32 rounding, and leaves the switches as it found them."""
    cm.set_tf32_switches(True, True)  # what a process that never heard of Caffe may have
    cpu = Net(read_net(CONV_NET), 1)
    gpu = Net(read_net(CONV_NET), 1, device="cuda")
    with torch.no_grad():
        for mine, theirs in zip(gpu.parameters(), cpu.parameters()):
            mine.copy_(theirs)
    x = torch.randn(2, 16, 20, 20) * 3
    cpu.forward({"data": x})
    want = cpu.blob_data["ip"].clone()
    gpu.forward({"data": x.cuda()})
    got = gpu.blob_data["ip"].cpu()
    scale = float(want.abs().max())
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-5 * scale)
    assert cm.tf32_switches() == (True, True)  # put back for the code outside the Net
