"""Classic pycaffe workflows: classify images with Classifier and a Transformer (mean from a
.binaryproto), detect windows, net surgery (fully-connected -> convolutional), fine-tuning with
copy_from + step, feature extraction from net.blobs, a NetSpec LeNet trained with SGDSolver, and
drawing nets."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image

import caffe
import caffe.draw
from caffe import layers as L
from caffe import params as P
from caffe.proto import caffe_pb2
from tests.conftest import shared_path


def _images(tmp_path, sizes=((40, 48), (60, 50), (33, 41))):
    rs = np.random.RandomState(0)
    paths = []
    for k, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) % 32) * 8], 2)
        img = np.clip(img + rs.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
        p = tmp_path / f"img{k}.png"
        Image.fromarray(img).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture
def cifar():
    folder = shared_path("realdata", "cifar10_hdf5_2015")
    blob = caffe_pb2.BlobProto()
    blob.ParseFromString((folder / "mean.binaryproto").read_bytes())
    mean = caffe.io.blobproto_to_array(blob)
    return folder, mean


def test_classify_with_classifier_and_transformer(tmp_path, cifar):
    folder, mean = cifar
    assert mean.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(mean[0].mean((1, 2)), [125.307, 122.950, 113.865], atol=1e-3)
    model = str(folder / "cifar10_quick.prototxt")
    weights = str(folder / "cifar10_quick_iter_5000.caffemodel.h5")
    clf = caffe.Classifier(model, weights, image_dims=(40, 40), mean=mean[0], raw_scale=255)
    images = [caffe.io.load_image(p) for p in _images(tmp_path)]

    centre = clf.predict(images, oversample=False)
    assert centre.shape == (3, 10)
    np.testing.assert_allclose(centre.sum(1), 1, rtol=1e-5)

    # the same by hand: a Transformer over a plain Net
    net = caffe.Net(model, weights, caffe.TEST)
    t = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    t.set_transpose("data", (2, 0, 1))
    t.set_mean("data", mean[0])
    t.set_raw_scale("data", 255)
    for img, pred in zip(images, centre):
        crop = caffe.io.resize_image(img, (40, 40))[4:36, 4:36]
        net.blobs["data"].data[...] = t.preprocess("data", crop)
        np.testing.assert_allclose(net.forward()["prob"][0], pred, rtol=1e-4, atol=1e-6)

    ten = clf.predict(images, oversample=True)
    assert ten.shape == (3, 10)
    crops = caffe.io.oversample([caffe.io.resize_image(im, (40, 40)) for im in images], (32, 32))
    by_hand = net.forward_all(data=np.stack([t.preprocess("data", c) for c in crops]))["prob"]
    np.testing.assert_allclose(ten, by_hand.reshape(3, 10, 10).mean(1), rtol=1e-4, atol=1e-6)
    # a whole-image prediction when image_dims is the input size
    whole = caffe.Classifier(model, weights, mean=mean[0].mean((1, 2)), raw_scale=255, channel_swap=(2, 1, 0))
    assert whole.predict(images[:1], oversample=False).shape == (1, 10)
    assert list(whole.image_dims) == [32, 32]


def test_detector_windows_and_context_pad(tmp_path, cifar):
    folder, mean = cifar
    model = str(folder / "cifar10_quick.prototxt")
    weights = str(folder / "cifar10_quick_iter_5000.caffemodel.h5")
    paths = _images(tmp_path)
    det = caffe.Detector(model, weights, mean=mean[0], raw_scale=255)
    windows = [np.array([0, 0, 20, 24]), np.array([10, 5, 40, 45])]
    dets = det.detect_windows([(paths[1], windows)])
    assert [d["filename"] for d in dets] == [paths[1]] * 2
    image = caffe.io.load_image(paths[1])
    net = caffe.Net(model, weights, caffe.TEST)
    for d, w in zip(dets, windows):
        assert d["window"] is w and d["prediction"].shape == (10,)
        x = det.transformer.preprocess("data", image[w[0]:w[2], w[1]:w[3]])
        np.testing.assert_allclose(net.forward(data=x[None])["prob"][0], d["prediction"], rtol=1e-4, atol=1e-6)

    padded = caffe.Detector(model, weights, mean=mean[0], raw_scale=255, context_pad=4)
    assert list(padded.crop_dims) == [32, 32, 3]
    np.testing.assert_allclose(padded.crop_mean, mean[0].transpose(1, 2, 0) / 255)
    crop = padded.crop(image, np.array([0, 0, 59, 49]))  # the whole image: the context leaves it
    assert crop.shape == (32, 32, 3)
    np.testing.assert_allclose(crop[0, 0], padded.crop_mean[0, 0])  # outside the image: the mean
    assert padded.detect_windows([(paths[1], [np.array([5, 5, 30, 30])])])[0]["prediction"].shape == (10,)


def _lenet_deploy(n_input=28):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, n_input, n_input]))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=4, weight_filler=dict(type="xavier"),
                            bias_filler=dict(type="constant", value=0.1))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=6, weight_filler=dict(type="xavier"),
                            bias_filler=dict(type="constant", value=0.1))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    return n


def test_net_surgery_fc_to_conv(tmp_path):
    """Caffe's net_surgery notebook: cast the InnerProduct weights into convolutions and run the
    net fully convolutionally; every output position is the original net on one window."""
    n = _lenet_deploy(28)
    n.ip1 = L.InnerProduct(n.pool2, num_output=12, weight_filler=dict(type="xavier"),
                           bias_filler=dict(type="constant", value=0.2))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    (tmp_path / "fc.prototxt").write_text(str(n.to_proto()))
    fc = caffe.Net(str(tmp_path / "fc.prototxt"), caffe.TEST)

    m = _lenet_deploy(36)
    m["ip1-conv"] = L.Convolution(m.pool2, kernel_size=4, num_output=12)
    m.relu1 = L.ReLU(m["ip1-conv"], in_place=True)
    m["ip2-conv"] = L.Convolution(m.relu1, kernel_size=1, num_output=10)
    (tmp_path / "conv.prototxt").write_text(str(m.to_proto()))
    fc.save(str(tmp_path / "fc.caffemodel"))
    full = caffe.Net(str(tmp_path / "conv.prototxt"), str(tmp_path / "fc.caffemodel"), caffe.TEST)

    params = ["ip1", "ip2"]
    fc_params = {pr: (fc.params[pr][0].data, fc.params[pr][1].data) for pr in params}
    for pr, pr_conv in zip(params, ["ip1-conv", "ip2-conv"]):
        assert full.params[pr_conv][0].data.shape[0] == fc_params[pr][0].shape[0]
        full.params[pr_conv][0].data.flat = fc_params[pr][0].flat  # flat unrolled arrays
        full.params[pr_conv][1].data[...] = fc_params[pr][1]
    np.testing.assert_array_equal(full.params["conv1"][0].data, fc.params["conv1"][0].data)  # by name

    x = np.random.RandomState(1).rand(1, 1, 36, 36).astype(np.float32)
    out = full.forward(data=x)["ip2-conv"]
    assert out.shape == (1, 10, 3, 3)
    for i in range(3):
        for j in range(3):
            win = x[:, :, 4 * i:4 * i + 28, 4 * j:4 * j + 28]
            np.testing.assert_allclose(fc.forward(data=win)["ip2"][0], out[0, :, i, j], rtol=1e-4, atol=1e-5)

    full.save(str(tmp_path / "full.caffemodel"))
    again = caffe.Net(str(tmp_path / "conv.prototxt"), str(tmp_path / "full.caffemodel"), caffe.TEST)
    # the same weights, reloaded: equal up to float32 summation order (each net times its small
    # convolutions once and keeps the faster of oneDNN and im2col+GEMM, which round differently)
    np.testing.assert_allclose(again.forward(data=x)["ip2-conv"], out, rtol=1e-5, atol=1e-6)


TRAIN_NET = """name: 'ft'
layer { name: 'data' type: 'MemoryData' top: 'data' top: 'label'
  memory_data_param { batch_size: 16 channels: 1 height: 8 width: 8 } }
