"""FlowNet 2.0's losses (its L1Loss beside NVCaffe's, LpqLoss and its p/q schedule) against ports of the fork's
CUDA code, and PWC-Net's released prototxts (``tests/layers/data/pwcnet``, NVlabs/PWC-Net @ 07df6eb): they parse,
the test net builds with random weights and runs, the train net takes solver steps."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.net import Net
from neocaffe.layers.base import LayerSetupError, NetSoFar
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from neocaffe.solver.solver import Solver
from tests.layers import flownet_reference as ref

DATA = Path(__file__).parent / "data" / "pwcnet"
f32 = np.float32


def _loss(text, shapes, net=None):
    lp = text_format.Parse(f'name: "loss" {text}', caffe_pb2.LayerParameter())
    cls = get_layer_class(lp.type)
    return cls(lp, shapes, net=net) if net is not None else cls(lp, shapes)


def _pair(r, shape, dtype):
    a = r.standard_normal(shape).astype(dtype)
    b = r.standard_normal(shape).astype(dtype)
    a[0, 0, 0, :2] = np.nan  # NaNs are masked out
    b[0, 1, 1, 1] = np.nan
    a[1, 0, 1, 0] = b[1, 0, 1, 0]  # an exact zero difference: the kernel's sign is -1 there
    a[1, 1, 0, 0] = b[1, 1, 0, 0] + f32(0.02)  # below the plateau
    return a, b


L1 = [{}, {"l2_per_location": True}, {"l2_per_location": True, "plateau": 0.5},
      {"plateau": 0.05, "normalize_by_num_entries": True},
      {"l2_per_location": True, "l2_prescale_by_channels": True, "normalize_by_num_entries": True, "epsilon": 0.001},
      {"l2_per_location": True, "epsilon": 0.0}]


@pytest.mark.parametrize("p", L1)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flownet_l1_loss_matches_the_kernels(p, dtype):
    r = np.random.default_rng(len(p))
    a, b = _pair(r, (2, 3, 3, 4), dtype)
    fields = " ".join(f"{k}: {str(v).lower()}" for k, v in p.items())
    layer = _loss(f'type: "L1Loss" bottom: "a" bottom: "b" top: "loss" l1_loss_param {{ {fields} }}', [a.shape, b.shape])
    assert layer.flownet and layer.reshape([a.shape, b.shape]) == [()]
    at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    loss = layer(at, bt)
    loss.backward(torch.tensor(0.7, dtype=loss.dtype))
    want, dd = ref.l1_loss(a, b, {k: float(f32(v)) if isinstance(v, float) else v for k, v in p.items()}, 0.7)
    tol = 1e-5 if dtype == np.float32 else 1e-12  # measured: 4.8e-7 (float32), 2.2e-16 (float64)
    assert float(loss.detach()) == pytest.approx(float(want), rel=tol)
    np.testing.assert_allclose(at.grad.numpy(), dd, rtol=tol, atol=tol)
    np.testing.assert_allclose(bt.grad.numpy(), -dd, rtol=tol, atol=tol)
    assert np.isfinite(at.grad.numpy()).all() or p.get("epsilon") == 0.0


def test_flownet_l1_single_bottom_and_the_zero_sign():
    d = np.array([[[[0.5, -2.0], [0.0, np.nan]]]])
    layer = _loss('type: "L1Loss" bottom: "d" top: "loss"', [d.shape])  # one bottom: FlowNet's form
    dt = torch.tensor(d, requires_grad=True)
    loss = layer(dt)
    loss.backward()
    assert float(loss.detach()) == 2.5
    np.testing.assert_array_equal(dt.grad.numpy(), [[[[1.0, -1.0], [-1.0, 0.0]]]])  # 0 -> -1 (the kernel's sign)


def test_l1loss_dispatch_keeps_nvcaffe_detectnet():
    r = np.random.default_rng(1)
    a, b = r.standard_normal((2, 3, 2, 2)), r.standard_normal((2, 12))
    nv = _loss('type: "L1Loss" bottom: "a" bottom: "b" top: "loss"', [a.shape, b.shape])
    assert not nv.flownet and float(nv(torch.tensor(a), torch.tensor(b))) == pytest.approx(np.abs(a.reshape(2, 12) - b).sum() / 2)
    net = caffe_pb2.NetParameter()
    net.layer.add(name="c", type="Correlation")  # a FlowNet type in the net: its L1Loss is FlowNet's
    fl = _loss('type: "L1Loss" bottom: "a" bottom: "b" top: "loss"', [a.shape, a.shape], net=NetSoFar(net))
    assert fl.flownet
    net.lineage = "upstream"
    assert not _loss('type: "L1Loss" bottom: "a" bottom: "b" top: "loss"', [a.shape, a.shape], net=NetSoFar(net)).flownet
    with pytest.raises(LayerSetupError, match="same shape"):
        _loss('type: "L1Loss" bottom: "a" bottom: "b" top: "loss" l1_loss_param { }', [a.shape, b.shape]).reshape(
            [a.shape, b.shape])


def test_one_bottom_eltwise_only_in_flownet_nets():
    """flownet2's Eltwise takes one bottom (MinBottomBlobs 1): PWC-Net scales flows by a one-bottom SUM."""
    text = 'type: "Eltwise" bottom: "f" top: "g" eltwise_param { operation: SUM coeff: 0.625 }'
    net = caffe_pb2.NetParameter()
    net.layer.add(name="w", type="Warp")
    layer = _loss(text, [(1, 2, 3, 3)], net=NetSoFar(net))
    x = torch.randn(1, 2, 3, 3)
    assert torch.equal(layer(x), x * 0.625)
    with pytest.raises(LayerSetupError, match="at least 2 bottom blob.*received 1"):
        _loss(text, [(1, 2, 3, 3)])  # no net: BVLC's rule
    net.lineage = "upstream"
    with pytest.raises(LayerSetupError, match="at least 2 bottom blob"):
        _loss(text, [(1, 2, 3, 3)], net=NetSoFar(net))


