"""The frozen mode's native candidate (graph.native_plan over layers.small_net): each layer it lowers
against the fp32 lean path (NumPy-free reference: the layers' own forwards) within 1e-5 of the output's
scale, at batch 1 and 3, on 1 and 2 threads; what it does not plan it names; pooling keeps Caffe's
window rules and the Pooling layer's NaN rule; the outputs keep their memory from call to call."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neocaffe.graph import native_plan
from neocaffe.graph.frozen import FrozenExecutor
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers import small_net
from neocaffe.layers.base import TEST

pytestmark = pytest.mark.skipif(small_net.function() is None, reason="no C compiler for native kernels")

G = "weight_filler { type: 'gaussian' std: 0.4 } bias_filler { type: 'gaussian' std: 0.3 }"


def _net(layers: str, shape: tuple[int, ...] = (1, 3, 11, 13)) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f"name: 'n' layer {{ name: 'data' type: 'Input' top: 'data' input_param {{ shape {{ {dims} }} }} }}\n{layers}"


CASES = {
    "conv pad stride dilation, fused in-place ReLU": f"""
layer {{ name: 'c' type: 'Convolution' bottom: 'data' top: 'c'
  convolution_param {{ num_output: 20 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 2 stride_h: 2 stride_w: 1 dilation: 2 {G} }} }}
layer {{ name: 'r' type: 'ReLU' bottom: 'c' top: 'c' relu_param {{ negative_slope: 0.1 }} }}""",
    "grouped conv without bias, PReLU per channel": """
layer { name: 'c' type: 'Convolution' bottom: 'data' top: 'c'
  convolution_param { num_output: 6 kernel_size: 3 group: 3 bias_term: false weight_filler { type: 'gaussian' std: 0.4 } } }
layer { name: 'p' type: 'PReLU' bottom: 'c' top: 'c' prelu_param { filler { type: 'uniform' min: 0.1 max: 0.5 } } }""",
    "pooling MAX/AVE with pad and ceil, shared PReLU on its own": f"""
layer {{ name: 'c' type: 'Convolution' bottom: 'data' top: 'c' convolution_param {{ num_output: 5 kernel_size: 1 {G} }} }}
layer {{ name: 'm' type: 'Pooling' bottom: 'c' top: 'm' pooling_param {{ pool: MAX kernel_size: 3 stride: 2 pad: 1 }} }}
layer {{ name: 'a' type: 'Pooling' bottom: 'c' top: 'a' pooling_param {{ pool: AVE kernel_size: 3 stride: 2 pad: 1 }} }}
layer {{ name: 'g' type: 'Pooling' bottom: 'a' top: 'g' pooling_param {{ pool: AVE global_pooling: true }} }}
layer {{ name: 'p' type: 'PReLU' bottom: 'm' top: 'm' prelu_param {{ channel_shared: true filler {{ type: 'constant' value: 0.3 }} }} }}""",
    "inner products on 4-D and 2-D bottoms, transpose, softmax": f"""
layer {{ name: 'c' type: 'Convolution' bottom: 'data' top: 'c' convolution_param {{ num_output: 7 kernel_size: 3 stride: 2 {G} }} }}
layer {{ name: 'ip' type: 'InnerProduct' bottom: 'c' top: 'ip' inner_product_param {{ num_output: 33 {G} }} }}
layer {{ name: 'r' type: 'ReLU' bottom: 'ip' top: 'ip' }}
layer {{ name: 'ip2' type: 'InnerProduct' bottom: 'ip' top: 'ip2' inner_product_param {{ num_output: 4 transpose: true {G} }} }}
layer {{ name: 'd' type: 'Dropout' bottom: 'ip2' top: 'ip2' }}
layer {{ name: 'prob' type: 'Softmax' bottom: 'ip2' top: 'prob' }}""",
    "softmax over channels, split with an in-place ReLU on one branch": f"""
layer {{ name: 'c' type: 'Convolution' bottom: 'data' top: 'c' convolution_param {{ num_output: 3 kernel_size: 3 {G} }} }}
layer {{ name: 's' type: 'Split' bottom: 'c' top: 's1' top: 's2' }}
layer {{ name: 'r' type: 'ReLU' bottom: 's1' top: 's1' }}
layer {{ name: 'sm' type: 'Softmax' bottom: 's2' top: 'sm' }}
layer {{ name: 'c2' type: 'Convolution' bottom: 's1' top: 'c2' convolution_param {{ num_output: 17 kernel_size: 2 {G} }} }}""",
}


def _pair(text: str) -> tuple[Net, Net]:
    ref = Net(read_net(text), TEST)
    net = Net(read_net(text), TEST)
    net.copy_from(ref.to_weights())
    net.frozen = FrozenExecutor(net, net.lean, ("native",))
    return ref, net


def _outputs(net: Net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        net.forward({"data": x})
    return {name: net.blob(name).detach().clone() for name in net.outputs}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("batch, threads", [(1, 1), (3, 1), (3, 2)])
def test_each_lowered_layer_matches_the_lean_path(case, batch, threads):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ref, net = _pair(_net(CASES[case], (batch, 3, 11, 13)))
        for seed in (0, 1):
            x = torch.from_numpy(np.random.default_rng(seed).standard_normal((batch, 3, 11, 13)).astype(np.float32))
            want, got = _outputs(ref, x), _outputs(net, x)
            assert set(got) == set(want) and want
            for name, w in want.items():
                assert got[name].shape == w.shape, name
                err = float((got[name] - w).abs().max()) / max(float(w.abs().max()), 1e-30)
                assert err <= 1e-5, f"{case}: '{name}' off the lean path by {err:.2e} of its scale"
        assert {c for c, _ in net.frozen.choices.values()} == {"native"}
    finally:
        torch.set_num_threads(saved)


def test_unplanned_layers_are_named_and_the_net_runs_the_lean_path():
    text = _net(f"""layer {{ name: 'c' type: 'Convolution' bottom: 'data' top: 'c' convolution_param {{ num_output: 4 kernel_size: 3 {G} }} }}
