"""DataTransformer: Caffe's crop / mirror / mean / scale in its float32 order, host crop + device op."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.data.datum import DatumError
from neocaffe.data.transformer import DataTransformer, load_mean_file, mean_crops, transform_batch
from neocaffe.io.binaryproto import write_blobproto
from neocaffe.proto import caffe_pb2
from tests.conftest import shared_path

TRAIN, TEST = 0, 1
G = np.random.default_rng(3)


def _tp(text: str) -> caffe_pb2.TransformationParameter:
    return text_format.Parse(text, caffe_pb2.TransformationParameter())


def _items(n=4, c=3, h=10, w=12):
    return [G.integers(0, 256, (c, h, w), dtype=np.uint8) for _ in range(n)]


def _mean_file(tmp_path, shape=(3, 10, 12)):
    mean = (G.random(shape) * 255).astype(np.float32)
    path = str(tmp_path / "mean.binaryproto")
    write_blobproto(path, mean[None], legacy=True)
    return path, mean


def _reference(items, tr, offsets, mirror, mean=None, mean_values=None):
    """Caffe's loops in NumPy float32: (x - m) * s with m at each pixel's source position, then the
    item mirrored."""
    out = []
    crop = tr.crop_size
    s = np.float32(tr.scale)
    for x, (h0, w0), f in zip(items, offsets, mirror):
        c, h, w = x.shape
        oh, ow = (crop, crop) if crop else (h, w)
        xc = x[:, h0 : h0 + oh, w0 : w0 + ow].astype(np.float32)
        if mean is not None:
            m = mean[:, h0 : h0 + oh, w0 : w0 + ow]
        elif mean_values is not None:
            m = np.broadcast_to(np.resize(mean_values, c).astype(np.float32)[:, None, None], xc.shape)
        else:
            m = np.zeros_like(xc)
        y = (xc - m) * s
        if f:
            y = y[:, :, ::-1]
        out.append(y)
    return np.stack(out).astype(np.float32)


def test_center_crop_mean_file_scale(tmp_path):
    path, mean = _mean_file(tmp_path)
    tr = DataTransformer(_tp(f'crop_size: 6 mean_file: "{path}" scale: 0.37'), TEST)
    items = _items()
    out = tr.transform(items).numpy()
    offs = [((10 - 6) // 2, (12 - 6) // 2)] * 4
    np.testing.assert_array_equal(out, _reference(items, tr, offs, [False] * 4, mean=mean))


@pytest.mark.parametrize("values", [[104.0], [104.0, 117.0, 123.0]])
def test_mean_values(values):
    tp = _tp(" ".join(f"mean_value: {v}" for v in values) + " scale: 0.5")
    tr = DataTransformer(tp, TEST)
    items = _items()
    np.testing.assert_array_equal(
        tr.transform(items).numpy(), _reference(items, tr, [(0, 0)] * 4, [False] * 4, mean_values=np.float32(values))
    )


def test_train_random_crop_and_mirror(tmp_path):
    path, mean = _mean_file(tmp_path)
    tr = DataTransformer(_tp(f'crop_size: 5 mirror: true mean_file: "{path}" scale: 2'), TRAIN)
    items = _items(16)
    hb = tr.crop_batch(items, list(range(16)), np.random.default_rng(11))
    assert hb.mirror.any() and not hb.mirror.all() and len({tuple(o) for o in hb.offsets}) > 1
    assert (hb.offsets[:, 0] <= 5).all() and (hb.offsets[:, 1] <= 7).all()
    out = tr.apply(hb).numpy()
    ref = _reference(items, tr, hb.offsets, hb.mirror, mean=mean)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(hb.labels, np.arange(16, dtype=np.float32))


def test_seeded_draws_repeat():
    tr = DataTransformer(_tp("crop_size: 4 mirror: true"), TRAIN)
    a = tr.draw(8, 10, 12, np.random.default_rng([1, 2]))
    b = tr.draw(8, 10, 12, np.random.default_rng([1, 2]))
    c = tr.draw(8, 10, 12, np.random.default_rng([1, 3]))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    test = DataTransformer(_tp("crop_size: 4"), TEST)
    assert not test.needs_rand and (test.draw(2, 10, 12, None)[0] == [[3, 4]]).all()


def test_mirror_in_test_phase_is_random_too():
    tr = DataTransformer(_tp("mirror: true"), TEST)
    assert tr.needs_rand
    flips = tr.draw(64, 4, 4, np.random.default_rng(0))[1]
    assert flips.any() and not flips.all()


def test_float_items_and_no_transform():
    tr = DataTransformer(_tp(""), TEST)
    items = [G.standard_normal((2, 3, 4)).astype(np.float32) for _ in range(2)]
    np.testing.assert_array_equal(tr.transform(items).numpy(), np.stack(items))


def test_errors(tmp_path):
    path, _ = _mean_file(tmp_path)
    with pytest.raises(DatumError, match="crop_size 11 is larger than the image \\(3x10x12\\)"):
        DataTransformer(_tp("crop_size: 11"), TEST).transform(_items(1))
    with pytest.raises(DatumError, match="mean_file .* is 3x10x12 but the image is 3x8x8"):
        DataTransformer(_tp(f'mean_file: "{path}"'), TEST).transform(_items(1, 3, 8, 8))
    with pytest.raises(DatumError, match="mean_file and mean_value"):
        DataTransformer(_tp(f'mean_file: "{path}" mean_value: 1'), TEST)
    with pytest.raises(DatumError, match="either 1 mean_value or as many as channels"):
        DataTransformer(_tp("mean_value: 1 mean_value: 2"), TEST).transform(_items(1))
    with pytest.raises(DatumError, match="not found"):
        DataTransformer(_tp('mean_file: "nope.binaryproto"'), TEST)
    with pytest.raises(DatumError, match="same size"):
        DataTransformer(_tp(""), TEST).transform([_items(1)[0], _items(1, 3, 9, 12)[0]])


def test_transform_batch_uniform_and_gathered_mean_agree():
    mean = torch.rand(3, 10, 12) * 255
    x = torch.randint(0, 256, (3, 3, 4, 4), dtype=torch.uint8)
    same = torch.tensor([[2, 3]] * 3)
    a = transform_batch(x, same, None, mean=mean, scale=0.5)
    b = transform_batch(x, torch.tensor([[2, 3], [2, 3], [2, 4]]), None, mean=mean, scale=0.5)
    torch.testing.assert_close(a[:2], b[:2], rtol=0, atol=0)


def test_mean_crops_gather_every_items_crop_in_one_go(tmp_path):
    """The device path's single gather gives, bit for bit, the per-item subtraction and Caffe's loops."""
    path, mean = _mean_file(tmp_path)
    tr = DataTransformer(_tp(f'crop_size: 5 mirror: true mean_file: "{path}" scale: 0.37'), TRAIN)
    items = _items(32)
    hb = tr.crop_batch(items, [0] * 32, np.random.default_rng(5))
    assert hb.mirror.any() and not hb.mirror.all()
    crops = mean_crops(torch.from_numpy(mean), torch.as_tensor(hb.offsets), torch.as_tensor(hb.mirror), 5, 5)
    assert crops.shape == (32, 3, 5, 5)
    gathered = (torch.from_numpy(hb.data).to(torch.float32) - crops) * np.float32(tr.scale)
    np.testing.assert_array_equal(gathered.numpy(), tr.apply(hb).numpy())
    np.testing.assert_array_equal(gathered.numpy(), _reference(items, tr, hb.offsets, hb.mirror, mean=mean))


def test_flipped_mean_is_made_once_at_construction(tmp_path):
    path, mean = _mean_file(tmp_path)
    tr = DataTransformer(_tp(f'mirror: true mean_file: "{path}"'), TRAIN)
    flipped = tr.mean_flipped_tensor()
    assert flipped is tr.mean_flipped_tensor() and flipped.is_contiguous()
    np.testing.assert_array_equal(flipped.numpy(), mean[:, :, ::-1])
    assert DataTransformer(_tp(f'mean_file: "{path}"'), TRAIN).mean_flipped_tensor() is None  # no mirror: none


def test_real_caffe_mean_file_loads():
    folder = shared_path("fixtures", "data")
    mean = load_mean_file(str(folder / "mean.binaryproto"))
    dump = np.load(folder / "lmdb_dump.npz")
    np.testing.assert_array_equal(mean, dump["mean.binaryproto"][0])


@pytest.mark.gpu
def test_cuda_matches_cpu(tmp_path):
    path, _ = _mean_file(tmp_path)
    tr = DataTransformer(_tp(f'crop_size: 5 mirror: true mean_file: "{path}" scale: 0.25'), TRAIN)
    hb = tr.crop_batch(_items(16), [0] * 16, np.random.default_rng(0))
    cpu = tr.apply(hb)
    gpu = tr.apply(hb, device="cuda")
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0)
