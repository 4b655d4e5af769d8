"""Temporal Segment Networks' released nets and solvers (tests/layers/data/tsn/, yjxiong/temporal-segment-networks
@ 2c5e5e7, as released): all twelve parse; the train_val nets, shrunk (crop 32, batch 2, the global pool
and the data Reshape to match), build and run at TRAIN and TEST on synthetic frame folders and train a few
iterations under their own solvers; the solvers' repeated ``device_id`` (yjxiong/caffe action_recog's
tools/caffe.cpp reading) and ``richness``."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from neocaffe.data.tsn_frames import write_tsn_videos
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net, read_solver
from neocaffe.proto import caffe_pb2
from neocaffe.solver.nets import SolverError, resolve_device, solver_device_id
from neocaffe.solver.solver import Solver

DATA = Path(__file__).parent / "data" / "tsn"
NETS = sorted(p for p in DATA.glob("*/*.prototxt") if "solver" not in p.name)
SOLVERS = sorted(DATA.glob("*/*_solver.prototxt"))
CROP = 32


def test_the_twelve_files_are_here_and_parse():
    assert len(NETS) == 8 and len(SOLVERS) == 4
    for path in NETS:
        net = read_net(str(path))
        types = {layer.type for layer in net.layer}
        assert "BN" in types and "Concat" in types
        if "train_val" in path.name:
            data = [layer for layer in net.layer if layer.type == "VideoData"]
            assert len(data) == 2 and all(d.video_data_param.HasField("num_segments") for d in data)
            train = data[0]
            assert train.transform_param.fix_crop and train.transform_param.more_fix_crop
            assert train.transform_param.multi_scale and train.transform_param.max_distort == 1
            assert train.transform_param.is_flow == ("flow" in path.name)
            assert len(train.transform_param.scale_ratios) in (3, 4)
    for path in SOLVERS:
        sp = read_solver(str(path))
        assert sp.richness == 200
        want = [] if path.parent.name == "ucf101" and "flow" in path.name else [0, 1, 2, 3]  # commented out there
        assert list(sp.device_id) == want


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return write_tsn_videos(str(tmp_path_factory.mktemp("tsn_nets")), [("a", 9, 0), ("b", 12, 1), ("c", 6, 2)],
                            size=(40, 48), seed=1)


def _shrunk(path: Path, source: str):
    """The train_val with synthetic frames, batch 2 and 32 x 32 crops (BN-Inception's stride is 32)."""
    npm = read_net(str(path))
    for layer in npm.layer:
        if layer.type == "VideoData":
            layer.video_data_param.source = source
            layer.video_data_param.batch_size = 2
            layer.transform_param.crop_size = CROP
        elif layer.type == "Reshape" and layer.name in ("data_reshape", "reshape_data"):
            layer.reshape_param.shape.dim[-1] = CROP
            layer.reshape_param.shape.dim[-2] = CROP
        elif layer.name == "global_pool":
            layer.pooling_param.kernel_size = CROP // 32
    return npm


@pytest.mark.parametrize("path", [p for p in NETS if "train_val" in p.name and p.parent.name == "ucf101"],
                         ids=lambda p: p.name)
def test_train_val_builds_and_runs_at_train_and_test(path, videos):
    npm = _shrunk(path, videos)
    channels = 30 if "flow" in path.name else 9  # 3 segments x (5 flow frames x 2 | 1 RGB frame x 3)
    for phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        net = Net(npm, phase)
        try:
            loss = float(net.forward())
            assert tuple(net.blob("data").shape) == (2, channels, CROP, CROP)
            assert tuple(net.blob("label").shape) == (2, 1, 1, 1)
            assert np.isfinite(loss) and loss > 0
            if phase == caffe_pb2.TRAIN:
                net.backward()
                conv1 = net.params_by_layer()["conv1/7x7_s2"][0]
                assert conv1.grad is not None and float(conv1.grad.abs().sum()) > 0
        finally:
            net.close()


@pytest.mark.parametrize("kind", ["rgb", "flow"])  # step and multistep policies
def test_the_released_solver_trains_the_shrunk_net(kind, videos):
    sp = read_solver(str(DATA / "hmdb51" / f"tsn_bn_inception_{kind}_solver.prototxt"))
    sp.ClearField("net")
    sp.net_param.CopyFrom(_shrunk(DATA / "hmdb51" / f"tsn_bn_inception_{kind}_train_val.prototxt", videos))
    sp.max_iter, sp.test_iter[:], sp.test_interval, sp.display = 2, [1], 2, 1
    sp.test_initialization = False
    sp.snapshot_after_train = False
    solver = Solver(sp, device="cpu")
    try:
        w0 = solver.net.params_by_layer()["fc-action"][0].detach().clone()
        solver.solve()
        assert solver.iter == 2
        assert not torch.equal(w0, solver.net.params_by_layer()["fc-action"][0].detach())
    finally:
        solver.close()


@pytest.mark.parametrize("kind, channels", [("rgb", 3), ("flow", 10)])
def test_deploy_net_loads_tsn_weights_and_scores_as_pyactionrecog_does(kind, channels, tmp_path):
    """TSN's models store BN blobs as 1 x C (its bn_layer.cpp): they load into the deploy net, which then
    scores through pycaffe as pyActionRecog/action_caffe.py drives it (reshape the data blob, forward to a
    named blob)."""
    import caffe
    from neocaffe.io.caffemodel import LayerWeights
    from neocaffe.io.prototxt import write_prototxt
    from neocaffe.io.weights import save_weights

    npm = read_net(str(DATA / "ucf101" / f"tsn_bn_inception_{kind}_deploy.prototxt"))
    for layer in npm.layer:
        if layer.name == "global_pool":
            layer.pooling_param.kernel_size = CROP // 32
        elif layer.type == "Input":  # the deploy's input_dim, upgraded to an Input layer
            layer.input_param.shape[0].dim[2:] = [CROP, CROP]
    proto = tmp_path / "deploy.prototxt"
    write_prototxt(npm, proto)
    ref = Net(npm, caffe_pb2.TEST)
    g = np.random.default_rng(1)
    with torch.no_grad():
        for layer in ref.layers:
            if layer.type_name == "BN":  # trained-looking statistics (new BN layers hold variance 0)
                layer.blobs[2].copy_(torch.tensor(g.normal(0, 0.1, layer.blobs[2].shape)))
                layer.blobs[3].copy_(torch.tensor(g.uniform(0.5, 2, layer.blobs[3].shape)))
    stored = []
    for lw in ref.to_weights():
        blobs = [b.reshape(1, -1) if lw.type == "BN" else b for b in lw.blobs]  # TSN's 2-D BN blobs
        stored.append(LayerWeights(lw.name, lw.type, blobs))
    assert any(b.shape == (1, 64) for lw in stored for b in lw.blobs)
    save_weights(tmp_path / "tsn.caffemodel", stored)
    net = caffe.Net(str(proto), str(tmp_path / "tsn.caffemodel"), caffe.TEST)
    g = np.random.default_rng(2)
    if kind == "rgb":  # CaffeNet.predict_single_frame: 10-crop oversampling, transposed, mean subtracted
        shape = net.blobs["data"].data.shape
        transformer = caffe.io.Transformer({"data": shape})
        transformer.set_transpose("data", (2, 0, 1))
        transformer.set_mean("data", np.array([104, 117, 123]))
        frame = g.uniform(0, 255, (CROP + 8, CROP + 12, 3)).astype(np.float32)
        crops = caffe.io.oversample([frame], (shape[2], shape[3]))
        data = np.stack([transformer.preprocess("data", x) for x in crops]).astype(np.float32)
    else:  # predict_single_flow_stack without oversampling: the stack - 128
        data = g.uniform(0, 255, (2, channels, CROP, CROP)).astype(np.float32) - np.float32(128)
    net.blobs["data"].reshape(*data.shape)
    net.reshape()
    out = net.forward(blobs=["fc-action"], data=data)
    assert out["fc-action"].shape == (len(data), 101) and np.isfinite(out["fc-action"]).all()
    ref.set_blob("data", torch.as_tensor(data))  # the reference net: the same weights (2-D BN blobs aside)
    ref.forward()
    np.testing.assert_allclose(out["fc-action"], ref.blob("fc-action").numpy(), rtol=1e-4, atol=1e-4)


# -- device_id: repeated, read as the fork's tools/caffe.cpp -----------------------------------------
def test_device_id_reads_one_value_a_list_and_old_binary_files():
    one = read_solver("device_id: 2")
    assert list(one.device_id) == [2] and solver_device_id(one) == 2
    assert list(read_solver("device_id: [0, 1, 2, 3]").device_id) == [0, 1, 2, 3]
    assert solver_device_id(read_solver("base_lr: 0.1")) == 0
    # a binary SolverParameter of BVLC's schema (optional int32 device_id = 18) decodes into the list
    old = bytes([0x90, 0x01, 3])  # tag (18 << 3 | varint) = 144, as a varint; value 3
    assert list(caffe_pb2.SolverParameter.FromString(old).device_id) == [3]
    assert caffe_pb2.SolverParameter(device_id=[3]).SerializeToString() == old


def test_a_device_id_list_on_one_process_uses_the_first_and_says_so(caplog):
    sp = read_solver("device_id: [2, 3, 4]")
    with caplog.at_level(logging.WARNING, logger="neocaffe.solver"):
        assert solver_device_id(sp) == 2
    assert "lists 3 devices [2, 3, 4]; this single process uses the first, 2" in caplog.text
    assert "caffe train -gpu 2,3,4" in caplog.text


def test_a_device_id_list_gives_each_data_parallel_process_its_own():
    sp = read_solver("device_id: [4, 5, 6, 7]")
    assert [solver_device_id(sp, r, 4) for r in range(4)] == [4, 5, 6, 7]
    assert [solver_device_id(read_solver("base_lr: 0.1"), r, 2) for r in range(2)] == [0, 1]
    with pytest.raises(SolverError, match=r"device_id lists 2 device\(s\) \[4, 5\] for 3 processes"):
        solver_device_id(read_solver("device_id: [4, 5]"), 0, 3)


def test_resolve_device_takes_the_first_listed_gpu():
    sp = read_solver("solver_mode: GPU device_id: [0, 1, 2, 3]")
    dev = resolve_device(sp)
    assert dev == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    assert resolve_device(read_solver("solver_mode: CPU device_id: [1, 2]")) == torch.device("cpu")


@pytest.mark.gpu
def test_the_shrunk_rgb_net_runs_on_cuda(videos):
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    net = Net(_shrunk(DATA / "ucf101" / "tsn_bn_inception_rgb_train_val.prototxt", videos), caffe_pb2.TRAIN,
              device="cuda")
    try:
        loss = net.forward()
        net.backward()
        assert loss.device.type == "cuda" and torch.isfinite(loss)
    finally:
        net.close()
