"""C3D-v1.0's DownSampling (down_sampling_layer.cpp @ 71336a2) against a loop-by-loop port of the fork's VOTE,
its V1 prototxt through the upgrade into a net, and its errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TEST
from neocaffe.layers.c3d_downsampling import DownSampling
from neocaffe.proto import caffe_pb2

f32 = np.float32


def fork_vote(x: np.ndarray, s: int, t: int) -> np.ndarray:
    """Forward_cpu's VOTE, loop by loop (float32); the counters sized as the fork's, out-of-array votes dropped."""
    n, c, length, h, w = x.shape
    lo, hi = f32(x.min()), f32(x.max())
    counters = math.trunc(float(hi)) - math.trunc(float(lo)) + 1
    top = np.zeros((n, c, length // t, h // s, w // s), f32)
    for i, j, l, y, z in np.ndindex(*top.shape):
        votes = [0] * counters
        for l0 in range(t):
            for y0 in range(s):
                for z0 in range(s):
                    k = math.trunc(float(f32(x[i, j, l * t + l0, y * s + y0, z * s + z0] - lo)))
                    if k < counters:
                        votes[k] += 1
        best = 0
        for k in range(1, counters):
            if votes[k] > votes[best]:
                best = k
        top[i, j, l, y, z] = f32(f32(best) + lo)
    return top


def layer(extra: str = "spatial_factor: 2 temporal_factor: 2", shape=(1, 1, 4, 4, 4)) -> DownSampling:
    lp = text_format.Parse(f'name: "ds" type: "DownSampling" bottom: "x" top: "y" down_sampling_param {{ {extra} }}',
                           caffe_pb2.LayerParameter())
    return DownSampling(lp, [shape], TEST)


@pytest.mark.parametrize("s, t, shape, low, high", [
    (2, 2, (2, 3, 4, 6, 6), 0, 5),          # whole blocks
    (3, 2, (1, 2, 5, 7, 8), -3, 3),         # trailing frames and pixels not read; negative labels
    (2, 3, (1, 1, 6, 4, 4), 0, 2),          # many ties: the smallest label wins
    (4, 2, (1, 1, 2, 8, 8), 10, 12),        # a minimum far from 0
])
def test_vote_matches_the_forks_loops(s, t, shape, low, high):
    x = np.random.default_rng(s * 10 + t).integers(low, high, shape).astype(f32)
    ds = layer(f"spatial_factor: {s} temporal_factor: {t}", shape)
    got = ds(torch.from_numpy(x))
    assert tuple(got.shape) == ds.reshape([shape])[0]
    np.testing.assert_array_equal(got.numpy(), fork_vote(x, s, t))


def test_non_integer_values_follow_the_forks_counters():
    """int(v - lo) on non-integers; with lo = -0.5 the fork has int(hi) - int(lo) + 1 counters, fewer than the
    indices: the votes past them are dropped, as its scan never reads them."""
    x = np.array([-0.5, 0.7, 0.7, 0.7, 0.2, 0.25, 0.3, 0.3], f32).reshape(1, 1, 2, 2, 2)
    got = layer(shape=x.shape)(torch.from_numpy(x))
    np.testing.assert_array_equal(got.numpy(), fork_vote(x, 2, 2))
    assert float(got) == -0.5  # counter 0 (-0.5, 0.2, 0.25, 0.3, 0.3 all truncate to 0) beats the dropped 0.7s


def test_no_diff_and_five_axes():
    x = torch.tensor(np.random.default_rng(3).integers(0, 3, (2, 3, 4, 4, 4)).astype(np.float32), requires_grad=True)
    assert not layer(shape=tuple(x.shape))(x).requires_grad  # the fork's Backward is empty
    with pytest.raises(Exception, match=r"5 axes .*received shape \(2, 3, 4, 4\)"):
        layer(shape=(2, 3, 4, 4))
    with pytest.raises(Exception, match="smaller than one block"):
        layer(shape=(2, 3, 1, 4, 4))


def test_v1_prototxt_runs_in_a_net():
    text = """
name: "v2v_labels"
input: "label" input_shape { dim: 2 dim: 1 dim: 8 dim: 8 dim: 8 }
layers { name: "ds" type: DOWN_SAMPLING bottom: "label" top: "label_ds"
         down_sampling_param { type: VOTE spatial_factor: 4 temporal_factor: 2 } }
"""
    net = Net(read_net(text))
    x = np.random.default_rng(5).integers(0, 6, (2, 1, 8, 8, 8)).astype(f32)
    with torch.no_grad():
        net.forward({"label": torch.from_numpy(x)})
    np.testing.assert_array_equal(net.blob_data["label_ds"].numpy(), fork_vote(x, 4, 2))


@pytest.mark.parametrize("extra, match", [
    ("spatial_factor: 1 temporal_factor: 2", r"spatial_factor must be > 1 .*received 1"),
    ("spatial_factor: 2", r"temporal_factor must be > 1 .*received 0"),
    ("type: AVERAGE spatial_factor: 2 temporal_factor: 2", "AVERAGE.*computes only VOTE"),
    ("type: NONE spatial_factor: 2 temporal_factor: 2", "NONE"),
])
def test_bad_parameters_are_named(extra, match):
    with pytest.raises(Exception, match=match) as e:
        layer(extra)
    assert "'ds'" in str(e.value)
