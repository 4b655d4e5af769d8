"""neocaffe's opt-in colour augmentation (transform_param pca_lighting / *_jitter): NumPy references
with a fixed seed, identity (and an untouched random stream) when off, the data layer with worker
processes, CPU = CUDA."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.data.datum import DatumError, array_to_datum
from neocaffe.data.db_writer import DBWriter
from neocaffe.data.transformer import DataTransformer
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import BuildContext
from neocaffe.proto import caffe_pb2

TRAIN, TEST = 0, 1
# the references' own constants: ITU-R 601 luma in BGR order; fb.resnet.torch's ImageNet PCA (RGB rows,
# pixels in [0, 1]) with rows reversed to BGR and scaled to 0-255 pixels
GRAY_BGR = np.array([0.114, 0.587, 0.299])
EIGVAL = np.array([0.2175, 0.0188, 0.0045]) * 255
EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])[::-1]


def _tp(text: str) -> caffe_pb2.TransformationParameter:
    return text_format.Parse(text, caffe_pb2.TransformationParameter())


def _items(n=5, c=3, h=9, w=11, seed=3):
    g = np.random.default_rng(seed)
    return [g.integers(0, 256, (c, h, w), dtype=np.uint8) for _ in range(n)]


def _numpy_reference(items, seed, crop, sigma, b, c, s, mean_values, scale, eigval=EIGVAL, eigvec=EIGVEC):
    """The documented recipe in float64 NumPy: the same generator draws mirror flags, crop offsets,
    then a (N x 3) ~ N(0, sigma^2) and each enabled jitter's factors; brightness, contrast, saturation
    (clamped to [0, 255]), lighting, then (x - mean) * scale."""
    g = np.random.default_rng(seed)
    n = len(items)
    ch, h, w = items[0].shape
    flips = g.integers(0, 2, n).astype(bool)
    h0 = g.integers(0, h - crop + 1, n)
    w0 = g.integers(0, w - crop + 1, n)
    alpha = g.normal(0, sigma, (n, 3)) if sigma else np.zeros((n, 3))
    fb = g.uniform(max(0, 1 - b), 1 + b, n) if b else np.ones(n)
    fc = g.uniform(max(0, 1 - c), 1 + c, n) if c else np.ones(n)
    fs = g.uniform(max(0, 1 - s), 1 + s, n) if s else np.ones(n)
    out = []
    for i, x in enumerate(items):
        y = x[:, h0[i]:h0[i] + crop, w0[i]:w0[i] + crop].astype(np.float64)
        if flips[i]:
            y = y[:, :, ::-1]
        gray = (lambda t: t if ch == 1 else np.tensordot(GRAY_BGR, t, 1)[None])
        y = np.clip(y * fb[i], 0, 255)
        y = np.clip(fc[i] * y + (1 - fc[i]) * gray(y).mean(), 0, 255)
        if ch == 3:
            y = np.clip(fs[i] * y + (1 - fs[i]) * gray(y), 0, 255)
        if sigma:
            y = y + (eigvec.astype(np.float64) @ (alpha[i] * eigval))[:, None, None]
        out.append((y - np.resize(mean_values, ch)[:, None, None]) * scale)
    return np.stack(out)


CONFIGS = {
    "lighting": (0.1, 0, 0, 0),
    "brightness": (0, 0.4, 0, 0),
    "contrast": (0, 0, 0.4, 0),
    "saturation": (0, 0, 0, 0.4),
    "all": (0.1, 0.4, 0.4, 0.4),
    "strong": (2.0, 1.5, 1.5, 1.5),  # factors reach 0 and 2.5: clamping matters
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_numpy_with_a_fixed_seed(name):
    sigma, b, c, s = CONFIGS[name]
    tp = _tp(f"crop_size: 7 mirror: true mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.5 "
             f"pca_lighting: {sigma} brightness_jitter: {b} contrast_jitter: {c} saturation_jitter: {s}")
    tr = DataTransformer(tp, TRAIN)
    items = _items()
    got = tr.transform(items, np.random.default_rng(42)).numpy()
    want = _numpy_reference(items, 42, 7, sigma, b, c, s, np.array([104, 117, 123.0]), 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-3)
    plain = DataTransformer(_tp("crop_size: 7 mirror: true mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.5"),
                            TRAIN).transform(items, np.random.default_rng(42)).numpy()
    assert np.abs(got - plain).max() > 0.5  # the augmentation changed the pixels
    # the same seed repeats, another differs
    np.testing.assert_array_equal(tr.transform(items, np.random.default_rng(42)).numpy(), got)
    assert not np.array_equal(tr.transform(items, np.random.default_rng(43)).numpy(), got)


def test_custom_eigen_and_gray_jitter():
    eigval = np.array([10.0, 5.0, 1.0], np.float32)
    eigvec = np.eye(3, dtype=np.float32)[[2, 0, 1]]
    tp = _tp("crop_size: 5 pca_lighting: 0.5 " + " ".join(f"pca_eigval: {v}" for v in eigval)
             + " " + " ".join(f"pca_eigvec: {v}" for v in eigvec.ravel()) + " mirror: true")
    items = _items(4)
    got = DataTransformer(tp, TRAIN).transform(items, np.random.default_rng(1)).numpy()
    want = _numpy_reference(items, 1, 5, 0.5, 0, 0, 0, np.zeros(3), 1.0, eigval, eigvec)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    # one channel: brightness and contrast apply, saturation is a no-op
    gray = _items(4, c=1)
    tp = _tp("crop_size: 5 mirror: true brightness_jitter: 0.3 contrast_jitter: 0.3 saturation_jitter: 0.3")
    got = DataTransformer(tp, TRAIN).transform(gray, np.random.default_rng(2)).numpy()
    np.testing.assert_allclose(got, _numpy_reference(gray, 2, 5, 0, 0.3, 0.3, 0.3, np.zeros(1), 1.0),
                               rtol=1e-5, atol=1e-3)


def test_off_is_identity_and_leaves_the_random_stream_alone():
    items = _items()
    base = "crop_size: 7 mirror: true mean_value: 100 scale: 0.25"
    off = DataTransformer(_tp(base + " pca_lighting: 0 brightness_jitter: 0 contrast_jitter: 0 saturation_jitter: 0"
                              " pca_eigval: 1 pca_eigval: 2 pca_eigval: 3"), TRAIN)
    plain = DataTransformer(_tp(base), TRAIN)
    assert off.color is None and plain.color is None
    g1, g2 = np.random.default_rng(9), np.random.default_rng(9)
    hb1, hb2 = off.crop_batch(items, [0] * 5, g1), plain.crop_batch(items, [0] * 5, g2)
    assert hb1.color is None
    np.testing.assert_array_equal(off.apply(hb1).numpy(), plain.apply(hb2).numpy())
    assert g1.integers(0, 2**62) == g2.integers(0, 2**62)  # no extra draws
    # TEST without crop or mirror: no generator needed, nothing drawn
    assert not DataTransformer(_tp("mean_value: 1"), TEST).needs_rand
    assert DataTransformer(_tp("brightness_jitter: 0.1"), TEST).needs_rand


def test_errors_name_the_field():
    with pytest.raises(DatumError, match="pca_eigval has 2 values; expected 3"):
        DataTransformer(_tp("pca_lighting: 0.1 pca_eigval: 1 pca_eigval: 2"), TRAIN, where="layer 'd' transform_param")
    with pytest.raises(DatumError, match="contrast_jitter = -0.5; expected >= 0"):
        DataTransformer(_tp("contrast_jitter: -0.5"), TRAIN)
    tr = DataTransformer(_tp("pca_lighting: 0.1"), TRAIN)
    with pytest.raises(DatumError, match="pca_lighting needs 3 channels"):
        tr.transform(_items(2, c=1), np.random.default_rng(0))


def test_data_layer_with_workers_is_seeded(tmp_path):
    arrays = _items(6, h=10, w=12, seed=8)
    with DBWriter(str(tmp_path / "db"), "lmdb") as db:
        for i, a in enumerate(arrays):
            db.put(f"{i:08d}", array_to_datum(a, i).SerializeToString())
    text = (f'layer {{ name: "data" type: "Data" top: "data" top: "label" transform_param {{ crop_size: 8 mirror: true '
            f'pca_lighting: 0.1 brightness_jitter: 0.4 contrast_jitter: 0.4 saturation_jitter: 0.4 }} '
            f'data_param {{ source: "{tmp_path / "db"}" batch_size: 3 }} }}')

    def run(n_workers):
        rng.set_seed(5)
        net = Net(read_net(text), TRAIN, source="<test>", context=BuildContext(data_workers=n_workers))
        out = []
        for _ in range(3):
            net.forward()
            out.append(net.blob_data["data"].clone())
        net.layer("data").close()
        return out

    in_process, workers = run(0), run(2)
    for a, b in zip(in_process, workers):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    crops = [a[:, h:h + 8, w:w + 8].astype(np.float32) for a in arrays for h in range(3) for w in range(5)]
    # augmented: no output item is a plain crop of its image
    assert not any(np.array_equal(item, cr) or np.array_equal(item, cr[:, :, ::-1])
                   for batch in in_process for item in batch.numpy() for cr in crops)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    tp = _tp("crop_size: 7 mirror: true mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.5 "
             "pca_lighting: 0.1 brightness_jitter: 0.4 contrast_jitter: 0.4 saturation_jitter: 0.4")
    tr = DataTransformer(tp, TRAIN)
    items = _items(8)
    cpu = tr.transform(items, np.random.default_rng(4)).numpy()
    cuda = tr.transform(items, np.random.default_rng(4), device="cuda")
    assert cuda.device.type == "cuda"
    np.testing.assert_allclose(cuda.cpu().numpy(), cpu, rtol=1e-5, atol=1e-3)


def test_numbering_documents_the_fields():
    """proto/NUMBERING.md's "Our own fields" rows name these fields at their schema numbers."""
    from tests.test_proto_schema import _table

    rows = {(r[0], r[1].split(" ")[0]): int(r[2]) for r in _table("Our own fields")}
    fields = caffe_pb2.TransformationParameter.DESCRIPTOR.fields_by_name
    ours = ["pca_lighting", "pca_eigval", "pca_eigvec", "brightness_jitter", "contrast_jitter", "saturation_jitter"]
    for name in ours:
        assert rows[("TransformationParameter", name)] == fields[name].number
        assert 10000 <= fields[name].number <= 10999