@pytest.mark.parametrize("p,q,pe,qe,prescale,entries", [(2.0, 0.5, 0.0, 0.01, False, False), (1.0, 1.0, 0.0, 0.01, False, True),
                                                       (1.5, 0.4, 0.1, 0.01, True, False), (0.5, 2.0, 0.0, 0.0, False, False)])
def test_lpq_loss_matches_the_kernels(p, q, pe, qe, prescale, entries):
    r = np.random.default_rng(int(p * 10))
    a, b = _pair(r, (2, 3, 3, 4), np.float64)
    if p < 1:  # the shift-0 branch of p's PowerLayer divides by |d|: keep d off 0
        a[1, 0, 1, 0] += 0.5
    layer = _loss(f'type: "LpqLoss" bottom: "a" bottom: "b" top: "loss" lpq_loss_param {{ p: {p} q: {q} p_epsilon: {pe} '
                  f'q_epsilon: {qe} l2_prescale_by_channels: {str(prescale).lower()} '
                  f'normalize_by_num_entries: {str(entries).lower()} }}', [a.shape, b.shape])
    at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    loss = layer(at, bt)
    loss.backward(torch.tensor(1.3, dtype=torch.float64))
    want, dd = ref.lpq_loss(a, b, *(float(f32(v)) for v in (p, q, pe, qe)), prescale, entries, 1.3)  # float fields
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-12)
    np.testing.assert_allclose(at.grad.numpy(), dd, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bt.grad.numpy(), -dd, rtol=1e-12, atol=1e-14)


