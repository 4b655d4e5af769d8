"""SSD's noise_param (im_transforms.cpp ApplyNoise): each operation against the OpenCV calls the fork makes,
in its order; prob not read; salt-and-pepper counts, values and seeds; the Lab image read as bytes; the
transform of AnnotatedData/VideoData applying it between resize and crop."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from neocaffe.data import annotated as an
from neocaffe.data.annotated_batches import AnnotatedTransform
from neocaffe.data.datum import DatumError
from neocaffe.data.noise import apply_noise, as_fork_reads
from neocaffe.proto import caffe_pb2


def noise(text: str) -> caffe_pb2.NoiseParameter:
    return text_format.Parse(text, caffe_pb2.NoiseParameter())


def image(seed: int = 0, h: int = 24, w: int = 32, c: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)


def ycrcb_y(img: np.ndarray, f) -> np.ndarray:
    ycc = cv2.cvtColor(img, cv2.COLOR_BGR2YCrCb)
    planes = list(cv2.split(ycc))
    planes[0] = f(planes[0])
    return cv2.cvtColor(cv2.merge(planes), cv2.COLOR_YCrCb2BGR)


@pytest.mark.parametrize("field", ["decolorize", "gauss_blur", "hist_eq", "clahe", "jpeg", "erode", "posterize",
                                   "inverse", "convert_to_hsv", "convert_to_lab"])
def test_each_operation_is_the_forks_opencv_call(field):
    img = image(1)
    p = noise("jpeg: 40" if field == "jpeg" else f"{field}: true")
    got = apply_noise(img, p, np.random.default_rng(0))
    clahe = cv2.createCLAHE()
    clahe.setClipLimit(4)
    want = {
        "decolorize": lambda: cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR),
        "gauss_blur": lambda: cv2.GaussianBlur(img, (7, 7), 1.5),
        "hist_eq": lambda: ycrcb_y(img, cv2.equalizeHist),
        "clahe": lambda: ycrcb_y(img, clahe.apply),
        "jpeg": lambda: cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 40])[1], cv2.IMREAD_COLOR),
        "erode": lambda: cv2.erode(img, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3), (1, 1))),
        "posterize": lambda: (img // 64 * 64 + 32).astype(np.uint8),
        "inverse": lambda: 255 - img,
        "convert_to_hsv": lambda: cv2.cvtColor(img, cv2.COLOR_BGR2HSV),
        "convert_to_lab": lambda: cv2.cvtColor(img.astype(np.float32) / 255, cv2.COLOR_BGR2Lab),
    }[field]()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 if field == "convert_to_lab" else 0)
    assert got.dtype == (np.float32 if field == "convert_to_lab" else np.uint8)
    np.testing.assert_array_equal(img, image(1))  # the input is not written


def test_the_forks_order_and_prob_not_read():
    img = image(2)
    got = apply_noise(img, noise("prob: 0 inverse: true posterize: true decolorize: true"), np.random.default_rng(0))
    gray = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    np.testing.assert_array_equal(got, 255 - (gray // 64 * 64 + 32))  # decolorize, posterize, then inverse
    one = image(3, c=1)
    np.testing.assert_array_equal(apply_noise(one, noise("hist_eq: true"), None), cv2.equalizeHist(one))
    with pytest.raises(DatumError, match="decolorize needs 3-channel"):
        apply_noise(one, noise("decolorize: true"), None)


def test_salt_and_pepper():
    img = np.full((20, 30, 3), 100, np.uint8)
    p = noise("saltpepper: true saltpepper_param { fraction: 0.1 value: 0 value: 255 value: 7 }")
    got = apply_noise(img, p, np.random.default_rng(5))
    changed = (got != 100).any(-1)
    assert 0 < changed.sum() <= 60  # floor(0.1 * 30 * 20) positions, repeats allowed
    np.testing.assert_array_equal(got[changed], np.tile([0, 255, 7], (changed.sum(), 1)))
    np.testing.assert_array_equal(got, apply_noise(img, p, np.random.default_rng(5)))  # seeded: the same
    one = apply_noise(img[:, :, 0].copy(), noise("saltpepper: true saltpepper_param { fraction: 0.5 value: 9 }"),
                      np.random.default_rng(1))
    assert set(np.unique(one)) == {9, 100}
    same = apply_noise(img, noise("saltpepper: true saltpepper_param { fraction: 0.5 value: 3 }"), np.random.default_rng(1))
    assert ((same == 3).all(-1) | (same == 100).all(-1)).all()  # one value for every channel
    with pytest.raises(DatumError, match="needs saltpepper_param.value"):
        apply_noise(img, noise("saltpepper: true saltpepper_param { fraction: 0.5 }"), np.random.default_rng(1))
    with pytest.raises(DatumError, match="Specify either 1 value or as many as channels: 3"):
        apply_noise(img, noise("saltpepper: true saltpepper_param { fraction: 0.5 value: 1 value: 2 }"), None)


def test_a_lab_crop_is_read_as_the_fork_reads_its_bytes():
    lab = cv2.cvtColor(image(4).astype(np.float32) / 255, cv2.COLOR_BGR2Lab)
    crop = lab[3:13, 5:25]
    got = as_fork_reads(crop)
    raw = np.ascontiguousarray(crop).tobytes()
    row = 20 * 3 * 4
    for h in (0, 9):
        np.testing.assert_array_equal(got[h].reshape(-1), np.frombuffer(raw[h * row: h * row + 60], np.uint8))
    u8 = image(5)
    assert as_fork_reads(u8) is u8


def test_the_transform_applies_it_between_resize_and_crop():
    tp = text_format.Parse('resize_param { prob: 1 resize_mode: WARP height: 16 width: 20 interp_mode: NEAREST } '
                           'crop_size: 8 noise_param { inverse: true }', caffe_pb2.TransformationParameter())
    img = image(6, 40, 50)
    chw, _ = AnnotatedTransform(tp, 1, None)(img, an.Boxes.empty(), np.random.default_rng(0))  # TEST: centre crop
    resized = cv2.resize(img, (20, 16), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(chw, (255 - resized[4:12, 6:14]).transpose(2, 0, 1).astype(np.float32))


# -- the pixel stage of Data and ImageData (neocaffe.data.pixels) ---------------------------------------------
def _data_net(text: str):
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net
    from neocaffe.layers.base import BuildContext

    return Net(read_net(text), 1, source="<test>", context=BuildContext(data_workers=0))


def test_image_data_resizes_and_noises_as_ssds_transformer(tmp_path):
    imgs = [image(10 + i, 30, 44) for i in range(2)]
    for i, im in enumerate(imgs):
        cv2.imwrite(str(tmp_path / f"i{i}.png"), im)
    (tmp_path / "list.txt").write_text("i0.png 0\ni1.png 1\n")
    net = _data_net(f'layer {{ name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ '
                    f'source: "{tmp_path / "list.txt"}" root_folder: "{tmp_path}/" batch_size: 2 }} transform_param {{ '
                    'resize_param { prob: 1 resize_mode: WARP height: 16 width: 12 interp_mode: AREA } '
                    'noise_param { inverse: true } } }')
    net.forward()
    got = net.blob("data").numpy()
    assert got.shape == (2, 3, 16, 12)
    for i, im in enumerate(imgs):
        want = 255 - cv2.resize(im, (12, 16), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(got[i], want.transpose(2, 0, 1).astype(np.float32))


def test_data_applies_it_to_encoded_datums_only(tmp_path):
    from neocaffe.data.datum import array_to_datum, encode_array_to_datum
    from neocaffe.data.db_writer import DBWriter

    im = image(20, 30, 40)
    chw = im.transpose(2, 0, 1)
    for kind, datum in (("encoded", encode_array_to_datum(chw, 3)), ("raw", array_to_datum(chw, 3))):
        with DBWriter(str(tmp_path / kind), "lmdb") as db:
            db.put("0", datum.SerializeToString())
        net = _data_net(f'layer {{ name: "d" type: "Data" top: "data" top: "label" data_param {{ source: '
                        f'"{tmp_path / kind}" backend: LMDB batch_size: 1 }} transform_param {{ resize_param {{ '
                        'prob: 1 resize_mode: FIT_SMALL_SIZE height: 15 width: 15 } } }')
        net.forward()
        got = net.blob("data").numpy()[0]
        if kind == "raw":  # the fork's raw-Datum path has no resize
            np.testing.assert_array_equal(got, chw.astype(np.float32))
        else:  # InferNewSize: the smaller side to 15, the other by the aspect (40/30 * 15 = 20)
            assert got.shape == (3, 15, 20)
            np.testing.assert_array_equal(got, cv2.resize(im, (20, 15)).transpose(2, 0, 1).astype(np.float32))


def test_lab_in_a_plain_data_layer_is_refused(tmp_path):
    from neocaffe.graph.errors import NetError

    (tmp_path / "list.txt").write_text("x.png 0\n")
    with pytest.raises(NetError, match="layer 'd' .ImageData.: .*convert_to_lab is reproduced by AnnotatedData and VideoData only"):
        _data_net(f'layer {{ name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ '
                  f'source: "{tmp_path / "list.txt"}" batch_size: 1 }} transform_param {{ '
                  'noise_param { convert_to_lab: true } } }')


def test_ssds_rectangular_crop_in_image_data(tmp_path):
    im = image(30, 30, 44)
    cv2.imwrite(str(tmp_path / "i.png"), im)
    (tmp_path / "list.txt").write_text("i.png 0\n")
    layer = (f'layer {{ name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ '
             f'source: "{tmp_path / "list.txt"}" root_folder: "{tmp_path}/" batch_size: 1 }} transform_param {{ %s }} }}')
    net = _data_net(layer % "crop_h: 10 crop_w: 14")
    net.forward()
    got = net.blob("data").numpy()[0]
    np.testing.assert_array_equal(got, im[10:20, 15:29].transpose(2, 0, 1).astype(np.float32))  # TEST: centred
    from neocaffe.graph.errors import NetError

    with pytest.raises(NetError, match="crop_h and crop_w must be set together; received crop_h 10, crop_w 0"):
        _data_net(layer % "crop_h: 10")
    with pytest.raises(NetError, match=r"crop 40x14 \(crop_h x crop_w\) is larger than the image \(3x30x44\)"):
        _data_net(layer % "crop_h: 40 crop_w: 14")
