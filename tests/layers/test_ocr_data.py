"""senlinuc/caffe_ocr's multi-label data (neocaffe/data/multilabel.py, neocaffe/layers/ocr_data.py,
neocaffe/tools/convert_imageset_ocr.py) against loop ports of the fork's code (tests/layers/ocr_data_reference.py):
field 5 read from bytes a real protobuf message with a repeated label wrote; list files and an LMDB written here read
back bit for bit; which form Data/ImageData take; a small CTC train net on the real data layers; the fork's own
train nets (read from /work/.mirror where present: the fork carries no licence file, so they are not copied; see
tests/layers/data/caffe_ocr_data/README.md) build with their data layers on tiny data and take solver steps."""
from __future__ import annotations

import os
import subprocess

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.data.datum import DatumError
from neocaffe.data.db_writer import DBWriter
from neocaffe.data.multilabel import (datum_labels, labels_wire, multilabel_record, parse_convert_line,
                                      read_multilabel_list)
from neocaffe.data.sources import DataSourceError, DBReader
from neocaffe.layers.base import TEST, TRAIN, NetSoFar
from neocaffe.layers.data_layers import DataLayer, ImageDataLayer
from neocaffe.layers.ocr_data import OCRDataLayer, OCRImageDataLayer
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from neocaffe.tools import convert_imageset_ocr
from tests.layers import ocr_data_reference as ref

FORK = "/work/.mirror/senlinuc+caffe_ocr/repo"
COMMIT = "81642f61ea8f888e360cca30e08e05b7bc6d4556"


def _layer(text, phase=TRAIN, net=None):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    told = {"net": net} if net is not None else {}
    return get_layer_class(param.type)(param, [], phase, **told)


# -- the wire format --------------------------------------------------------------------------------
def test_datum_labels_from_real_protobuf_bytes():
    Datum = ref.fork_datum_class()
    labels = [3, -1, 0, 2 ** 31 - 1, -2 ** 31, 127, 128, 300]
    d = Datum(channels=2, height=3, width=1, data=bytes(range(6)), encoded=False)
    d.label.extend(labels)
    d.float_data.extend([0.5, -2.0])
    raw = d.SerializeToString()
    assert datum_labels(raw) == labels
    assert caffe_pb2.Datum.FromString(raw).label == labels[-1]  # the schema's optional field: the last one read
    packed = ref.packed_datum_class()(data=b"xy", encoded=True)
    packed.label.extend(labels)
    assert b"\x2a" in packed.SerializeToString()[:6]  # field 5, wire type 2: one packed run
    assert datum_labels(packed.SerializeToString()) == labels
    assert labels_wire(labels, packed=True) in packed.SerializeToString()
    assert datum_labels(Datum(data=b"z").SerializeToString()) == []
    # written as the fork's C++ serializer writes them: field order, labels unpacked between data and float_data
    ours = caffe_pb2.Datum(channels=2, height=3, width=1, data=bytes(range(6)), encoded=False, label=9)
    ours.float_data.extend([0.5, -2.0])
    assert multilabel_record(ours, labels) == raw
    enc = caffe_pb2.Datum(data=b"\x89PNG..", encoded=True)
    fork_enc = Datum(data=b"\x89PNG..", encoded=True)
    fork_enc.label.extend([5, 0, 0])
    assert multilabel_record(enc, [5, 0, 0]) == fork_enc.SerializeToString()
    for bad in (raw[:-1], raw[:9], b"\x00\x01", b"\x2b", b"\x28\xff"):
        with pytest.raises(DatumError, match="not a Caffe Datum"):
            datum_labels(bad, "rec")


