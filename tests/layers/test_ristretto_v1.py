"""Ristretto V1 (pmgysel/caffe @ adf5742f, before fc109ba1): its enum spellings parse as aliases of V2's
and quantize alike (against the loop ports of test_ristretto.py), and its DataRistretto layer trims the
transformed images to dynamic fixed point in every phase (data_ristretto_layer.cpp)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.data.datum import array_to_datum
from neocaffe.data.db_writer import DBWriter
from neocaffe.layers.base import TEST, TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.layers.ristretto_quant import NEAREST
from neocaffe.proto import caffe_pb2
from tests.layers.test_ristretto import port_fixed_point, port_minifloat, port_power_of_2

Q = caffe_pb2.QuantizationParameter


def _layer(text: str, shapes=(), phase: int = TEST):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, list(shapes), phase)


@pytest.mark.parametrize("v1, v2", [("FIXED_POINT", "DYNAMIC_FIXED_POINT"), ("MINI_FLOATING_POINT", "MINIFLOAT"),
                                    ("POWER_2_WEIGHTS", "INTEGER_POWER_OF_2_WEIGHTS")])
def test_v1_spellings_are_the_v2_precisions(v1, v2):
    a = text_format.Parse(f"precision: {v1}", Q())
    assert a.precision == Q.Precision.Value(v2)
    assert a.SerializeToString() == text_format.Parse(f"precision: {v2}", Q()).SerializeToString()


def test_v1_docs_lrn_and_fc_layers_run_on_the_ports():
    """The V1 layer catalogue's example (MINI_FLOATING_POINT LRN) and a V1 tool-style FcRistretto
    (no precision line: FIXED_POINT, V1's default; weights and outputs trimmed in TEST, and the input at
    V2's default 32/16, which V1 did not trim)."""
    g = np.random.default_rng(5)
    x = g.standard_normal((2, 6)).astype(np.float32) * 3
    fc = _layer('name: "ip" type: "FcRistretto" bottom: "x" top: "y" inner_product_param { num_output: 4 } '
                'quantization_param { bw_layer_out: 8 bw_params: 6 fl_layer_out: 3 fl_params: 4 }', [x.shape])
    w = g.standard_normal((4, 6)).astype(np.float32)
    b = g.standard_normal(4).astype(np.float32)
    with torch.no_grad():
        fc.blobs[0].copy_(torch.from_numpy(w))
        fc.blobs[1].copy_(torch.from_numpy(b))
        y = fc(torch.from_numpy(x)).numpy()
    xq = port_fixed_point(x, 32, 16, NEAREST)   # V2's input trim at its defaults (V1 had none)
    wq, bq = port_fixed_point(w, 6, 4, NEAREST), port_fixed_point(b, 6, 4, NEAREST)
    want = port_fixed_point((xq.astype(np.float64) @ wq.T + bq).astype(np.float32), 8, 3, NEAREST)
    np.testing.assert_allclose(y, want, atol=2 ** -3 + 1e-6)   # a GEMM's float32 sum may sit on a rounding tie
    assert np.mean(y == want) > 0.8

    xi = g.standard_normal((1, 3, 2, 2)).astype(np.float32)
    conv = _layer('name: "c" type: "ConvolutionRistretto" bottom: "x" top: "y" convolution_param { num_output: 2 '
                  'kernel_size: 1 bias_term: false } quantization_param { precision: POWER_2_WEIGHTS exp_min: -3 '
                  'exp_max: 0 }', [xi.shape])
    wc = g.standard_normal((2, 3, 1, 1)).astype(np.float32)
    with torch.no_grad():
        conv.blobs[0].copy_(torch.from_numpy(wc))
        conv(torch.from_numpy(xi))
    assert conv.quant.precision == Q.INTEGER_POWER_OF_2_WEIGHTS
    np.testing.assert_array_equal(port_power_of_2(wc, -3, 0, NEAREST),
                                  conv.quant.params(torch.from_numpy(wc), NEAREST).numpy())

    xl = g.standard_normal((1, 6, 3, 3)).astype(np.float32) * 40
    lrn = _layer('name: "norm1" type: "LRNRistretto" bottom: "pool1" top: "norm1" lrn_param { local_size: 5 '
                 'alpha: 0.0001 beta: 0.75 } quantization_param { precision: MINI_FLOATING_POINT mant_bits: 10 '
                 'exp_bits: 7 }', [xl.shape])
    assert lrn.param.quantization_param.precision == Q.MINIFLOAT
    got = lrn.minifloat(torch.from_numpy(xl)).numpy()
    np.testing.assert_array_equal(got, port_minifloat(xl, 10, 7, NEAREST, ties_even=True))


def _lmdb(path, images, labels):
    with DBWriter(str(path), "lmdb") as db:
        for i, (img, lab) in enumerate(zip(images, labels)):
            db.put(f"{i:08d}", array_to_datum(img, int(lab)).SerializeToString())


@pytest.mark.parametrize("phase", [TRAIN, TEST])
@pytest.mark.parametrize("bw, fl", [(8, 0), (6, 2), (5, -3)])
def test_data_ristretto_is_data_trimmed_to_fixed_point(tmp_path, phase, bw, fl):
    g = np.random.default_rng(bw * 100 + fl + 50)
    images = g.integers(0, 256, (4, 3, 5, 6), dtype=np.uint8)
    _lmdb(tmp_path / "db", images, [3, 1, 4, 1])
    data = (f'top: "data" top: "label" data_param {{ source: "{tmp_path / "db"}" batch_size: 4 backend: LMDB }} '
            'transform_param { scale: 0.0625 mean_value: 104.5 mean_value: 117 mean_value: 123.25 }')
    plain = _layer(f'name: "d" type: "Data" {data}', phase=phase)
    quant = _layer(f'name: "d" type: "DataRistretto" {data} quantization_param {{ precision: FIXED_POINT '
                   f'bw_layer_out: {bw} fl_layer_out: {fl} }}', phase=phase)
    try:
        x, lab = (t.numpy() for t in plain())
        xq, labq = (t.numpy() for t in quant())
    finally:
        plain.close()
        quant.close()
    want = port_fixed_point(x, bw, fl, NEAREST)
    np.testing.assert_array_equal(xq, want)
    np.testing.assert_array_equal(labq, lab)
    assert not np.array_equal(xq, x)                       # the trim did something
    assert np.abs(xq).max() <= (2.0 ** (bw - 1)) * 2.0 ** -fl


def test_data_ristretto_refuses_other_precisions(tmp_path):
    _lmdb(tmp_path / "db", np.zeros((1, 1, 2, 2), np.uint8), [0])
    with pytest.raises(LayerSetupError, match="d8.*DYNAMIC_FIXED_POINT only; received MINIFLOAT"):
        _layer(f'name: "d8" type: "DataRistretto" top: "data" data_param {{ source: "{tmp_path / "db"}" '
               'batch_size: 1 } quantization_param { precision: MINI_FLOATING_POINT }')


def test_data_ristretto_stochastic_rounds_to_a_neighbour_on_the_grid(tmp_path):
    g = np.random.default_rng(11)
    _lmdb(tmp_path / "db", g.integers(0, 256, (4, 3, 5, 6), dtype=np.uint8), [0, 1, 2, 3])
    data = (f'top: "data" data_param {{ source: "{tmp_path / "db"}" batch_size: 4 }} '
            'transform_param { scale: 0.1 mean_value: 100.5 }')
    plain = _layer(f'name: "d" type: "Data" {data}')
    quant = _layer(f'name: "d" type: "DataRistretto" {data} quantization_param {{ bw_layer_out: 12 fl_layer_out: 3 '
                   'rounding_scheme: STOCHASTIC }')
    try:
        x, xq = plain()[0].numpy().astype(np.float64), quant()[0].numpy().astype(np.float64)
    finally:
        plain.close()
        quant.close()
    lo = np.floor(x * 8) / 8
    assert np.all((xq == lo) | (xq == lo + 0.125))
    off_grid = x * 8 != np.floor(x * 8)
    up = (xq == lo + 0.125)[off_grid].mean()
    assert 0.3 < up < 0.7                                  # both neighbours are drawn
