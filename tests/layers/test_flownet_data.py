"""FlowNet 2.0's CustomData (lmb-freiburg/flownet2 @ b92e198b): records as ``convert_imageset_and_flow``
writes them, read back bit for bit; the fork's read orders (glibc ``rand`` + libstdc++ ``random_shuffle``,
golden sequences printed by a C/C++ program built with gcc/g++ against glibc); preselection, ranges,
re-permutation, mean/scale and resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.data.flownet_db import GlibcRand, ReadOrder, decode, encode_pair, permute, write_pair_lmdb
from neocaffe.layers.base import TRAIN, BuildContext, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

# glibc: srand(1), srand(77), srand(3000000000u): the first three rand() each
GLIBC = {1: [1804289383, 846930886, 1681692777], 77: [164215730, 618066554, 1684787909],
         3000000000: [2058147116, 854483408, 922419988]}
# g++ -std=c++11, libstdc++: srand(77); random_shuffle(0..19) twice; srand(5), blocks of 6 as the fork's
SHUFFLE_77 = [15, 12, 14, 0, 8, 3, 17, 19, 11, 18, 9, 16, 6, 2, 4, 1, 7, 5, 10, 13]
SHUFFLE_77_AGAIN = [19, 13, 9, 10, 3, 8, 14, 15, 4, 11, 2, 6, 12, 17, 18, 7, 5, 1, 16, 0]
BLOCKS_5 = [0, 1, 4, 2, 3, 5, 9, 8, 6, 7, 10, 11, 12, 14, 15, 16, 13, 17, 18, 19]
ENC = ("slice_point: 3 slice_point: 6 slice_point: 8 encoding: UINT8 encoding: UINT8 encoding: UINT16FLOW "
       "encoding: BOOL1")


def test_glibc_rand_and_random_shuffle_are_the_forks():
    for seed, want in GLIBC.items():
        g = GlibcRand(seed)
        assert [g.rand() for _ in range(3)] == want
    g, v = GlibcRand(77), list(range(20))
    permute(v, 0, g)
    assert v == SHUFFLE_77
    permute(v, 0, g)
    assert v == SHUFFLE_77_AGAIN
    w = list(range(20))
    permute(w, 6, GlibcRand(5))
    assert w == BLOCKS_5


def _pairs(n, h=5, w=7, seed=0):
    r = np.random.default_rng(seed)
    out = []
    for i in range(n):
        flow = (r.integers(-3000, 3000, (2, h, w)) / 32.0 + r.uniform(0, 1 / 32, (2, h, w))).astype(np.float32)
        flow[0, 0, i % w] = np.nan
        out.append((r.integers(0, 256, (3, h, w)).astype(np.uint8), r.integers(0, 256, (3, h, w)).astype(np.uint8),
                    flow, r.integers(0, 2, (h, w)).astype(np.uint8) * 255, f"{i:05d}_flow.flo"))
    return out


def _convert_loop(img1, img2, flow, occ):
    """The converter's ``read_data`` loop by loop (bytes of image 1, image 2, flow shorts, occlusion bits)."""
    out = bytearray()
    h, w = img1.shape[1:]
    for img in (img1, img2):
        for c in range(3):
            for y in range(h):
                for x in range(w):
                    out.append(int(img[c, y, x]))
    for j, f in enumerate(flow.reshape(-1)):
        v = 32767 if np.isnan(f) else int(np.float32(f) * np.float32(32))
        out += int(v).to_bytes(2, "little", signed=True)
    cur, idx = 0, 0
    for y in range(h):
        for x in range(w):
            if occ[y, x] > 0:
                cur |= 1 << idx
            idx += 1
            if idx == 8:
                out.append(cur)
                cur, idx = 0, 0
    if idx:
        out.append(cur)
    return bytes(out)


def _layer(text, workers=0):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class("CustomData")(lp, [], TRAIN, BuildContext(data_workers=workers))


def _text(src, extra="", tops=("img0", "img1", "flow", "occ", "label"), batch=2):
    t = " ".join(f'top: "{x}"' for x in tops)
    return (f'name: "d" type: "CustomData" {t} data_param {{ source: "{src}" batch_size: {batch} backend: LMDB '
            f'{ENC} {extra} }}')


def test_records_are_the_converters_bytes_and_read_back_bit_for_bit(tmp_path):
    pairs = _pairs(3)
    for p in pairs:
        assert encode_pair(*p[:4]) == _convert_loop(*p[:4])
    src = str(tmp_path / "db")
    assert write_pair_lmdb(src, pairs, label=4) == 3
    layer = _layer(_text(src, tops=("img0", "img1", "flow", "occ", "label"), batch=3))
    assert layer.reshape([]) == [(3, 3, 5, 7), (3, 3, 5, 7), (3, 2, 5, 7), (3, 1, 5, 7), (3, 1, 1, 1)]
    img0, img1, flow, occ, label = (t.numpy() for t in layer())
    for i, (a, b, f, o, _) in enumerate(pairs):
        np.testing.assert_array_equal(img0[i], a.astype(np.float32))
        np.testing.assert_array_equal(img1[i], b.astype(np.float32))
        q = np.trunc(f * np.float32(32)) / np.float32(32)
        np.testing.assert_array_equal(flow[i], q)  # NaN where NaN
        np.testing.assert_array_equal(occ[i, 0], (o > 0).astype(np.float32))
    assert (label == 4).all()
    layer.close()