# -- list files -------------------------------------------------------------------------------------
def test_list_parse_as_the_forks_istream(tmp_path):
    p = tmp_path / "list.txt"
    p.write_bytes(b"a.png 1 2 3\r\n\tb.png  4\t5 6x\nc.png -1 +2 3.5 9\nd.png 1 2 99999999999\n")
    with pytest.raises(DataSourceError, match=r"list.txt:4: 2 labels where line 1 has 3"):
        read_multilabel_list(str(p))
    p.write_bytes(b"a.png 1 2 3\r\n\tb.png  4\t5 6x 7\nc.png -1 +2 3.5\nd.png 1 2 3 99999999999 4")
    ours = read_multilabel_list(str(p))
    assert [(e.path, list(e.label)) for e in ours] == ref.fork_image_data_lines(str(p))
    assert [e.label for e in ours][2] == (-1, 2, 3)
    p.write_bytes(b"a.png 0.1 -2e3 .5\nb.png 1e-3 3.4028235e38 1\nc.png 7 8 9 1e\n\nd.png 1.5 2.5 3.5e+1\n")
    ours = read_multilabel_list(str(p), regression=True)
    fork = [x for x in ref.fork_image_data_lines(str(p), regression=True) if x[1]]  # its blank line: skipped here
    assert [(e.path, list(e.label)) for e in ours] == fork
    assert [e.line for e in ours] == [1, 2, 3, 5]
    assert parse_convert_line(b"dir/a b.png 1 2 3") == ("dir/a b.png", [1, 2, 3])
    assert parse_convert_line(b"123.png") == ("123.png", [123])  # the fork reads the ints from the line's start
    assert parse_convert_line(b"noext 1 2") is None


def _images(folder, n, shape, seed):
    g = np.random.default_rng(seed)
    imgs = {}
    for i in range(n):
        img = g.integers(0, 256, shape, dtype=np.uint8)
        cv2.imwrite(str(folder / f"im{i}.png"), img)
        imgs[f"im{i}.png"] = img
    return imgs


def test_image_data_bit_for_bit_against_the_forks_loop(tmp_path):
    imgs = _images(tmp_path, 5, (10, 12, 3), 0)
    g = np.random.default_rng(1)
    lab = g.integers(-3, 40, (5, 4))
    (tmp_path / "list.txt").write_text("".join(f"im{i}.png {' '.join(map(str, lab[i]))}\n" for i in range(5)))
    rng.set_seed(7)
    layer = _layer(f'name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ source: '
                   f'"{tmp_path}/list.txt" root_folder: "{tmp_path}/" batch_size: 3 shuffle: true rand_skip: 4 '
                   f'task_class_num: 4 }} transform_param {{ crop_size: 7 mirror: true mean_value: 152 '
                   f'mean_value: 100 mean_value: 20 scale: 0.25 }}')
    assert isinstance(layer, OCRImageDataLayer) and layer.reshape([]) == [(3, 3, 7, 7), (3, 4, 1, 1)]
    got = [[t.numpy().copy() for t in layer()] for _ in range(4)]
    maker = layer._maker_obj
    draws = [maker.make(k) for k in range(4)]
    lines = ref.fork_image_data_lines(str(tmp_path / "list.txt"))
    order = lambda p: [lines[maker.passes.index(p * 5 + i)] for i in range(5)]  # noqa: E731 - pass p's order

    def transform(img, b, i):
        return ref.transform_mat(img, 7, True, *draws[b].offsets[i], bool(draws[b].mirror[i]), 0.25, None,
                                 [152, 100, 20])

    want = ref.image_data_batches(order(0), layer.skip, 4, 3, lambda n: imgs[n], transform,
                                  lambda _lines, p: order(p))
    for (data, labels), (wd, wl) in zip(got, want):
        np.testing.assert_array_equal(data, wd)
        np.testing.assert_array_equal(labels.reshape(-1), wl)
    layer.close()


def test_regression_values_and_resize(tmp_path):
    imgs = _images(tmp_path, 3, (9, 13), 2)
    (tmp_path / "v.txt").write_text("im0.png 0.1 -2.5\nim1.png 3e-2 7\nim2.png 1.17549435e-38 -0\n")
    layer = _layer(f'name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ source: '
                   f'"{tmp_path}/v.txt" root_folder: "{tmp_path}/" batch_size: 2 regression: true is_color: false '
                   f'new_height: 8 new_width: 11 }}', TEST)
    assert isinstance(layer, OCRImageDataLayer)
    lines = ref.fork_image_data_lines(str(tmp_path / "v.txt"), regression=True)
    read = lambda n: cv2.resize(imgs[n], (11, 8))  # noqa: E731 - the fork's ReadImageToCVMat
    want = ref.image_data_batches(lines, 0, 3, 2, read, lambda img, b, i: ref.transform_mat(img, 0, False, 0, 0, False),
                                  None)
    for (wd, wl) in want:
        data, labels = (t.numpy() for t in layer())
        assert labels.dtype == np.float32 and labels.shape == (2, 2, 1, 1)
        np.testing.assert_array_equal(data, wd)
        np.testing.assert_array_equal(labels.reshape(-1), wl)
    layer.close()


