"""MAX pooling in one native pass (layers.pool_kernel): the Pooling layer's forward bit for bit over
Caffe's geometries (pad, ceil and floor rounding, windows past the input, global), with -inf and NaN
inputs; the layer keeps the faster of it and PyTorch's pooling (the same numbers)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers import pool_kernel
from neocaffe.layers.fastest import fastest
from neocaffe.layers.base import TEST

needs_native = pytest.mark.skipif(pool_kernel._function() is None, reason="no C compiler for native kernels")

GEOMETRIES = [
    "kernel_size: 2 stride: 2",
    "kernel_size: 3 stride: 2",
    "kernel_size: 3 stride: 2 pad: 1",
    "kernel_size: 3 stride: 1 pad: 2",
    "kernel_size: 2 stride: 3",  # a last window starting beyond the input: -FLT_MAX
    "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0",
    "kernel_size: 3 stride: 2 round_mode: FLOOR",
    "global_pooling: true",
]


def _layer(geometry: str, shape):
    text = (f"name: 'p' layer {{ name: 'data' type: 'Input' top: 'data' input_param {{ shape {{ "
            + " ".join(f"dim: {d}" for d in shape)
            + f" }} }} }} layer {{ name: 'pool' type: 'Pooling' bottom: 'data' top: 'y' "
              f"pooling_param {{ pool: MAX {geometry} }} }}")
    return Net(read_net(text), TEST)


def _inputs(shape, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    x.view(-1)[::7] = -math.inf
    x[0, 0] = -math.inf  # a whole plane of -inf: -FLT_MAX everywhere, as Caffe
    return x


@needs_native
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("shape", [(2, 3, 9, 9), (1, 4, 8, 11), (1, 20, 24, 24)])
def test_native_max_pool_equals_the_layers_forward(geometry, shape):
    net = _layer(geometry, shape)
    layer = net.layers[1]
    x = _inputs(shape, 0)
    with torch.no_grad():
        want = layer.forward(x)
    k, out = layer.window(tuple(x.shape))
    fn = pool_kernel.max_pool(x, k, layer.stride, layer.pad, out)
    assert fn is not None
    got = fn(x)
    assert got.shape == want.shape and torch.equal(got, want), geometry
    assert torch.equal(fn(x.contiguous(memory_format=torch.channels_last)), want)  # another layout, same numbers
    assert torch.equal(layer.lean_kernel([x])(x), want)  # whichever kernel the layer keeps


@needs_native
def test_a_nan_wins_its_window_as_in_the_layers_forward():
    net = _layer("kernel_size: 3 stride: 2", (1, 2, 7, 7))
    x = _inputs((1, 2, 7, 7), 1)
    x[0, 1, 2, 3] = math.nan
    with torch.no_grad():
        want = net.layers[1].forward(x)
    got = pool_kernel.max_pool(x, (3, 3), (2, 2), (0, 0), (3, 3))(x)
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(got).sum() == 2  # windows (0, 1), (1, 1)
    assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0))


def test_the_faster_kernel_is_kept_and_an_earlier_one_wins_a_tie():
    now = [0.0]

    def kernel(cost):
        def run(x):
            now[0] += cost
            return x
        return run

    slow, fast, also_fast = kernel(3.0), kernel(1.0), kernel(1.0)
    x = torch.zeros(1)
    assert fastest([slow, fast], x, clock=lambda: now[0]) is fast
    assert fastest([fast, also_fast], x, clock=lambda: now[0]) is fast
    assert fastest([slow], x) is slow


def test_without_native_kernels_the_lean_path_still_equals_the_forward(monkeypatch):
    monkeypatch.setenv("NEOCAFFE_NATIVE", "0")
    net = _layer("kernel_size: 3 stride: 2", (2, 3, 9, 9))
    x = _inputs((2, 3, 9, 9), 3)
    fn = net.layers[1].lean_kernel([x])
    assert fn is None or not fn.__qualname__.startswith("max_pool")
    with torch.no_grad():
        want = net.layers[1].forward(x)
    net.forward({"data": x})
    assert torch.equal(net.blob("y"), want)
    assert np.isfinite(net.blob("y").numpy()).all()