layer {{ name: 'n' type: 'LRN' bottom: 'c' top: 'n' }}""")
    ref, net = _pair(text)
    x = torch.randn(1, 3, 11, 13)
    core = net
    plan, why = native_plan.build(core, core.frozen.start, core.frozen.inputs, [x], list(core.outputs))
    assert plan is None and "layer 'n' (LRN)" in why
    assert torch.equal(_outputs(net, x)["n"], _outputs(ref, x)["n"])
    assert {c for c, _ in net.frozen.choices.values()} == {"lean"}


def test_nets_above_the_arithmetic_cap_are_left_to_pytorch(monkeypatch):
    text = _net(f"layer {{ name: 'c' type: 'Convolution' bottom: 'data' top: 'c' convolution_param {{ num_output: 64 kernel_size: 3 {G} }} }}")
    _, net = _pair(text)
    x = torch.randn(1, 3, 11, 13)
    mflop = 2e-6 * 64 * 9 * 11 * 27
    monkeypatch.setattr(native_plan, "MAX_MFLOP", mflop * 0.9)
    plan, why = native_plan.build(net, net.frozen.start, net.frozen.inputs, [x], ["c"])
    assert plan is None and "MFLOP" in why
    monkeypatch.setattr(native_plan, "MAX_MFLOP", mflop * 1.1)
    plan, _ = native_plan.build(net, net.frozen.start, net.frozen.inputs, [x], ["c"])
    assert plan is not None


def _caffe_pool(x: np.ndarray, k: int, s: int, p: int, ave: bool) -> np.ndarray:
    """Caffe's PoolingLayer::Forward_cpu, written out (ceil rounding, clipped windows)."""
    n, c, h, w = x.shape
    oh = int(math.ceil((h + 2 * p - k) / s)) + 1
    ow = int(math.ceil((w + 2 * p - k) / s)) + 1
    if p and (oh - 1) * s >= h + p:
        oh -= 1
    if p and (ow - 1) * s >= w + p:
        ow -= 1
    y = np.zeros((n, c, oh, ow), np.float32)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, h + p), min(ws + k, w + p)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs:he, ws:we]
            y[:, :, i, j] = win.sum((2, 3), dtype=np.float32) / np.float32(size) if ave else win.max((2, 3))
    return y


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_follows_caffes_windows(method):
    text = _net(f"layer {{ name: 'p' type: 'Pooling' bottom: 'data' top: 'p' pooling_param {{ pool: {method} kernel_size: 3 stride: 2 pad: 1 }} }}",
                (2, 3, 10, 7))
    _, net = _pair(text)
    x = np.random.default_rng(5).standard_normal((2, 3, 10, 7)).astype(np.float32)
    got = _outputs(net, torch.from_numpy(x))["p"].numpy()
    np.testing.assert_allclose(got, _caffe_pool(x, 3, 2, 1, method == "AVE"), rtol=1e-6, atol=1e-7)


def test_a_nan_wins_its_max_pooling_window_as_in_the_pooling_layer():
    text = _net("layer { name: 'p' type: 'Pooling' bottom: 'data' top: 'p' pooling_param { pool: MAX kernel_size: 2 stride: 2 } }",
                (1, 2, 4, 4))
    ref, net = _pair(text)
    x = torch.arange(32, dtype=torch.float32).reshape(1, 2, 4, 4)
    x[0, 1, 0, 0] = float("nan")
    got, want = _outputs(net, x)["p"], _outputs(ref, x)["p"]
    assert torch.isnan(got[0, 1, 0, 0]) and torch.equal(got.nan_to_num(-1), want.nan_to_num(-1))


def test_outputs_keep_their_memory_and_take_each_forwards_values():
    text = _net(f"layer {{ name: 'c' type: 'Convolution' bottom: 'data' top: 'c' convolution_param {{ num_output: 4 kernel_size: 3 {G} }} }}")
    ref, net = _pair(text)
    a, b = torch.randn(1, 3, 11, 13), torch.randn(1, 3, 11, 13)
    with torch.no_grad():
        net.forward({"data": a})
        first = net.blob("c")
        net.forward({"data": b})
    assert net.blob("c") is first
    assert torch.allclose(first, _outputs(ref, b)["c"], rtol=1e-5, atol=1e-5)


def test_pack_conv_puts_output_channels_innermost_in_blocks_of_16():
    w = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)  # OC=2, C=3 (group 1)
    packed, bias = small_net.pack_conv(w, np.array([1, 2], np.float32), 1)
    assert packed.shape == (1, 1, 2, 2, 3, 16) and bias.shape == (1, 16)
    assert packed[0, 0, 1, 0, 2, 1] == w[1, 2, 1, 0] and not packed[..., 2:].any()
    assert list(bias[0, :3]) == [1, 2, 0]