def _lmdb(path, records):
    with DBWriter(str(path), "lmdb") as db:
        for i, r in enumerate(records):
            db.put(f"{i:08d}", r)


def test_data_bit_for_bit_against_the_forks_loop(tmp_path):
    Datum, g = ref.fork_datum_class(), np.random.default_rng(3)
    records = []
    for i in range(7):
        d = Datum(channels=3, height=8, width=9, data=g.integers(0, 256, 216, dtype=np.uint8).tobytes(), encoded=False)
        d.label.extend(int(v) for v in g.integers(-2, 60, 5))
        records.append(d.SerializeToString())
    _lmdb(tmp_path / "db", records)
    rng.set_seed(11)
    layer = _layer(f'name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "{tmp_path}/db" '
                   f'batch_size: 3 rand_skip: 20 }} transform_param {{ crop_size: 5 mirror: true mean_value: 152 }}')
    assert isinstance(layer, OCRDataLayer) and layer.reshape([]) == [(3, 3, 5, 5), (3, 5, 1, 1)]
    got = [[t.numpy().copy() for t in layer()] for _ in range(5)]
    maker = layer._maker()
    draws = [maker.make(k) for k in range(5)]
    maker.close()

    def transform(d, b, i):
        return ref.transform_datum(d.data, 3, 8, 9, 5, True, *draws[b].offsets[i], bool(draws[b].mirror[i]),
                                   mean_values=[152])

    want = ref.data_batches(records, layer.skip, 5, 3, transform)
    for (data, labels), (wd, wl) in zip(got, want):
        np.testing.assert_array_equal(data, wd)
        np.testing.assert_array_equal(labels.reshape(-1), wl)
    layer.close()
    # a record holding another count than the first: an error naming it
    bad = Datum(channels=3, height=8, width=9, data=bytes(216), encoded=False)
    bad.label.extend([1, 2])
    _lmdb(tmp_path / "bad", records[:2] + [bad.SerializeToString()])
    layer = _layer(f'name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "{tmp_path}/bad" '
                   'batch_size: 3 }', TEST)
    with pytest.raises(DatumError, match="record '00000002': holds 2 labels where the database's first record holds 5"):
        layer()
    layer.close()


def test_worker_processes_give_the_same_batches():
    from neocaffe.data.multilabel import multilabel_example
    from neocaffe.layers.base import BuildContext

    f = multilabel_example()
    for text in (f'name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "{f}/ocr_lmdb" '
                 'batch_size: 2 } transform_param { crop_size: 5 mirror: true }',
                 f'name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ source: '
                 f'"{f}/ocr_list.txt" root_folder: "{f}/" batch_size: 2 shuffle: true task_class_num: 3 }} '
                 'transform_param { crop_size: 5 mirror: true }'):
        outs = []
        for workers in (0, 2):
            rng.set_seed(5)
            param = text_format.Parse(text, caffe_pb2.LayerParameter())
            layer = get_layer_class(param.type)(param, [], TRAIN, BuildContext(data_workers=workers))
            outs.append([[t.numpy().copy() for t in layer()] for _ in range(6)])
            layer.close()
        for a, b in zip(*outs):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)


