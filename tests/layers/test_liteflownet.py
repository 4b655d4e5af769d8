"""twhui/LiteFlowNet's layers (ExpMax, Grid, NegSquare, its Warp) against loop ports of the fork's kernels
(``tests/layers/liteflownet_reference.py``), the lineage that tells its Warp from PWC-Net's, and its released nets
(``tests/layers/data/liteflownet``, twhui/LiteFlowNet @ e7d6c43): they parse, the deploy nets build with random
weights and run, the training template (shrunk) takes solver steps."""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.net import Net
from neocaffe.layers.base import LayerSetupError, NetSoFar
from neocaffe.layers.lineage import descends, net_lineage
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from neocaffe.solver.solver import Solver
from tests.layers import liteflownet_reference as ref

DATA = Path(__file__).parent / "data" / "liteflownet"


def _layer(type_name, fields, shapes, bottoms=("a", "b"), tops=("c",), net=None):
    text = f'name: "l" type: "{type_name}" ' + " ".join(f'bottom: "{b}"' for b in bottoms[:len(shapes)])
    lp = text_format.Parse(text + " " + " ".join(f'top: "{t}"' for t in tops) + f" {fields}", caffe_pb2.LayerParameter())
    cls = get_layer_class(type_name)
    return cls(lp, shapes, net=net) if net is not None else cls(lp, shapes)


def _lite_net(*types, lineage=""):
    net = caffe_pb2.NetParameter(lineage=lineage)
    for t in types:
        net.layer.add(name=t.lower(), type=t)
    return NetSoFar(net)


def test_schema_carries_liteflownets_fields():
    lp = text_format.Parse('name: "e" type: "ExpMax" expmax_param { base: 2 scale: 0.5 shift: 1 } negsquare_param { } '
                           'l1_loss_param { power: 0.4 } lrn_param { shift: 2 }', caffe_pb2.LayerParameter())
    assert (lp.expmax_param.base, lp.l1_loss_param.power, lp.lrn_param.shift) == (2, pytest.approx(0.4), 2)
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name  # moved: 158/159 are flownet's (NUMBERING.md)
    assert (fields["expmax_param"].number, fields["negsquare_param"].number) == (5158, 4159)
    assert caffe_pb2.ExpMaxParameter().base == -1 and caffe_pb2.L1LossParameter().power == 0.5
    assert [f.name for f in caffe_pb2.GridParameter.DESCRIPTOR.fields] == ["height", "width", "batch"]


# -- ExpMax ---------------------------------------------------------------------------------------------------------
EXPMAX = [("", (2, 4, 3, 5)), ("expmax_param { base: 2 scale: -0.5 shift: 0.25 }", (3, 5, 2, 2)),
          ("expmax_param { scale: 1.5 shift: -1 }", (1, 6, 4, 3)), ("expmax_param { base: 0.5 }", (2, 3, 7))]


@pytest.mark.parametrize("fields,shape", EXPMAX)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_expmax_matches_the_kernels(fields, shape, dtype):
    r = np.random.default_rng(len(fields) + sum(shape))
    x = (r.standard_normal(shape) * 3).astype(dtype)
    layer = _layer("ExpMax", fields, [shape], bottoms=("x",), tops=("y",))
    p = layer.param.expmax_param
    inner, outer = ref.expmax_scales(p.base, p.scale, p.shift)
    assert (layer.inner, layer.outer) == (inner, outer)
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    td = r.standard_normal(shape).astype(dtype)
    y.backward(torch.tensor(td))
    want = ref.expmax_forward(x, inner, outer)
    tol = 1e-6 if dtype == np.float32 else 1e-14  # measured: 1.8e-7 relative (7.6e-6 on values to ~50; float32), 0 (float64)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=tol, atol=tol)
    np.testing.assert_allclose(xt.grad.numpy(), ref.expmax_backward(want, td, inner), rtol=tol * 4, atol=tol)
    assert np.abs(want).max() > 0
    if shape[0] > 1:  # the fork's quirk: image 0 alone has its channel maximum subtracted
        assert np.isclose(want[0], outer, rtol=1e-6).any(axis=0).all()  # exp(0) at each position's maximum


