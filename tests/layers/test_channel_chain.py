"""BatchNorm -> Scale -> ReLU in one native pass (layers.channel_chain): bit for bit the layers run one
by one, in place or not; the weights read at each call; where no compiler
works, None (the layers then run one by one)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers import channel_chain, native
from neocaffe.layers.base import TEST
from neocaffe.layers.normalization import caffe_sqrt

needs_native = pytest.mark.skipif(channel_chain._function() is None, reason="no C compiler for native kernels")

CHAIN = """name: 'chain'
layer {{ name: 'data' type: 'Input' top: 'data' input_param {{ shape {{ dim: {n} dim: {c} dim: {h} dim: {w} }} }} }}
layer {{ name: 'bn' type: 'BatchNorm' bottom: 'data' top: 'y' }}
layer {{ name: 'sc' type: 'Scale' bottom: 'y' top: 'y' scale_param {{ bias_term: {bias} filler {{ type: 'gaussian' }}
  bias_filler {{ type: 'gaussian' }} }} }}
layer {{ name: 'relu' type: 'ReLU' bottom: 'y' top: 'y' relu_param {{ negative_slope: {slope} }} }}
"""


def _layers(n=2, c=5, h=7, w=3, bias="true", slope=0.0, factor=3.7, seed=0):
    net = Net(read_net(CHAIN.format(n=n, c=c, h=h, w=w, bias=bias, slope=slope)), TEST)
    g = torch.Generator().manual_seed(seed)
    bn, sc, relu = net.layers[1], net.layers[2], net.layers[3]
    with torch.no_grad():
        bn.blobs[0].copy_(torch.randn(c, generator=g) * 5)
        bn.blobs[1].copy_(torch.rand(c, generator=g) * 7 + 0.01)
        bn.blobs[2].fill_(factor)
    return net, bn, sc, relu


def _one_by_one(x, bn, sc, relu):
    with torch.no_grad():
        y = bn.forward(x)
        if sc is not None:
            y = sc.forward(y)
        return relu.forward(y) if relu is not None else y


@needs_native
@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 32, 112, 112), (1, 960, 7, 7), (3, 4, 1, 1), (2, 6)])
@pytest.mark.parametrize("links", ["bn", "bn+scale", "bn+scale+relu", "bn+relu", "bn+scale(no bias)+leaky"])
def test_one_pass_equals_the_layers_one_by_one(shape, links):
    n, c = shape[:2]
    h, w = (shape[2], shape[3]) if len(shape) == 4 else (1, 1)
    net, bn, sc, relu = _layers(n, c, h, w, bias="false" if "no bias" in links else "true",
                                slope=0.1 if "leaky" in links else 0.0)
    sc = sc if "scale" in links else None
    relu = relu if "relu" in links or "leaky" in links else None
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 4
    x[0, 0, ...] = 0.0
    want = _one_by_one(x, bn, sc, relu)
    for in_place in (False, True):
        fn = channel_chain.bn_chain(bn, sc, relu, x, in_place)
        assert fn is not None
        xin = x.clone()
        got = fn(xin)
        assert torch.equal(got, want), (links, in_place, (got - want).abs().max())
        assert (got.data_ptr() == xin.data_ptr()) == in_place


@needs_native
def test_statistics_and_scale_are_read_at_every_call_and_a_zero_factor_gives_zero_statistics():
    net, bn, sc, relu = _layers(factor=0.0)
    x = torch.randn(2, 5, 7, 3, generator=torch.Generator().manual_seed(3))
    fn = channel_chain.bn_chain(bn, sc, relu, x, False)
    want = _one_by_one(x, bn, sc, relu)
    assert torch.equal(fn(x), want)
    with torch.no_grad():
        bn.blobs[2].fill_(0.5)
        sc.blobs[0].mul_(-2)
        sc.blobs[1].add_(1)
    want2 = _one_by_one(x, bn, sc, relu)
    assert not torch.equal(want, want2)
    assert torch.equal(fn(x), want2)


@needs_native
def test_the_net_runs_the_chain_in_one_pass_with_the_recording_forwards_numbers():
    lean, bn, _, _ = _layers(2, 6, 5, 5)
    rec = Net(read_net("force_backward: true\n" + CHAIN.format(n=2, c=6, h=5, w=5, bias="true", slope=0.0)), TEST)
    rec.copy_from(lean.to_weights())
    x = torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(4))
    lean.forward({"data": x})
    rec.forward({"data": x})
    assert lean.lean.chains[1] == (2, 3)
    assert lean.lean.kernels_chain[1] is not None and lean.lean.kernels_chain[1][1] is not None
    assert torch.equal(lean.blob("y"), rec.blob("y").detach())
    assert torch.equal(lean.blob("data"), x)  # not in place: the Input's tensor is kept
    lean.forward({"data": 2 * x})  # the steady forward replays the chain
    rec.forward({"data": 2 * x})
    assert torch.equal(lean.blob("y"), rec.blob("y").detach())


def test_without_native_kernels_the_layers_run_one_by_one_with_the_same_numbers(monkeypatch):
    monkeypatch.setenv("NEOCAFFE_NATIVE", "0")
    lean, bn, sc, relu = _layers(2, 6, 5, 5)
    x = torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(4))
    assert channel_chain.bn_chain(bn, sc, relu, x, False) is None
    lean.forward({"data": x})
    assert lean.lean.kernels_chain[1][1] is None
    assert torch.equal(lean.blob("y"), _one_by_one(x, bn, sc, relu))


def test_a_compiler_that_fails_gives_none_and_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NEOCAFFE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # exits 1
    with caplog.at_level("WARNING", logger="neocaffe.layers"):
        assert native.load("never_built_test_kernel", "int f(void) { return 1; }") is None
    assert "never_built_test_kernel" in caplog.text and "failed" in caplog.text
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_caffe_sqrt_is_correctly_rounded_as_caffes():
    v = torch.from_numpy(np.random.default_rng(0).random(100_000, dtype=np.float32) * 100)
    assert np.array_equal(caffe_sqrt(v).numpy(), np.sqrt(v.numpy()))
    assert caffe_sqrt(v).dtype == torch.float32


def test_a_native_setting_it_does_not_know_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv("NEOCAFFE_NATIVE", "maybe")
    with pytest.raises(ValueError, match="NEOCAFFE_NATIVE.*received 'maybe'"):
        native.enabled()
    for v, on in (("", True), ("1", True), ("off", False), ("FALSE", False)):
        monkeypatch.setenv("NEOCAFFE_NATIVE", v)
        assert native.enabled() is on