def test_which_form(tmp_path):
    Datum = ref.fork_datum_class()
    one = Datum(channels=1, height=2, width=2, data=bytes(4), encoded=False)
    one.label.append(7)
    _lmdb(tmp_path / "one", [one.SerializeToString()] * 2)
    many = Datum(channels=1, height=2, width=2, data=bytes(4), encoded=False)
    many.label.extend([7, 8, 9])
    _lmdb(tmp_path / "many", [many.SerializeToString()] * 2)
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((2, 2), np.uint8))
    (tmp_path / "l.txt").write_text("a.png 4\n")
    ocr = NetSoFar(caffe_pb2.NetParameter(lineage="caffe_ocr"))
    upstream = NetSoFar(caffe_pb2.NetParameter(lineage="upstream"))
    marked = NetSoFar(text_format.Parse('layer { name: "l" type: "WarpCTCLoss" }', caffe_pb2.NetParameter()))
    plain = NetSoFar(caffe_pb2.NetParameter())

    def data(db, net=None):
        return _layer(f'name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "{tmp_path}/{db}" '
                      'batch_size: 2 }', TEST, net)

    def image(extra="", net=None):
        return _layer(f'name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ source: '
                      f'"{tmp_path}/l.txt" root_folder: "{tmp_path}/" batch_size: 2 is_color: false {extra} }}',
                      TEST, net)

    cases = [(data("one"), DataLayer, (2,), [7, 7]), (data("one", plain), DataLayer, (2,), [7, 7]),
             (data("one", ocr), OCRDataLayer, (2, 1, 1, 1), [7, 7]),
             (data("one", marked), OCRDataLayer, (2, 1, 1, 1), [7, 7]),
             (data("many"), OCRDataLayer, (2, 3, 1, 1), [7, 8, 9] * 2),
             (data("many", upstream), DataLayer, (2,), [9, 9]),  # BVLC's: the last label read
             (image(), ImageDataLayer, (2,), [4, 4]), (image(net=plain), ImageDataLayer, (2,), [4, 4]),
             (image("task_class_num: 1"), OCRImageDataLayer, (2, 1, 1, 1), [4, 4]),
             (image("regression: false"), OCRImageDataLayer, (2, 1, 1, 1), [4, 4]),
             (image(net=marked), OCRImageDataLayer, (2, 1, 1, 1), [4, 4])]
    for layer, cls, shape, values in cases:
        assert type(layer) is cls
        label = layer()[1]
        assert tuple(label.shape) == shape == layer.reshape([])[1] and label.reshape(-1).tolist() == values
        layer.close()


# -- convert_imageset_ocr ------------------------------------------------------------------------
def test_convert_imageset_ocr_writes_the_forks_records(tmp_path):
    imgs = _images(tmp_path, 2, (6, 10, 3), 4)
    os.rename(tmp_path / "im1.png", tmp_path / "im 1.png")
    (tmp_path / "list.txt").write_text("im0.png 3 1 0 0\nno_extension 1\nim 1.png 2 2 5 0\nmissing.png 1 1 1 1\n")
    assert convert_imageset_ocr.run(["--shuffle=false", "--backend=lmdb", f"{tmp_path}/", str(tmp_path / "list.txt"),
                                     str(tmp_path / "db")]) == 0
    Datum = ref.fork_datum_class()
    with DBReader(str(tmp_path / "db"), "lmdb") as r:
        items = list(r.items())
    want = []
    for name, labels in (("im0.png", [3, 1, 0, 0]), ("im 1.png", [2, 2, 5, 0])):
        d = Datum(data=(tmp_path / name).read_bytes(), encoded=True)  # ReadFileToDatum: the file's own bytes
        d.label.extend(labels)
        want.append(d.SerializeToString())
    assert [k for k, _ in items] == [b"00000000_im0.png", b"00000001_im 1.png"]  # the list position names the key
    assert [v for _, v in items] == want
    # raw pixels, height 4 with width -1: the aspect ratio kept (width 4 * 10 / 6 = 6)
    assert convert_imageset_ocr.run(["--shuffle=false", "--backend=lmdb", "--encoded=false", "--resize_height=4",
                                     "--resize_width=-1", f"{tmp_path}/", str(tmp_path / "list.txt"),
                                     str(tmp_path / "raw")]) == 0
    with DBReader(str(tmp_path / "raw"), "lmdb") as r:
        first = Datum.FromString(r.peek()[1])
    img = cv2.resize(imgs["im0.png"], (6, 4))
    assert (first.channels, first.height, first.width, list(first.label)) == (3, 4, 6, [3, 1, 0, 0])
    assert first.data == img.transpose(2, 0, 1).tobytes()


