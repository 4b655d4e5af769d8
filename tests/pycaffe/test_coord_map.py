"""caffe.coord_map: BVLC pycaffe's python/caffe/test/test_coord_map.py assertions, plus the Crop that
``crop()`` writes built into a Net (its output takes the reference blob's spatial shape)."""
from __future__ import annotations

import random

import numpy as np
import pytest

import caffe
from caffe import layers as L
from caffe import params as P
from caffe.coord_map import (AxisMismatchException, UndefinedMapException, compose, coord_map,
                             coord_map_from_to, crop, inverse)


def coord_net_spec(ks=3, stride=1, pad=0, pool=2, dstride=2, dpad=0):
    """BVLC's conv-pool-deconv net spec."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 100, 100]))
    n.aux = L.Input(shape=dict(dim=[2, 1, 20, 20]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=ks, stride=stride, pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool, pad=0)
    deconv_ks = [s * 2 for s in dstride] if isinstance(dstride, list) else dstride * 2
    n.deconv = L.Deconvolution(n.pool, num_output=10, kernel_size=deconv_ks, stride=dstride, pad=dpad)
    return n


def test_conv_pool_deconv():
    n = coord_net_spec()
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert (ax, a, b) == (1, 1, 0)
    n = coord_net_spec(pool=4, dstride=4)
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert (ax, a, b) == (1, 1, -1)


def test_pass():
    n = coord_net_spec()
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    n.relu = L.ReLU(n.deconv)
    n.conv1x1 = L.Convolution(n.relu, num_output=10, kernel_size=1, stride=1, pad=0)
    for top in [n.relu, n.conv1x1]:
        assert coord_map_from_to(top, n.data) == (ax, a, b)


@pytest.mark.parametrize("pad", [0, 1, 3, random.Random(0).randint(0, 10)])
def test_padding(pad):
    n = coord_net_spec()
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    n = coord_net_spec(pad=pad)
    _, a_pad, b_pad = coord_map_from_to(n.deconv, n.data)
    assert a == a_pad and b - pad == b_pad
    n = coord_net_spec(dpad=pad)
    _, a_pad, b_pad = coord_map_from_to(n.deconv, n.data)
    assert a == a_pad and b + pad == b_pad
    n = coord_net_spec(pad=pad, dpad=pad)
    _, a_pad, b_pad = coord_map_from_to(n.deconv, n.data)
    assert a == a_pad and b == b_pad


def test_multi_conv():
    n = coord_net_spec()
    n.conv_data, n.conv_aux = L.Convolution(n.data, n.aux, ntop=2, num_output=10, kernel_size=5,
                                            stride=2, pad=0)
    assert coord_map_from_to(n.conv_data, n.data) == coord_map_from_to(n.conv_aux, n.aux)


def test_rect():
    n3x3 = coord_net_spec(ks=3, stride=1, pad=0)
    n5x5 = coord_net_spec(ks=5, stride=2, pad=10)
    n3x5 = coord_net_spec(ks=[3, 5], stride=[1, 2], pad=[0, 10])
    ax_3x3, a_3x3, b_3x3 = coord_map_from_to(n3x3.deconv, n3x3.data)
    ax_5x5, a_5x5, b_5x5 = coord_map_from_to(n5x5.deconv, n5x5.data)
    ax_3x5, a_3x5, b_3x5 = coord_map_from_to(n3x5.deconv, n3x5.data)
    assert ax_3x3 == ax_5x5 == ax_3x5
    assert a_3x3 == a_3x5[0] and b_3x3 == b_3x5[0]
    assert a_5x5 == a_3x5[1] and b_5x5 == b_3x5[1]


def test_nd_conv():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 100, 100, 100]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=[3, 3, 3], stride=[1, 1, 1], pad=[0, 1, 2])
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2, pad=0)
    n.deconv = L.Deconvolution(n.pool, num_output=10, kernel_size=4, stride=2, pad=0)
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert ax == 1 and len(a) == len(b) and np.all(a == 1)
    assert b[0] - 1 == b[1] and b[1] - 1 == b[2]


@pytest.mark.parametrize("offset", [0, 4, random.Random(1).randint(0, 10)])
def test_crop_of_crop(offset):
    n = coord_net_spec()
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    n.crop = L.Crop(n.deconv, n.data, axis=2, offset=offset)
    ax_crop, a_crop, b_crop = coord_map_from_to(n.crop, n.data)
    assert ax == ax_crop and a == a_crop and b + offset == b_crop


def test_crop_helper_writes_a_crop_that_builds(tmp_path):
    """BVLC only calls crop(); here the Crop it writes runs in a Net and aligns the blobs."""
    n = coord_net_spec(ks=1, pool=4, dstride=4)  # 100 -> 25 -> 104: offset 2 per axis
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    n.score = crop(n.deconv, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and list(layer.bottom) == ["deconv", "data"]
    assert layer.crop_param.axis == ax + 1 == 2
    assert list(layer.crop_param.offset) == [int(-v) for v in np.atleast_1d(b)] == [2]
    path = tmp_path / "net.prototxt"
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    net.forward()
    assert net.blobs["score"].data.shape[2:] == net.blobs["data"].data.shape[2:]
    np.testing.assert_array_equal(net.blobs["score"].data, net.blobs["deconv"].data[:, :, 2:102, 2:102])


def test_catch_unconnected():
    n = coord_net_spec()
    n.ip = L.InnerProduct(n.deconv, num_output=10)
    with pytest.raises(RuntimeError):
        coord_map_from_to(n.ip, n.data)


def test_catch_scale_mismatch():
    n = coord_net_spec(pool=3, dstride=2)
    with pytest.raises(AssertionError):
        crop(n.deconv, n.data)


def test_catch_negative_crop():
    n = coord_net_spec(dpad=10)
    with pytest.raises(AssertionError):
        crop(n.deconv, n.data)


def test_map_helpers():
    """compose/inverse/coord_map as BVLC defines them; the errors it raises."""
    assert compose((None, 1, 0), (2, 0.5, 1)) == (2, 0.5, 1)
    assert compose((1, 2, 3), (None, 1, 0)) == (1, 2, 3)
    assert compose((1, 2, 3), (1, 0.5, 1)) == (1, 1.0, 5)
    assert inverse((1, 2, 4)) == (1, 0.5, -2)
    with pytest.raises(AxisMismatchException):
        compose((1, 1, 0), (2, 1, 0))
    n = coord_net_spec()
    with pytest.raises(UndefinedMapException):
        coord_map(L.InnerProduct(n.deconv, num_output=1).fn)
    dil = L.Convolution(n.data, num_output=1, kernel_size=3, dilation=2, pad=2).fn
    ax, a, b = coord_map(dil)  # extent 5, pad 2: no shift
    assert ax == 1 and a == 1 and b == 0
    legacy = L.Convolution(n.data, num_output=1, kernel_h=3, kernel_w=3).fn
    with pytest.raises(AssertionError, match="legacy"):
        coord_map(legacy)