def test_float_data_records_and_errors(tmp_path):
    d = caffe_pb2.Datum(channels=2, height=1, width=3, float_data=[1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(decode(2, 1, 3, b"", d.float_data, [], []),
                                  np.arange(1, 7, dtype=np.float32).reshape(2, 1, 3))
    with pytest.raises(ValueError, match="float_data"):
        decode(2, 1, 3, b"", d.float_data, [], [1])
    with pytest.raises(ValueError, match="bytes"):
        decode(3, 2, 2, b"\0" * 5, [], [], [])
    src = str(tmp_path / "db")
    write_pair_lmdb(src, _pairs(2))
    with pytest.raises(LayerSetupError, match="'d'.*tops for 4 slices"):
        _layer(_text(src, tops=("a", "b")))
    with pytest.raises(LayerSetupError, match="LMDB"):
        _layer(_text(src).replace("backend: LMDB", ""))
    with pytest.raises(LayerSetupError, match="rand_skip"):
        _layer(_text(src, "rand_skip: 2"))


def _order_of(layer, batches):
    """Which records the layer's batches hold, told by their labels... here by img0's first pixel."""
    return [int(v) for _ in range(batches) for v in layer()[0][:, 0, 0, 0].tolist()]


def test_read_order_is_the_forks(tmp_path):
    pairs = _pairs(20, h=2, w=3)
    for i, p in enumerate(pairs):
        p[0][0, 0, 0] = i
    src = str(tmp_path / "db")
    write_pair_lmdb(src, pairs)
    layer = _layer(_text(src, "rand_permute: true rand_permute_seed: 77", batch=4))
    assert _order_of(layer, 6) == SHUFFLE_77 + SHUFFLE_77[:4]
    layer.close()
    # every 5 batches of 4 the (already cut) order is shuffled again from the same rand() stream
    again = ReadOrder(20, 4, rand_permute=True, seed=77, every=5)
    assert [v for k in range(10) for v in again.batch(k)] == SHUFFLE_77 + SHUFFLE_77_AGAIN
    assert again.batch(0) == SHUFFLE_77[:4] and again.batch(5) == SHUFFLE_77_AGAIN[:4]  # going back replays
    # preselection then range (positions 2..5 of the selected), no permutation
    sel = tmp_path / "split.txt"
    sel.write_text("\n".join(str(i % 2) for i in range(20)) + "\n")
    layer = _layer(_text(src, f'preselection_file: "{sel}" preselection_label: 1 range_start: 2 range_end: 5', batch=3))
    assert _order_of(layer, 2) == [5, 7, 9, 11, 5, 7]
    layer.close()
    ranged = ReadOrder(20, 2, range_start=4, range_end=7, rand_permute=True, seed=77, range_first=True)
    assert sorted(ranged.order(0)) == [4, 5, 6, 7] and ranged.order(0) != [4, 5, 6, 7]
    assert ReadOrder(20, 2, range_start=4, range_end=7, rand_permute=True, seed=77).order(0) == SHUFFLE_77[4:8]


def test_mean_scale_and_resume(tmp_path):
    pairs = _pairs(5, h=2, w=3)
    src = str(tmp_path / "db")
    write_pair_lmdb(src, pairs)
    layer = _layer(_text(src, "subtract: 10 subtract: 20 scale: 0.5", tops=("img0", "img1", "flow", "occ")))
    first = layer()
    np.testing.assert_array_equal(first[0][0, 0].numpy(), (pairs[0][0][0].astype(np.float32) - 10) * 0.5)
    np.testing.assert_array_equal(first[0][0, 1].numpy(), (pairs[0][0][1].astype(np.float32) - 20) * 0.5)
    np.testing.assert_array_equal(first[1][0, 0].numpy(), pairs[0][1][0].astype(np.float32) * 0.5)
    state = layer.resume_state()
    second = layer()
    layer.close()
    other = _layer(_text(src, "subtract: 10 subtract: 20 scale: 0.5", tops=("img0", "img1", "flow", "occ")))
    other.load_resume_state(state)
    for a, b in zip(other(), second):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    other.close()


def test_worker_processes_give_the_same_batches(tmp_path):
    src = str(tmp_path / "db")
    write_pair_lmdb(src, _pairs(7, h=2, w=3))
    text = _text(src, "rand_permute: true rand_permute_seed: 3", batch=3)
    a, b = _layer(text, 0), _layer(text, 2)
    for _ in range(4):
        for x, y in zip(a(), b()):
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)
    a.close()
    b.close()