def test_lpq_schedule_follows_the_solver_iteration():
    r = np.random.default_rng(2)
    a, b = r.standard_normal((1, 2, 2, 2)), r.standard_normal((1, 2, 2, 2))
    layer = _loss('type: "LpqLoss" bottom: "a" bottom: "b" top: "loss" lpq_loss_param { pq_episode_starts_at_iter: 0 '
                  'pq_episode_starts_at_iter: 10 pq_episode_starts_at_iter: 20 p: 1 p: 2 p: 2 q: 1 q: 1 q: 0.5 }',
                  [a.shape, b.shape])

    def value(p, q):
        return float(ref.lpq_loss(a, b, p, q, 0.0, float(f32(0.01)))[0])

    ta, tb = torch.tensor(a), torch.tensor(b)
    assert float(layer(ta, tb)) == pytest.approx(value(1, 1))
    layer.set_iteration(12, 100)
    assert float(layer(ta, tb)) == pytest.approx(value(2, 1))
    layer.set_iteration(5, 100)  # the fork's queue never moves back (its Test() resets the train net's iter)
    assert float(layer(ta, tb)) == pytest.approx(value(2, 1))
    layer.set_iteration(25, 100)
    assert float(layer(ta, tb)) == pytest.approx(value(2, 0.5)) and layer.resume_state() == {"step": 2}
    for fields, match in (("p: 1 p: 2 q: 1", "incompatible sizes"),
                          ("pq_episode_starts_at_iter: 5 p: 1 q: 1", "first entry.*must be 0"),
                          ("pq_episode_starts_at_iter: 0 pq_episode_starts_at_iter: 0 p: 1 p: 2 q: 1 q: 1", "not ordered"),
                          ("", "must not be empty")):
        with pytest.raises(LayerSetupError, match=match):
            _loss(f'type: "LpqLoss" bottom: "a" top: "loss" lpq_loss_param {{ {fields} }}', [a.shape])


def test_lpq_schedule_under_a_solver(tmp_path):
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "x" type: "DummyData" top: "x" top: "t" dummy_data_param { shape { dim: 2 dim: 3 } '
        'shape { dim: 2 dim: 2 } data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0.5 } } }'
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 '
        'weight_filler { type: "constant" value: 0.1 } } }'
        'layer { name: "loss" type: "LpqLoss" bottom: "y" bottom: "t" top: "loss" lpq_loss_param { '
        "pq_episode_starts_at_iter: 0 pq_episode_starts_at_iter: 2 p: 1 p: 2 q: 1 q: 1 } }")
    solver = caffe_pb2.SolverParameter(net=str(tmp_path / "net.prototxt"), base_lr=0.01, lr_policy="fixed", display=0,
                                       snapshot=0, solver_mode=caffe_pb2.SolverParameter.CPU)
    s = Solver(solver, device="cpu")
    loss = s.net.layer("loss")
    steps = []
    for _ in range(3):
        s.step(1)
        steps.append(loss.step)
    assert steps == [0, 0, 1]  # iteration 2 starts the second episode (p = 2)


# -- PWC-Net's nets -----------------------------------------------------------------------------------------------
def _substituted(name, h=64, w=64):
    vals = {"TARGET_WIDTH": w, "TARGET_HEIGHT": h, "ADAPTED_WIDTH": w, "ADAPTED_HEIGHT": h,
            "SCALE_WIDTH": 1.0, "SCALE_HEIGHT": 1.0}
    return re.sub(r"\$([A-Z_]+)", lambda m: str(vals[m.group(1)]), (DATA / name).read_text())


@pytest.mark.parametrize("name", sorted(str(p.relative_to(DATA)) for p in DATA.rglob("*.prototxt")))
def test_every_pwcnet_prototxt_parses(name):
    msg = caffe_pb2.SolverParameter() if "solver" in name else caffe_pb2.NetParameter()
    text_format.Parse(_substituted(name), msg)
    if isinstance(msg, caffe_pb2.NetParameter):
        flownet_types = {"Correlation", "Warp", "Resample", "Downsample", "DataAugmentation", "L1Loss", "CustomData"}
        assert flownet_types & {lp.type for lp in msg.layer}