# -- nets ---------------------------------------------------------------------------------------------
def _text_lines(folder, n, width, seed, prefix="t", height=16):
    """Images ``height`` x ``width`` with 1-3 bright bars at rows of 1..3 (the characters), their labels padded
    with 0."""
    g = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        img = np.full((height, width, 3), 20, np.uint8)
        seq = g.integers(1, 4, 1 + i % 3)
        for k, c in enumerate(seq):
            img[4 * (c - 1):4 * c + 4, 8 * k + 2:8 * k + 6] = 230
        cv2.imwrite(str(folder / f"{prefix}{i}.png"), img)
        lines.append(f"{prefix}{i}.png {' '.join(map(str, list(seq) + [0] * (4 - len(seq))))}\n")
    return lines


NET = '''
layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mean_value: 152 mean_value: 152 mean_value: 152 scale: 0.01 }
  image_data_param { source: "@LIST@" root_folder: "@ROOT@/" batch_size: 4 shuffle: true task_class_num: 4 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { mean_value: 152 mean_value: 152 mean_value: 152 scale: 0.01 }
  data_param { source: "@DB@" batch_size: 3 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "msra" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool"
  pooling_param { pool: AVE kernel_h: 8 kernel_w: 1 stride: 1 } }
layer { name: "tr" type: "Transpose" bottom: "pool" top: "tr" transpose_param { dim: 3 dim: 2 dim: 0 dim: 1 } }
layer { name: "rs" type: "Reshape" bottom: "tr" top: "rs" reshape_param { shape { dim: -1 } axis: 1 num_axes: 2 } }
layer { name: "fc1x" type: "InnerProduct" bottom: "rs" top: "fc1x"
  inner_product_param { axis: 2 num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "ctcloss" type: "WarpCTCLoss" bottom: "fc1x" bottom: "label" top: "ctcloss" }
layer { name: "acc" type: "CTCGreedyDecoder" bottom: "fc1x" bottom: "label" top: "acc" include { phase: TEST } }
'''


def test_ctc_net_trains_on_the_multilabel_data_layers(tmp_path):
    import caffe

    lines = _text_lines(tmp_path, 8, 32, 5)
    (tmp_path / "train.txt").write_text("".join(lines))
    (tmp_path / "test.txt").write_text("".join(lines[:6]))
    assert convert_imageset_ocr.run(["--shuffle=false", "--backend=lmdb", f"{tmp_path}/", str(tmp_path / "test.txt"),
                                     str(tmp_path / "db")]) == 0
    net = NET.replace("@LIST@", str(tmp_path / "train.txt")).replace("@ROOT@", str(tmp_path))
    net = net.replace("@DB@", str(tmp_path / "db"))
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.02 momentum: 0.9 lr_policy: "fixed" display: 0 max_iter: 100 '
        'snapshot: 0 solver_mode: CPU random_seed: 3 test_iter: 2 test_interval: 1000 test_initialization: false '
        'clip_gradients: 5')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    assert solver.net.blobs["label"].data.shape == (4, 4, 1, 1)
    assert solver.net.blobs["fc1x"].data.shape == (16, 4, 4)
    losses = []
    for _ in range(40):
        solver.step(1)
        losses.append(float(solver.net.blobs["ctcloss"].data))
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert np.isfinite(losses).all() and last < 0.7 * first, losses
    test = solver.test_nets[0]
    out = test.forward()
    assert test.blobs["label"].data.shape == (3, 4, 1, 1) and out["acc"].shape == (1, 2, 1, 1)
    labels = [list(map(int, ln.split()[1:])) for ln in lines[:3]]
    np.testing.assert_array_equal(test.blobs["label"].data[:, :, 0, 0], labels)


def _fork_net(path):
    if not os.path.isdir(FORK):
        pytest.skip(f"the fork's prototxts are read from {FORK} (not present here); the fork carries no licence "
                    "file, so they are not copied into tests/")
    text = subprocess.run(["git", "-C", FORK, "show", f"{COMMIT}:{path}"], capture_output=True, check=True).stdout
    return text_format.Parse(text.decode(), caffe_pb2.NetParameter())