def test_expmax_nan_is_skipped_by_the_max_and_the_base_is_checked():
    x = np.array([[[[np.nan, 1.0]], [[2.0, -1.0]], [[0.5, np.nan]]]], dtype=np.float32)  # (1, 3, 1, 2)
    got = _layer("ExpMax", "", [x.shape], bottoms=("x",), tops=("y",))(torch.tensor(x)).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(x))
    np.testing.assert_allclose(got, ref.expmax_forward(x, 1, 1), rtol=1e-7)
    with pytest.raises(LayerSetupError, match=r"'l' \(ExpMax\): expmax_param.base must be strictly positive.*-2"):
        _layer("ExpMax", "expmax_param { base: -2 }", [x.shape], bottoms=("x",), tops=("y",))


# -- NegSquare ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("in_place", [False, True])
def test_negsquare_matches_the_kernels(in_place):
    r = np.random.default_rng(3 + in_place)
    x = r.standard_normal((2, 3, 4, 5)).astype(np.float32)
    td = r.standard_normal(x.shape).astype(np.float32)
    layer = _layer("NegSquare", "", [x.shape], bottoms=("x",), tops=("x" if in_place else "y",))
    assert layer.in_place == in_place
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    y.backward(torch.tensor(td))
    np.testing.assert_array_equal(y.detach().numpy(), ref.negsquare_forward(x))
    # not in place: the bottom's own diff (0: only this layer writes it) times -top_diff; in place: top_diff^2
    want = ref.negsquare_backward(td, None if in_place else np.zeros_like(x))
    np.testing.assert_array_equal(xt.grad.numpy(), want)
    assert (np.abs(want).max() > 0) == in_place


# -- Grid -----------------------------------------------------------------------------------------------------------
def test_grid_matches_the_fork_and_follows_the_bottom():
    layer = _layer("Grid", "", [(2, 2, 3, 4)], bottoms=("flow",), tops=("gxy",))
    for shape in ((2, 2, 3, 4), (1, 5, 6, 2), (3, 2, 1, 7)):
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        g = layer(x)
        assert layer.reshape([shape]) == [tuple(g.shape)] and g.dtype == torch.float64 and not g.requires_grad
        np.testing.assert_array_equal(g.numpy(), ref.grid_forward(shape[0], shape[2], shape[3], np.float64))
    assert not layer.allow_force_backward(0)


# -- LiteFlowNet's Warp ---------------------------------------------------------------------------------------------
def _coords(r, shape, integer=False):
    n, _, h, w = shape
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)))[None].repeat(n, 0)
    flow = np.floor(r.uniform(-3, 3, shape)) if integer else r.uniform(-2.5, 2.5, shape)
    return grid + flow  # some samples, or some of their corners, past the border


def _run(layer, a, b, td):
    at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    y = layer(at, bt)
    y.backward(torch.tensor(td))
    return y.detach().numpy(), at.grad.numpy(), bt.grad.numpy()


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_liteflownet_warp_matches_the_kernels(dtype, integer):
    r = np.random.default_rng(7 + integer)
    shape = (2, 3, 5, 6)
    u, xy = r.standard_normal(shape).astype(dtype), _coords(r, (2, 2, 5, 6), integer).astype(dtype)
    xy[0, 0, 0, 0], xy[0, 1, 0, 0] = -0.5, 4.5  # a sample half outside in x (left) and y (bottom)
    layer = _layer("Warp", "", [u.shape, xy.shape], net=_lite_net("Grid"))
    assert layer.coords
    td = r.standard_normal(shape).astype(dtype)
    top, du, dxy = _run(layer, u, xy, td)
    want = ref.warp_forward_gpu(u, xy)
    wu, wxy = ref.warp_backward_gpu(u, xy, td)
    # measured (float32 / float64): 0 / 0 (forward), 1.2e-7 / 2.2e-16 (U's diff), 4.8e-7 / 8.9e-16 (the coordinates')
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(top, want, atol=tol)
    np.testing.assert_allclose(du, wu, atol=tol)
    np.testing.assert_allclose(dxy, wxy, atol=tol * 4)
    np.testing.assert_allclose(top, ref.warp_forward_cpu(u, xy), atol=1e-5)  # the CPU path agrees (float locals)
    assert (top == 0).any() and np.abs(wxy).max() > 0 and np.abs(want).max() > 0


