"""NVCaffe's ``data_param { cache: true shuffle: true }`` in TRAIN (NVIDIA/caffe caffe-0.17, data_layer.cpp and
data_reader.cpp): the first pass reads the database in key order, every later pass a new permutation of all its
records, batches running on across pass ends. The permutations are neocaffe's (seeded by the layer's seed and the
pass), so runs repeat and resume exactly; without cache, without shuffle, or in TEST nothing changes."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.data.datum import array_to_datum
from neocaffe.data.db_writer import DBWriter
from neocaffe.layers.base import TEST, TRAIN, BuildContext
from neocaffe.layers.data_layers import DataLayer
from neocaffe.proto import caffe_pb2

N = 10  # records; batch sizes 3 and 4 do not divide it
SHUFFLE = "cache: true shuffle: true"


def _db(path, backend="lmdb", n=N):
    """``n`` records keyed in order; record ``i`` has label ``i`` and 1x2x2 pixels that tell it apart."""
    g = np.random.default_rng(7)
    arrays = [g.integers(0, 256, (1, 2, 2), dtype=np.uint8) for _ in range(n)]
    with DBWriter(str(path), backend) as db:
        for i, a in enumerate(arrays):
            db.put(f"{i:08d}", array_to_datum(a, i).SerializeToString())
    return str(path), arrays


@pytest.fixture(scope="module")
def lmdb_db(tmp_path_factory):
    return _db(tmp_path_factory.mktemp("cs") / "lmdb")


def _layer(source, extra=SHUFFLE, phase=TRAIN, bs=4, seed=5, tp="", workers=0, rank=0, world=1):
    rng.set_seed(seed)
    text = (f'name: "d" type: "Data" top: "data" top: "label" transform_param {{ {tp} }} '
            f'data_param {{ source: "{source}" batch_size: {bs} {extra} }}')
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return DataLayer(param, [], phase, context=BuildContext(rank=rank, world=world, data_workers=workers))


def _run(layer, times):
    """``times`` batches: (data, labels) as numpy arrays; the layer's workers are stopped after."""
    try:
        return [tuple(t.detach().numpy().copy() for t in layer()) for _ in range(times)]
    finally:
        layer.close()


def _stream(batches):
    return [int(x) for _, lab in batches for x in lab]


def _passes(labels, n=N):
    return [labels[i:i + n] for i in range(0, len(labels), n)]


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_first_pass_in_order_then_a_new_permutation_every_pass(tmp_path, caplog, backend):
    source, arrays = _db(tmp_path / backend, backend)
    with caplog.at_level(logging.INFO, logger="neocaffe.data"):
        batches = _run(_layer(source), 10)  # 40 records: 4 passes, batches of 4 across the pass ends
    labels = _stream(batches)
    first, *later = _passes(labels)
    assert first == list(range(N))
    for p in later:
        assert sorted(p) == list(range(N)) and p != list(range(N))
    assert len({tuple(p) for p in later}) == len(later)  # a new order every pass
    assert labels[8:12] == _stream(batches[2:3])  # batch 2: the first pass's last two records, then pass 1's
    for data, lab in batches:  # each record's own pixels go with its label
        for x, i in zip(data, lab):
            np.testing.assert_array_equal(x, arrays[int(i)].astype(np.float32))
    assert caplog.text.count(f"Shuffling {N} records...") == 3
    again = _stream(_run(_layer(source), 10))
    assert again == labels  # same seed: same orders
    other = _stream(_run(_layer(source, seed=6), 10))
    assert other[:N] == first and other != labels  # another seed: other permutations, the same first pass


@pytest.mark.parametrize("extra,phase", [("cache: true", TRAIN), ("shuffle: true", TRAIN),
                                         ("cache: true shuffle: false", TRAIN), (SHUFFLE, TEST)])
def test_without_cache_shuffle_in_train_batches_are_unchanged(lmdb_db, extra, phase):
    """Bit-identical to the layer without the fields (crops and mirrors included): key order, wrapping."""
    source, arrays = lmdb_db
    tp = "crop_size: 1 mirror: true" if phase == TRAIN else ""
    plain = _run(_layer(source, "", phase=phase, bs=3, tp=tp), 8)
    got = _run(_layer(source, extra, phase=phase, bs=3, tp=tp), 8)
    assert _stream(plain) == [t % N for t in range(24)]
    for (a, la), (b, lb) in zip(plain, got):
        np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(lb, la)


def _round_trip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_resume_mid_pass_continues_exactly(lmdb_db):
    source, _ = lmdb_db
    tp = "crop_size: 1 mirror: true"
    layer = _layer(source, bs=3, seed=1, tp=tp)
    for _ in range(5):  # 15 records: half-way through pass 1
        layer()
    state = layer.resume_state()
    expected = _run(layer, 6)  # into passes 2 and 3
    other = _layer(source, bs=3, seed=2, tp=tp)  # other seeds, already reading
    _run(other, 2)
    other.load_resume_state(_round_trip(state))
    got = _run(other, 6)
    assert _stream(got) == _stream(expected)
    for (a, _), (b, _) in zip(expected, got):
        np.testing.assert_array_equal(b, a)
    # a batch is a function of (seed, batch index) alone: batch 9 read directly is batch 9 of the stream
    whole = _run(_layer(source, bs=3, seed=1, tp=tp), 11)
    jump = _layer(source, bs=3, seed=4, tp=tp)
    jump.load_resume_state({**state, "batch": 9})
    np.testing.assert_array_equal(_run(jump, 1)[0][0], whole[9][0])
    assert _stream(whole[5:]) == _stream(expected)


def test_worker_processes_read_the_same_stream(lmdb_db):
    source, _ = lmdb_db
    import multiprocessing

    in_process = _stream(_run(_layer(source, bs=3), 12))
    before = set(multiprocessing.active_children())
    layer = _layer(source, bs=3, workers=2)
    first = [tuple(t.detach().numpy().copy() for t in layer())]
    assert len(set(multiprocessing.active_children()) - before) == 2  # read in two worker processes
    assert _stream(first + _run(layer, 11)) == in_process


def test_rand_skip_shortens_the_first_pass(lmdb_db):
    """NVCaffe's DataReader ignores rand_skip; neocaffe skips as BVLC's DataLayer did, so the in-order first
    pass starts ``skip`` records in and the later passes permute all records."""
    source, _ = lmdb_db
    seed = next(s for s in range(100) if _layer(source, "rand_skip: 8", seed=s).skip > 0)
    plain = _layer(source, "rand_skip: 8", seed=seed)
    skip = plain.skip
    shuffled = _layer(source, SHUFFLE + " rand_skip: 8", seed=seed)
    assert shuffled.skip == skip
    labels = _stream(_run(shuffled, 6))
    assert labels[:N - skip] == list(range(skip, N))
    for p in _passes(labels[N - skip:]):
        if len(p) == N:
            assert sorted(p) == list(range(N)) and p != list(range(N))
    assert _stream(_run(plain, 6)) == [(skip + t) % N for t in range(24)]


def test_data_parallel_ranks_slice_the_one_process_stream(lmdb_db):
    """Rank r of w reads batches r, r + w, ... of the one-process stream, permutations included."""
    source, _ = lmdb_db
    one = _run(_layer(source, bs=3), 12)
    ranks = [_run(_layer(source, bs=3, rank=r, world=2), 6) for r in range(2)]
    interleaved = [b for pair in zip(*ranks) for b in pair]
    assert _stream(interleaved) == _stream(one)