def test_the_forks_densenet_train_net_on_its_data_layer(tmp_path):
    """examples/ocr/densenet/densenet-no-blstm_train-val.prototxt (Data from an LMDB of the fork's records,
    DenseBlocks, WarpCTCLoss), shrunk through its fields: sources, batch sizes, channel counts, classes."""
    import caffe

    net = _fork_net("examples/ocr/densenet/densenet-no-blstm_train-val.prototxt")
    lines = _text_lines(tmp_path, 6, 32, 6)
    (tmp_path / "list.txt").write_text("".join(lines))
    assert convert_imageset_ocr.run(["--shuffle=false", "--backend=lmdb", f"{tmp_path}/", str(tmp_path / "list.txt"),
                                     str(tmp_path / "db")]) == 0
    # 16 x 32 images: conv1 /2, two pools /2 -> 2 rows, so pool5's 4-row window becomes 2; T = 4
    for lp in net.layer:
        if lp.type == "Data":
            lp.data_param.source, lp.data_param.batch_size = str(tmp_path / "db"), 2
        elif lp.type == "Convolution":
            lp.convolution_param.num_output = 8
        elif lp.type == "DenseBlock":
            lp.denseblock_param.numTransition, lp.denseblock_param.initChannel = 1, 8
            lp.denseblock_param.growthRate = 4
        elif lp.type == "InnerProduct":
            lp.inner_product_param.num_output = 4
        elif lp.name == "pool5_ave":
            lp.pooling_param.kernel_h = 2
    (tmp_path / "net.prototxt").write_text(text_format.MessageToString(net))
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.001 momentum: 0.9 lr_policy: "fixed" type: "Nesterov" '
        'display: 0 max_iter: 10 snapshot: 0 solver_mode: CPU random_seed: 1234 test_iter: 1 test_interval: 1000 '
        'test_initialization: false')
    solver = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    solver.step(3)
    assert solver.net.blobs["label"].data.shape == (2, 4, 1, 1)
    assert np.isfinite(float(solver.net.blobs["ctcloss"].data))
    out = solver.test_nets[0].forward()
    assert out["acc"].shape == (1, 2, 1, 1) and np.isfinite(out["ctcloss"])


def test_the_forks_inception_train_net_on_its_image_data_layer(tmp_path):
    """examples/ocr/inception-bn/train_val.prototxt (ImageData without task_class_num: caffe_ocr's form by the net's
    WarpCTCLoss), shrunk through its fields: sources, batch sizes, classes."""
    import caffe

    net = _fork_net("examples/ocr/inception-bn/train_val.prototxt")
    lines = _text_lines(tmp_path, 5, 64, 7, height=32)  # the fork's 32-row text lines
    (tmp_path / "list.txt").write_text("".join(lines))
    for lp in net.layer:
        if lp.type == "ImageData":
            lp.image_data_param.source, lp.image_data_param.root_folder = str(tmp_path / "list.txt"), f"{tmp_path}/"
            lp.image_data_param.batch_size, lp.image_data_param.rand_skip = 2, 3
        elif lp.type == "InnerProduct":
            lp.inner_product_param.num_output = 4
    (tmp_path / "net.prototxt").write_text(text_format.MessageToString(net))
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.001 momentum: 0.9 lr_policy: "fixed" display: 0 '
        'max_iter: 10 snapshot: 0 solver_mode: CPU random_seed: 1 test_iter: 1 test_interval: 1000 '
        'test_initialization: false')
    solver = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    solver.step(2)
    assert solver.net.blobs["label"].data.shape == (2, 4, 1, 1)
    assert np.isfinite(float(solver.net.blobs["ctcloss"].data))
    assert np.isfinite(solver.test_nets[0].forward()["acc"]).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tops_equal_cpu(tmp_path):
    from neocaffe.data.multilabel import multilabel_example

    folder = multilabel_example()
    text = (f'name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{folder}/ocr_list.txt" '
            f'root_folder: "{folder}/" batch_size: 2 task_class_num: 3 }} transform_param {{ mean_value: 152 }}')
    cpu, gpu = _layer(text, TEST), _layer(text, TEST).to("cuda")
    for _ in range(3):
        a, b = cpu(), gpu()
        assert b[0].device.type == "cuda"
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.numpy(), y.cpu().numpy())
    cpu.close()
    gpu.close()