def test_liteflownet_warp_gradient_checks_float64():
    r = np.random.default_rng(10)
    u = torch.tensor(r.standard_normal((1, 2, 4, 5)), requires_grad=True)
    xy = _coords(r, (1, 2, 4, 5))
    xy = torch.tensor(np.floor(xy) + np.clip(xy - np.floor(xy), 0.15, 0.85), requires_grad=True)  # off the pixel edges
    layer = _layer("Warp", "", [tuple(u.shape), tuple(xy.shape)], net=_lite_net(lineage="liteflownet"))
    assert torch.autograd.gradcheck(lambda a, b: layer(a, b), (u, xy), eps=1e-6, atol=1e-7)


def test_warp_takes_the_nets_lineage():
    shapes = [(1, 2, 4, 5), (1, 2, 4, 5)]
    assert not _layer("Warp", "", shapes).coords  # built alone: PWC-Net's
    assert not _layer("Warp", "", shapes, net=_lite_net("Correlation")).coords  # FlowNet / PWC-Net's nets
    for net in (_lite_net("Correlation", "ExpMax"), _lite_net("NegSquare"), _lite_net(lineage="liteflownet")):
        assert _layer("Warp", "", shapes, net=net).coords
    assert not _layer("Warp", "", shapes, net=_lite_net("Grid", lineage="flownet")).coords  # lineage: wins
    lite = _layer("Warp", "", shapes, net=_lite_net("Grid"))
    assert lite.reshape([(3, 4, 6, 7), (3, 2, 6, 7)]) == [(3, 4, 6, 7)]  # follows the bottoms
    with pytest.raises(LayerSetupError, match=r"sampling coordinates \(N, 2, H, W\).*\(1, 2, 4, 5\) and \(1, 2, 4, 4\)"):
        lite.reshape([(1, 2, 4, 5), (1, 2, 4, 4)])


def test_lineage_markers_of_a_base_yield_to_the_derived_lineage():
    assert descends("liteflownet", "flownet") and descends("flownet", "flownet")
    assert not descends("flownet", "liteflownet") and not descends("hed", "flownet") and not descends("", "flownet")
    assert net_lineage(_lite_net("Correlation", "DataAugmentation", "Grid", "ExpMax")) == "liteflownet"
    assert net_lineage(_lite_net("Correlation")) == "flownet"
    with pytest.raises(ValueError, match="several forks' own types"):
        net_lineage(_lite_net("Grid", "ImageLabelmapData"))  # unrelated lineages still need lineage:


def test_flownet_types_keep_flownets_semantics_in_liteflownet_nets():
    net = _lite_net("Grid")
    x = torch.randn(1, 2, 3, 3)
    one = _layer("Eltwise", "eltwise_param { operation: SUM coeff: 0.625 }", [x.shape], net=net)  # one bottom
    assert torch.equal(one(x), x * 0.625)
    assert _layer("L1Loss", "", [x.shape, x.shape], tops=("loss",), net=net).flownet
    assert _layer("L1Loss", "", [x.shape, x.shape], tops=("loss",), net=_lite_net(lineage="liteflownet")).flownet


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    r = np.random.default_rng(11)
    u = r.standard_normal((2, 8, 24, 32)).astype(np.float32)
    xy = _coords(r, (2, 2, 24, 32)).astype(np.float32)
    cases = [("Warp", (u, xy), _lite_net("Grid")), ("ExpMax", (u * 3,), None), ("NegSquare", (u,), None),
             ("Grid", (xy,), None)]
    for t, arrays, net in cases:
        layer = _layer(t, "", [a.shape for a in arrays], bottoms=("a", "b"), net=net)
        cpu_in = [torch.tensor(a, requires_grad=t != "Grid") for a in arrays]
        cuda_in = [torch.tensor(a, device="cuda", requires_grad=t != "Grid") for a in arrays]
        y_cpu, y_cuda = layer.cpu()(*cpu_in), layer.cuda()(*cuda_in)
        np.testing.assert_allclose(y_cuda.detach().cpu().numpy(), y_cpu.detach().numpy(), rtol=1e-5, atol=1e-5, err_msg=t)
        if t != "Grid":
            td = torch.tensor(r.standard_normal(tuple(y_cpu.shape)).astype(np.float32))
            y_cpu.backward(td)
            y_cuda.backward(td.cuda())
            for a, b in zip(cuda_in, cpu_in):
                np.testing.assert_allclose(a.grad.cpu().numpy(), b.grad.numpy(), rtol=1e-4, atol=1e-4, err_msg=t)