layer { type: 'InnerProduct' name: 'ip1' bottom: 'data' top: 'ip1'
  inner_product_param { num_output: 16 weight_filler { type: 'xavier' } } }
layer { type: 'ReLU' name: 'relu1' bottom: 'ip1' top: 'ip1' }
layer { type: 'InnerProduct' name: 'ip2' bottom: 'ip1' top: 'ip2'
  inner_product_param { num_output: 4 weight_filler { type: 'xavier' } } }
layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip2' bottom: 'label' top: 'loss' }
layer { type: 'Accuracy' name: 'acc' bottom: 'ip2' bottom: 'label' top: 'acc' include { phase: TEST } }
"""


def _blobs_data(n=64, seed=0):
    """Four classes: a bright quadrant of an 8x8 image, plus noise."""
    rs = np.random.RandomState(seed)
    y = rs.randint(4, size=n)
    x = rs.rand(n, 1, 8, 8).astype(np.float32) * 0.5
    for k, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[k, 0, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 1
    return x, y.astype(np.float32)


def _ft_solver(tmp_path, lr=0.1):
    (tmp_path / "ft.prototxt").write_text(TRAIN_NET)
    (tmp_path / "ft_solver.prototxt").write_text(
        f"net: '{tmp_path / 'ft.prototxt'}'\nbase_lr: {lr}\nmomentum: 0.9\nlr_policy: 'fixed'\n"
        f"test_iter: 4\ntest_interval: 100000\ntest_initialization: false\nmax_iter: 1000\nrandom_seed: 3\n"
        f"snapshot_prefix: '{tmp_path / 'ft'}'\n")
    s = caffe.SGDSolver(str(tmp_path / "ft_solver.prototxt"))
    x, y = _blobs_data(64, 0)
    s.net.set_input_arrays(x, y)
    xt, yt = _blobs_data(64, 1)
    s.test_nets[0].set_input_arrays(xt, yt)
    return s


def _accuracy(net, batches=4):
    return np.mean([float(net.forward()["acc"]) for _ in range(batches)])


def test_finetune_with_copy_from_and_step(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base = _ft_solver(tmp_path / "a")
    base.step(40)
    trained = str(tmp_path / "a" / "trained.caffemodel")
    base.net.save(trained)
    base_acc = _accuracy(base.test_nets[0])
    assert base_acc > 0.9

    ft = _ft_solver(tmp_path / "b", lr=0.01)
    assert _accuracy(ft.test_nets[0]) < 0.6  # fresh weights
    ft.net.copy_from(trained)
    # the test net shares the train net's weights, so it sees the copied ones at once
    assert _accuracy(ft.test_nets[0]) == pytest.approx(base_acc)
    ft.step(10)
    assert ft.iter == 10
    assert _accuracy(ft.test_nets[0]) > 0.9
    with pytest.raises(ValueError, match="float32"):
        ft.net.set_input_arrays(np.zeros((16, 1, 8, 8)), np.zeros(16, np.float32))


def test_feature_extraction_from_blobs(tmp_path):
    s = _ft_solver(tmp_path)
    s.step(5)
    net = s.test_nets[0]
    x, _ = _blobs_data(64, 1)
    w, b = net.params["ip1"][0].data, net.params["ip1"][1].data
    out = net.forward(end="ip1")  # runs up to and including ip1: before the ReLU
    assert list(out) == ["ip1"]
    np.testing.assert_array_equal(net.blobs["data"].data, x[:16])
    np.testing.assert_allclose(out["ip1"], x[:16].reshape(16, -1) @ w.T + b, rtol=1e-4, atol=1e-5)
    assert (out["ip1"] < 0).any()
    out = net.forward(end="relu1")  # MemoryData serves the next batch
    feats = net.blobs["ip1"].data.copy()  # the in-place ReLU rewrote ip1
    np.testing.assert_array_equal(out["ip1"], feats)
    assert feats.shape == (16, 16) and (feats >= 0).all()
    np.testing.assert_array_equal(net.blobs["data"].data, x[16:32])
    np.testing.assert_allclose(feats, np.maximum(x[16:32].reshape(16, -1) @ w.T + b, 0), rtol=1e-4, atol=1e-5)


def test_netspec_lenet_trained_with_sgd_solver(tmp_path):
    def lenet(batch_size, phase):
        n = caffe.NetSpec()
        n.data, n.label = L.MemoryData(batch_size=batch_size, channels=1, height=28, width=28, ntop=2)
        n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=8, weight_filler=dict(type="xavier"))
        n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
        n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=16, weight_filler=dict(type="xavier"))
        n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
        n.fc1 = L.InnerProduct(n.pool2, num_output=64, weight_filler=dict(type="xavier"))
        n.relu1 = L.ReLU(n.fc1, in_place=True)
        n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
        n.loss = L.SoftmaxWithLoss(n.score, n.label)
        if phase == caffe.TEST:
            n.acc = L.Accuracy(n.score, n.label)
        return n.to_proto()

    (tmp_path / "train.prototxt").write_text(str(lenet(32, caffe.TRAIN)))
    (tmp_path / "test.prototxt").write_text(str(lenet(50, caffe.TEST)))
    sp = caffe_pb2.SolverParameter()
    sp.train_net = str(tmp_path / "train.prototxt")
    sp.test_net.append(str(tmp_path / "test.prototxt"))
    sp.test_interval, sp.test_iter[:] = 100000, [2]
    sp.test_initialization = False
    sp.base_lr, sp.momentum, sp.weight_decay = 0.01, 0.9, 5e-4
    sp.lr_policy, sp.gamma, sp.power = "inv", 1e-4, 0.75
    sp.max_iter, sp.random_seed = 100, 1
    sp.snapshot_prefix = str(tmp_path / "lenet")
    (tmp_path / "solver.prototxt").write_text(str(sp))

    def digits(n, seed):
        """Ten classes: a bright 6x6 square at one of ten places, plus noise."""
        rs = np.random.RandomState(seed)
        y = rs.randint(10, size=n)
        x = rs.rand(n, 1, 28, 28).astype(np.float32) * 0.3
        for k, c in enumerate(y):
            r, q = divmod(int(c), 5)
            x[k, 0, 4 + 12 * r:10 + 12 * r, 1 + 5 * q:7 + 5 * q] += 1
        return x, y.astype(np.float32)

    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    solver.net.set_input_arrays(*digits(320, 0))
    solver.test_nets[0].set_input_arrays(*digits(100, 1))
    solver.step(1)
    first = float(solver.net.blobs["loss"].data)
    for _ in range(59):
        solver.step(1)
    assert float(solver.net.blobs["loss"].data) < first / 4
    acc = np.mean([float(solver.test_nets[0].forward()["acc"]) for _ in range(2)])
    assert acc > 0.9
    solver.snapshot()
    assert (tmp_path / "lenet_iter_60.caffemodel").exists()


def test_draw_net(tmp_path):
    net = caffe_pb2.NetParameter()
    text_format.Merge(TRAIN_NET, net)
    caffe.draw.draw_net_to_file(net, str(tmp_path / "net.raw"), rankdir="TB", display_lrm=True)
    dot = (tmp_path / "net.raw").read_text()
    assert dot.startswith("digraph ft {") and "rankdir=TB" in dot
    assert '"ip1 (InnerProduct) lr mult: 1.0, 1.0"' in dot
    assert '"relu1 (ReLU)" [shape=record, fillcolor="#90EE90"' in dot  # in place: neuron style
    assert '"ip2 (InnerProduct)" -> ip2 [label=4]' not in dot  # labels name layers with lrm here
    graph = caffe.draw.get_pydot_graph(net, "LR", phase=caffe.TRAIN)
    names = [n.get_name() for n in graph.get_nodes()]
    assert not any("acc" in n for n in names)  # TEST-only layer left out
    assert any(n.startswith('"ip1\\n(InnerProduct)') for n in names)
    edge_labels = {e.get_label() for e in graph.get_edges()}
    assert {"16", "4", '""'} <= edge_labels
    try:
        png = caffe.draw.draw_net(net, "LR", ext="png")
    except RuntimeError as e:
        assert "Graphviz" in str(e)
    else:
        assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_draw_v1_prototxt():
    folder = shared_path("realdata", "lenet_v1_2014")
    net = caffe_pb2.NetParameter()
    text_format.Merge((folder / "lenet_train_test.prototxt").read_text(), net)
    dot = caffe.draw.draw_net(net, "BT", ext="dot", phase=caffe.TEST).decode()
    assert '"pool1 (Pooling MAX) kernel size: 2 stride: 2 pad: 0"' in dot
    assert 'label="Batch 100"' in dot and 'label="Batch 64"' not in dot
