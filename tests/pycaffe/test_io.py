"""caffe.io: pycaffe's test_io plus Transformer, load_image, resize_image and oversample behaviour."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import caffe
from caffe.proto import caffe_pb2


# -- blob protos (pycaffe's TestBlobProtoToArray) -----------------------------------------------
def test_old_format():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(list(np.zeros((10, 10)).flatten()))
    blob.num, blob.channels, blob.height, blob.width = (1, 1, 10, 10)
    assert caffe.io.blobproto_to_array(blob).shape == (1, 1, 10, 10)


def test_new_format():
    data = np.zeros((10, 10))
    blob = caffe_pb2.BlobProto()
    blob.data.extend(list(data.flatten()))
    blob.shape.dim.extend(list(data.shape))
    assert caffe.io.blobproto_to_array(blob).shape == data.shape


def test_no_shape():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(list(np.zeros((10, 10)).flatten()))
    with pytest.raises(ValueError):
        caffe.io.blobproto_to_array(blob)


def test_scalar():
    blob = caffe_pb2.BlobProto()
    blob.data.extend([123.0])
    assert caffe.io.blobproto_to_array(blob) == 123


def test_return_diff_and_dtype():
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 3])
    blob.data.extend(range(6))
    blob.diff.extend(range(10, 16))
    data = caffe.io.blobproto_to_array(blob)
    diff = caffe.io.blobproto_to_array(blob, return_diff=True)
    assert data.dtype == np.float64
    np.testing.assert_array_equal(data, np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(diff, np.arange(10, 16).reshape(2, 3))


def test_array_to_blobproto_round_trip():
    arr = np.random.RandomState(0).rand(2, 3, 4, 5).astype(np.float32)
    diff = arr * 2
    blob = caffe.io.array_to_blobproto(arr, diff)
    assert list(blob.shape.dim) == [2, 3, 4, 5]
    assert not blob.HasField("num")
    np.testing.assert_allclose(caffe.io.blobproto_to_array(blob), arr, rtol=1e-7)
    np.testing.assert_allclose(caffe.io.blobproto_to_array(blob, return_diff=True), diff, rtol=1e-7)
    # any number of axes
    assert caffe.io.blobproto_to_array(caffe.io.array_to_blobproto(np.ones(7))).shape == (7,)


def test_blobprotovector_round_trip():
    arrays = [np.arange(6.0).reshape(1, 1, 2, 3), np.ones((2, 2))]
    s = caffe.io.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(s, bytes)
    back = caffe.io.blobprotovector_str_to_arraylist(s)
    assert [b.shape for b in back] == [(1, 1, 2, 3), (2, 2)]
    np.testing.assert_array_equal(back[0], arrays[0])
    assert caffe.io.arraylist_to_blobprotovecor_str(arrays) == s  # pycaffe's old spelling


def test_mean_binaryproto_matches_the_npy_pycaffe_made_from_it():
    from tests.conftest import shared_path

    folder = shared_path("realdata", "imagenet_mean")
    blob = caffe_pb2.BlobProto()
    blob.ParseFromString((folder / "imagenet_mean.binaryproto").read_bytes())
    mean = caffe.io.blobproto_to_array(blob)
    assert mean.shape == (1, 3, 256, 256)
    npy = np.load(folder / "ilsvrc_2012_mean.npy")
    np.testing.assert_allclose(mean[0], npy, rtol=1e-6, atol=1e-4)


# -- datums (pycaffe's TestArrayToDatum) ------------------------------------------------------
def test_label_none_size():
    d1 = caffe.io.array_to_datum(np.ones((10, 10, 3)), label=1)
    d2 = caffe.io.array_to_datum(np.ones((10, 10, 3)))
    assert len(d1.SerializeToString()) > len(d2.SerializeToString())
    assert not d2.HasField("label")


def test_uint8_datum_round_trip():
    arr = np.random.RandomState(1).randint(0, 256, (3, 4, 5)).astype(np.uint8)
    datum = caffe.io.array_to_datum(arr, label=7)
    assert datum.data == arr.tobytes() and len(datum.float_data) == 0
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 4, 5, 7)
    back = caffe.io.datum_to_array(datum)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, arr)


def test_float_datum_round_trip():
    arr = np.random.RandomState(2).rand(2, 3, 4)
    datum = caffe.io.array_to_datum(arr)
    assert not datum.data and len(datum.float_data) == arr.size
    back = caffe.io.datum_to_array(datum)
    assert back.dtype == np.float64
    np.testing.assert_allclose(back, arr, rtol=1e-7)


def test_datum_needs_three_axes():
    with pytest.raises(ValueError):
        caffe.io.array_to_datum(np.ones((2, 2)))


# -- Transformer --------------------------------------------------------------------------------
def _transformer(shape=(1, 3, 4, 5)):
    return caffe.io.Transformer({"data": shape})


def test_preprocess_order_of_operations():
    rs = np.random.RandomState(3)
    img = rs.rand(4, 5, 3).astype(np.float32)
    mean = np.array([10.0, 20.0, 30.0])
    t = _transformer()
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", mean)
    t.set_input_scale("data", 0.5)
    before = img.copy()
    out = t.preprocess("data", img)
    expected = ((img.transpose(2, 0, 1)[[2, 1, 0]] * 255) - mean[:, None, None]) * 0.5
    assert out.dtype == np.float32 and out.shape == (3, 4, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    np.testing.assert_array_equal(img, before)  # the caller's image is left alone
    np.testing.assert_allclose(t.deprocess("data", out), img, rtol=1e-5, atol=1e-6)


def test_preprocess_resizes_to_the_input():
    img = np.random.RandomState(4).rand(8, 10, 3).astype(np.float32)
    t = _transformer()
    t.set_transpose("data", (2, 0, 1))
    out = t.preprocess("data", img)
    np.testing.assert_allclose(out, caffe.io.resize_image(img, (4, 5)).transpose(2, 0, 1))


def test_elementwise_mean_and_deprocess_of_a_batch_item():
    rs = np.random.RandomState(5)
    mean = rs.rand(3, 4, 5) * 100
    t = _transformer()
    t.set_transpose("data", (2, 0, 1))
    t.set_mean("data", mean)
    img = rs.rand(4, 5, 3).astype(np.float32)
    out = t.preprocess("data", img)
    np.testing.assert_allclose(out, img.transpose(2, 0, 1) - mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t.deprocess("data", out[None]), img, atol=1e-5)


def test_mean_of_another_size_is_resized():
    mean = np.random.RandomState(6).rand(3, 8, 10) * 100 + 50
    t = _transformer()
    t.set_mean("data", mean)
    assert t.mean["data"].shape == (3, 4, 5)
    assert mean.min() - 1e-4 <= t.mean["data"].min() and t.mean["data"].max() <= mean.max() + 1e-4


def test_transformer_errors():
    t = _transformer()
    with pytest.raises(Exception, match="not one of the net inputs"):
        t.set_raw_scale("nope", 255)
    with pytest.raises(Exception, match="Transpose order"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(Exception, match="Channel swap"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="Mean channels"):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(ValueError, match="Mean shape invalid"):
        t.set_mean("data", np.zeros((1, 3, 4, 5)))
    with pytest.raises(ValueError, match="incompatible"):
        t.set_mean("data", np.zeros((2, 4, 5)))


# -- resize_image --------------------------------------------------------------------------------
_IM = ((np.arange(4 * 5 * 3).reshape(4, 5, 3) % 7).astype(np.float32) * 10 - 5)
# skimage.transform.resize(order=1) of scikit-image 0.26, through pycaffe's resize_image, channel 0
_SKIMAGE_7x3 = [
    [7.523221015930176, 41.70815658569336, 36.90739440917969],
    [8.915567398071289, 33.35407638549805, 38.299739837646484],
    [14.484952926635742, -0.06223344802856445, 43.86912536621094],
    [20.18112564086914, 0.7607283592224121, 26.612329483032227],
    [25.895410537719727, 6.475013732910156, 9.373644828796387],
    [31.609695434570312, 12.189298629760742, 15.087930679321289],
    [33.03826904296875, 13.617870330810547, 16.516502380371094],
]
_SKIMAGE_2x9 = [
    [7.739090919494629, 11.072423934936523, 27.739089965820312, 27.186092376708984, 22.328176498413086,
     21.630535125732422, 23.98870277404785, 38.570098876953125, 41.48638153076172],
    [25.594242095947266, 28.92757797241211, 45.59424591064453, 31.15390396118164, 8.936811447143555,
     25.598346710205078, 34.900184631347656, 14.76323127746582, 10.735840797424316],
]
_SKIMAGE_GRAY_3x4 = [
    [10.242027282714844, 14.5962495803833, 19.906702041625977, 25.946378707885742],
    [61.204833984375, 70.12154388427734, 79.46424865722656, 89.20768737792969],
    [138.17466735839844, 149.9129638671875, 161.97537231445312, 174.34568786621094],
]


@pytest.mark.parametrize("dims,expected", [((7, 3), _SKIMAGE_7x3), ((2, 9), _SKIMAGE_2x9)])
def test_resize_matches_scikit_image(dims, expected):
    out = caffe.io.resize_image(_IM, dims)
    assert out.shape == dims + (3,) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :, 0], np.array(expected, np.float32), rtol=2e-7, atol=1e-5)


def test_resize_gray_matches_scikit_image():
    im = (np.arange(36).reshape(6, 6, 1) ** 1.5).astype(np.float32)
    out = caffe.io.resize_image(im, (3, 4))
    np.testing.assert_allclose(out[:, :, 0], np.array(_SKIMAGE_GRAY_3x4, np.float32), rtol=2e-7, atol=1e-5)


@pytest.mark.parametrize("shape,dims", [((256, 256, 3), (227, 227)), ((10, 13, 3), (30, 17)),
                                        ((100, 80, 1), (37, 91)), ((300, 200, 3), (50, 40))])
def test_resize_matches_the_scikit_image_algorithm(shape, dims):
    """scikit-image's resize is scipy.ndimage: a Gaussian prefilter on shrinking axes, then a
    half-pixel-grid linear zoom with mirrored borders, clipped to the input range."""
    ndimage = pytest.importorskip("scipy.ndimage")
    im = np.random.RandomState(7).rand(*shape).astype(np.float32) * 200 - 30
    lo, hi = im.min(), im.max()
    std = (im - lo) / (hi - lo)
    factors = np.array(shape, float) / np.array(dims + (shape[2],), float)
    if (factors > 1).any():
        std = ndimage.gaussian_filter(std, np.maximum(0, (factors - 1) / 2), mode="mirror")
    ref = ndimage.zoom(std, 1 / factors, order=1, mode="mirror", grid_mode=True)
    ref = (np.clip(ref, 0, 1) * (hi - lo) + lo).astype(np.float32)
    np.testing.assert_allclose(caffe.io.resize_image(im, dims), ref, rtol=1e-6, atol=2e-5)


def test_resize_other_channel_counts_zoom_like_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    im = np.random.RandomState(8).rand(20, 30, 5).astype(np.float32)
    ref = ndimage.zoom(im, (13 / 20, 41 / 30, 1), order=1)
    np.testing.assert_allclose(caffe.io.resize_image(im, (13, 41)), ref, atol=1e-6)


def test_resize_constant_and_identity():
    const = np.full((5, 6, 3), 4.5, np.float32)
    out = caffe.io.resize_image(const, (9, 2))
    assert out.shape == (9, 2, 3) and (out == 4.5).all()
    im = np.random.RandomState(9).rand(6, 7, 3).astype(np.float32)
    np.testing.assert_allclose(caffe.io.resize_image(im, (6, 7)), im, rtol=1e-6, atol=1e-7)


def test_resize_nearest():
    im = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    out = caffe.io.resize_image(im, (8, 8), interp_order=0)
    np.testing.assert_array_equal(out[:, :, 0], np.repeat(np.repeat(im[:, :, 0], 2, 0), 2, 1))


# -- load_image ----------------------------------------------------------------------------------
def test_load_image_rgb_gray_alpha_16bit(tmp_path):
    rs = np.random.RandomState(10)
    rgb = rs.randint(0, 256, (6, 7, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    img = caffe.io.load_image(str(tmp_path / "rgb.png"))
    assert img.dtype == np.float32 and img.shape == (6, 7, 3)
    np.testing.assert_allclose(img, rgb / 255.0, rtol=1e-6)
    gray_of_rgb = caffe.io.load_image(str(tmp_path / "rgb.png"), color=False)
    assert gray_of_rgb.shape == (6, 7, 1)
    np.testing.assert_allclose(gray_of_rgb[:, :, 0], (rgb / 255.0) @ [0.2125, 0.7154, 0.0721], rtol=1e-6)

    gray = rgb[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    tiled = caffe.io.load_image(str(tmp_path / "gray.png"))
    assert tiled.shape == (6, 7, 3)
    np.testing.assert_allclose(tiled, np.repeat(gray[:, :, None] / 255.0, 3, 2), rtol=1e-6)
    one = caffe.io.load_image(str(tmp_path / "gray.png"), color=False)
    assert one.shape == (6, 7, 1)

    rgba = np.concatenate([rgb, rs.randint(0, 256, (6, 7, 1)).astype(np.uint8)], 2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "rgba.png")), rgb / 255.0, rtol=1e-6)
    a = rgba[:, :, 3:] / 255.0
    blended = (1 - a) + a * rgb / 255.0  # alpha over white, then skimage's rgb2gray
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "rgba.png"), color=False)[:, :, 0],
                               blended @ [0.2125, 0.7154, 0.0721], rtol=1e-5)

    g16 = rs.randint(0, 65536, (6, 7)).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "g16.png"), color=False)[:, :, 0],
                               g16 / 65535.0, rtol=1e-6)


# -- oversample ----------------------------------------------------------------------------------
def test_oversample_ten_crops():
    ims = np.random.RandomState(11).rand(2, 10, 12, 3).astype(np.float32)
    crops = caffe.io.oversample(ims, (6, 8))
    assert crops.shape == (20, 6, 8, 3) and crops.dtype == np.float32
    im = ims[1]
    expected = [im[0:6, 0:8], im[0:6, 4:12], im[4:10, 0:8], im[4:10, 4:12], im[2:8, 2:10]]
    for k, e in enumerate(expected):
        np.testing.assert_array_equal(crops[10 + k], e)
        np.testing.assert_array_equal(crops[15 + k], e[:, ::-1])


def test_oversample_odd_centre_truncates():
    im = np.arange(7 * 7, dtype=np.float32).reshape(1, 7, 7, 1)
    crops = caffe.io.oversample(im, (4, 4))
    # centre 3.5 - 2 = 1.5 -> 1 (pycaffe's int cast)
    np.testing.assert_array_equal(crops[4], im[0, 1:5, 1:5])