def _with_inputs(net, drop, inputs):
    """``net`` without the layers of types ``drop`` (and the image-scaling Eltwises before them), with Input
    layers for ``inputs`` (name -> shape) in front."""
    out = caffe_pb2.NetParameter(name=net.name)
    for name, shape in inputs.items():
        lp = out.layer.add(name=name, type="Input")
        lp.top.append(name)
        lp.input_param.shape.add(dim=shape)
    out.layer.extend(lp for lp in net.layer if lp.type not in drop and not lp.name.startswith(("Eltwise1", "Eltwise2"))
                     and not lp.name.endswith("_subtract"))
    return out


def test_pwcnet_test_net_builds_and_runs():
    src = text_format.Parse(_substituted("model/pwc_net_test.prototxt", 64, 64), caffe_pb2.NetParameter())
    net = Net(_with_inputs(src, {"ImageData", "Silence", "DataAugmentation", "FLOWriter"},
                           {"img0_nomean": [1, 3, 64, 64], "img1_nomean": [1, 3, 64, 64]}))
    r = np.random.default_rng(3)
    img0 = torch.tensor(r.random((1, 3, 64, 64)), dtype=torch.float32)
    img1 = torch.roll(img0, shifts=(1, 2), dims=(2, 3))
    with torch.no_grad():
        net.forward({"img0_nomean": img0, "img1_nomean": img1})
    flow = net.blob("predict_flow_final")
    assert tuple(flow.shape) == (1, 2, 64, 64) and torch.isfinite(flow).all() and flow.abs().max() > 0
    assert tuple(net.blob("Correlation1").shape) == (1, 81, 1, 1)  # the coarsest level: 64 / 64
    assert tuple(net.blob("warped_image5").shape) == tuple(net.blob("conv1_5_b").shape)
    diag = net.layer("Convolution6").blobs[0]
    np.testing.assert_array_equal(diag.detach().numpy()[:, :, 0, 0], np.eye(2))  # the "diagonal" filler, 1.0 each


def test_pwcnet_train_net_takes_solver_steps(tmp_path):
    # shrunk: every convolution's num_output / 8 (the flow predictors keep their 2), so the steps stay quick
    text = re.sub(r"num_output: (\d+)", lambda m: f"num_output: {max(2, int(m.group(1)) // 8)}",
                  _substituted("model/train.prototxt"))
    src = text_format.Parse(text, caffe_pb2.NetParameter())
    net = _with_inputs(src, {"CustomData", "DataAugmentation", "GenerateAugmentationParameters", "FlowAugmentation",
                             "Silence"}, {"img0_aug": [1, 3, 128, 128], "img1_aug": [1, 3, 128, 128],
                                          "flow_gt_aug": [1, 2, 128, 128]})  # level 6: 2 x 2
    (tmp_path / "train.prototxt").write_text(text_format.MessageToString(net))
    solver = text_format.Parse((DATA / "model/solver.prototxt").read_text(), caffe_pb2.SolverParameter())
    solver.net = str(tmp_path / "train.prototxt")
    solver.snapshot, solver.display, solver.base_lr, solver.random_seed = 0, 0, 1e-4, 7
    solver.solver_mode = caffe_pb2.SolverParameter.CPU
    s = Solver(solver, device="cpu")
    assert all(layer.flownet for layer in s.net.layers if layer.type_name == "L1Loss")
    r = np.random.default_rng(4)
    img0 = torch.tensor(r.random((1, 3, 128, 128)), dtype=torch.float32)
    s.net.set_blob("img0_aug", img0)
    s.net.set_blob("img1_aug", torch.roll(img0, shifts=(0, 1), dims=(2, 3)))
    s.net.set_blob("flow_gt_aug", torch.full((1, 2, 128, 128), 20.0).index_fill_(1, torch.tensor([1]), 0.0))
    losses = []
    for _ in range(3):
        s.step(1)
        losses.append(float(s.net.loss.detach()))
    assert all(np.isfinite(losses)) and len(set(losses)) == len(losses), losses
    assert losses[-1] < losses[0], losses