# -- the released nets ----------------------------------------------------------------------------------------------
def _substituted(name, h=64, w=96, out="out"):
    """The prototxt with the test script's $VARS$ filled as ``models/testing/test_batch.py`` fills them."""
    vals = {"ADAPTED_WIDTH": w, "ADAPTED_HEIGHT": h, "TARGET_WIDTH": w, "TARGET_HEIGHT": h, "SCALE_WIDTH": "1.00000000",
            "SCALE_HEIGHT": "1.00000000", "OUTFOLDER": f'"{out}"', "CNN": '"liteflownet-"'}
    return re.sub(r"\$([A-Z_]+)", lambda m: str(vals[m.group(1)]), (DATA / name).read_text())


@pytest.mark.parametrize("name", ["deploy.prototxt", "deploy_runtime_1024_448.prototxt", "train.prototxt.template",
                                  "solver.prototxt.template"])
def test_every_liteflownet_prototxt_parses(name):
    msg = caffe_pb2.SolverParameter() if "solver" in name else caffe_pb2.NetParameter()
    text_format.Parse(_substituted(name), msg)
    if isinstance(msg, caffe_pb2.NetParameter):
        assert net_lineage(NetSoFar(msg)) == "liteflownet"  # Grid is in every one of them


def _randomized(net, seed):
    """Random weights where the prototxt gives none (Caffe's default filler: 0); fillers it names are kept."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layers:
            for b in layer.blobs:
                if b.dim() == 4 and not b.any():
                    b.copy_(torch.randn(b.shape, generator=g) / b[0].numel() ** 0.5)


@pytest.mark.parametrize("h,w", [(64, 96), (64, 64)])  # 64: the smallest the pyramid allows (see below)
def test_deploy_net_builds_and_runs(tmp_path, h, w):
    """The released deploy net, its ImageData pair replaced by Input layers (the test script feeds one image pair);
    DataAugmentation (test-time mean), Resample, FLOWriter and the "diagonal" filler run as they are. 64 is the
    smallest size: at 32 level 6 is 1 x 1, and Downsample to a top of height 1 divides by zero in the fork."""
    src = text_format.Parse(_substituted("deploy.prototxt", h, w, tmp_path), caffe_pb2.NetParameter())
    net_param = caffe_pb2.NetParameter(name=src.name)
    for name in ("img0", "img1"):
        lp = net_param.layer.add(name=name, type="Input", top=[name])
        lp.input_param.shape.add(dim=[1, 3, h, w])
    net_param.layer.extend(lp for lp in src.layer if lp.type not in ("ImageData", "Silence"))
    start = time.perf_counter()
    net = Net(net_param)
    _randomized(net, 0)
    assert all(layer.coords for layer in net.layers if layer.type_name == "Warp")
    r = np.random.default_rng(3)
    img0 = torch.tensor(r.random((1, 3, h, w)) * 255, dtype=torch.float32)
    with torch.no_grad():
        net.forward({"img0": img0, "img1": torch.roll(img0, shifts=(1, 2), dims=(2, 3))})
    elapsed = time.perf_counter() - start
    flow = net.blob("final_flow")
    assert tuple(flow.shape) == (1, 2, h, w) and torch.isfinite(flow).all() and flow.abs().max() > 0
    assert tuple(net.blob("corr_L6").shape) == (1, 49, h // 32, w // 32)
    assert tuple(net.blob("exp_kernel_R_L2").shape) == (1, 49, h // 2, w // 2)
    np.testing.assert_array_equal(net.layer("ScaleMag_flow").blobs[0].detach().numpy()[:, :, 0, 0], np.eye(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["liteflownet-0000000.flo"]
    assert elapsed < 10, elapsed  # measured: ~0.2 s (build and forward, 2 CPU threads)


def test_runtime_net_builds_and_runs():
    text = _substituted("deploy_runtime_1024_448.prototxt").replace("dim: 1024 dim: 448", "dim: 64 dim: 96")
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()))
    _randomized(net, 1)
    r = np.random.default_rng(5)
    img0 = torch.tensor(r.random((1, 3, 64, 96)), dtype=torch.float32)
    with torch.no_grad():
        net.forward({"img0_nomean_resize": img0, "img1_nomean_resize": torch.roll(img0, shifts=(0, 1), dims=(2, 3))})
    flow = net.blob("flow_R_L2")
    assert tuple(flow.shape) == (1, 2, 32, 48) and torch.isfinite(flow).all() and flow.abs().max() > 0


def test_training_template_takes_solver_steps(tmp_path):
    # shrunk: the feature convolutions' num_output / 8 (the flow, distance and summing ones keep theirs), 96 x 64 crops
    text = re.sub(r"num_output: (32|64|96|128|192)\b", lambda m: f"num_output: {int(m.group(1)) // 8}",
                  _substituted("train.prototxt.template"))
    text = text.replace("crop_width: 768", "crop_width: 96").replace("crop_height: 384", "crop_height: 64")
    src = text_format.Parse(text, caffe_pb2.NetParameter())
    h, w = 72, 104
    net = caffe_pb2.NetParameter(name=src.name)
    for name, c in (("blob0", 3), ("blob1", 3), ("blob2", 2)):  # CustomData's image pair and flow
        lp = net.layer.add(name=name, type="Input", top=[name])
        lp.input_param.shape.add(dim=[1, c, h, w])
    net.layer.extend(lp for lp in src.layer if lp.type not in ("CustomData", "Silence"))
    (tmp_path / "train.prototxt").write_text(text_format.MessageToString(net))
    solver = text_format.Parse(_substituted("solver.prototxt.template"), caffe_pb2.SolverParameter())
    solver.net = str(tmp_path / "train.prototxt")
    solver.snapshot, solver.display, solver.random_seed, solver.test_initialization = 0, 0, 7, False
    solver.solver_mode = caffe_pb2.SolverParameter.CPU
    s = Solver(solver, device="cpu")
    assert all(layer.flownet for layer in s.net.layers if layer.type_name == "L1Loss")
    assert all(layer.coords for layer in s.net.layers if layer.type_name == "Warp")
    r = np.random.default_rng(4)
    img0 = torch.tensor(r.random((1, 3, h, w)) * 255, dtype=torch.float32)
    s.net.set_blob("blob0", img0)
    s.net.set_blob("blob1", torch.roll(img0, shifts=(0, 1), dims=(2, 3)))
    s.net.set_blob("blob2", torch.full((1, 2, h, w), 1.0).index_fill_(1, torch.tensor([1]), 0.0))
    before = [p.detach().clone() for p in s.net.layer("conv1").blobs]
    losses = []
    for _ in range(2):
        s.step(1)
        losses.append(float(s.net.loss.detach()))
    assert all(np.isfinite(losses)), losses
    assert any(not torch.equal(a, b) for a, b in zip(before, s.net.layer("conv1").blobs))


def test_l1loss_power_and_lrn_shift_are_applied():
    """LiteFlowNet's two changed fields: l1_loss_param.power (l1loss_layer.cpp: the per-location Power layer's
    power, FlowNet's 0.5 by default) and lrn_param.shift (lrn_layer.cpp: WITHIN_CHANNEL's Power shift, 1 by default)."""
    g = np.random.default_rng(4)
    a, b = g.normal(size=(2, 3, 4, 5)), g.normal(size=(2, 3, 4, 5))
    loss = _layer("L1Loss", "l1_loss_param { l2_per_location: true power: 0.3 epsilon: 0.01 }", [a.shape, b.shape],
                  tops=("l",))
    got = float(loss(torch.tensor(a), torch.tensor(b)))
    s = ((a - b) ** 2).sum(1)
    eps, pw = float(np.float32(0.01)), float(np.float32(0.3))  # the schema's float fields
    assert got == pytest.approx(((s + eps) ** pw).sum() / 2, rel=1e-12)
    x = g.normal(size=(2, 3, 6, 7)) * 2
    lrn = _layer("LRN", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL shift: 2.5 }",
                 [x.shape], bottoms=("x",), tops=("y",))
    xt = torch.tensor(x, requires_grad=True)
    y = lrn(xt)
    avg = torch.nn.functional.avg_pool2d(xt.detach() ** 2, 3, 1, 1, count_include_pad=True)
    torch.testing.assert_close(y.detach(), xt.detach() * (2.5 + 0.5 * avg) ** -0.75, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: lrn(t), (xt,), atol=1e-6)
