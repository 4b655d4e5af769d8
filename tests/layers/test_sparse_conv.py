"""The scnn branch's conv_mode (LOWERED_CCNMM, LOWERED_CSRMM): the same outputs as the dense convolution
(a NumPy transcription of the branch's squeeze + GEMM + dispatch for CCNMM), read again whenever the weights
change (torch writes, solver updates, loading, pycaffe's NumPy views), dense while a graph is recorded."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from neocaffe.layers import get_layer_class, sparse_conv
from neocaffe.layers.base import TEST
from neocaffe.proto import caffe_pb2

MODES = ["LOWERED_CCNMM", "LOWERED_CSRMM"]


@pytest.fixture(autouse=True)
def always_sparse(request, monkeypatch):
    """CCNMM computes sparse however little it drops (its rule is tested on its own, below)."""
    if "keeps_its_rule" not in request.node.name:
        monkeypatch.setattr(sparse_conv, "MAX_KEPT_FRACTION", 1.0)
        monkeypatch.setattr(sparse_conv, "MIN_SPARSE_MACS", 0)


def conv_layer(mode: str, shape, num_output: int, k: int, *, group=1, stride=1, pad=0, dilation=1, bias=True):
    text = (f'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ num_output: {num_output} '
            f'kernel_size: {k} group: {group} stride: {stride} pad: {pad} dilation: {dilation} '
            f'bias_term: {str(bias).lower()} conv_mode: {mode} weight_filler {{ type: "gaussian" std: 1 }} '
            f'bias_filler {{ type: "gaussian" std: 1 }} }}')
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class("Convolution")(p, [tuple(shape)], TEST)


def structured_zeros(w: torch.Tensor, group: int, seed: int) -> None:
    """SSL's patterns in place: whole filters, whole columns (channel x position) per group, a few lone zeros."""
    g = torch.Generator().manual_seed(seed)
    o_g = w.shape[0] // group
    with torch.no_grad():
        m = w.view(group, o_g, -1)
        m[:, torch.randperm(o_g, generator=g)[: o_g // 3]] = 0
        m[:, :, torch.randperm(m.shape[2], generator=g)[: m.shape[2] // 2]] = 0
        w.view(-1)[torch.randperm(w.numel(), generator=g)[:5]] = 0


def dense(layer, x: torch.Tensor) -> torch.Tensor:
    b = layer.blobs[1] if layer.bias_term else None
    return F.conv2d(x, layer.blobs[0], b, layer.stride, layer.pad, layer.dilation, layer.group).detach()


def branch_ccnmm(x: np.ndarray, w: np.ndarray, b, group, stride, pad, dilation) -> np.ndarray:
    """base_conv_layer.cpp's LOWERED_CCNMM in NumPy: im2col, per group drop the all-zero columns
    (caffe_cpu_if_all_zero along columns) and rows, GEMM of the squeezed matrices, dispatch the rows."""
    n, c, h, wd = x.shape
    o, k = w.shape[0], w.shape[2]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    wo = (wd + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    out = np.zeros((n, o, ho * wo), np.float64)
    c_g, o_g = c // group, o // group
    for s in range(n):
        col = np.empty((c * k * k, ho * wo))
        for ch in range(c):
            for i in range(k):
                for j in range(k):
                    win = xp[s, ch, i * dilation: i * dilation + stride * (ho - 1) + 1: stride,
                             j * dilation: j * dilation + stride * (wo - 1) + 1: stride]
                    col[(ch * k + i) * k + j] = win.reshape(-1)
        for g in range(group):
            mat = w[g * o_g:(g + 1) * o_g].reshape(o_g, -1).astype(np.float64)
            keep_c = ~np.all(mat == 0, axis=0)
            keep_r = ~np.all(mat == 0, axis=1)
            squeezed = mat[keep_r][:, keep_c]
            lowered = col[g * c_g * k * k:(g + 1) * c_g * k * k][keep_c]
            out[s, g * o_g + np.flatnonzero(keep_r)] = squeezed @ lowered
    if b is not None:
        out += b.reshape(1, -1, 1)
    return out.reshape(n, o, ho, wo)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("geom", [
    dict(group=1, stride=1, pad=0, dilation=1, bias=True),
    dict(group=2, stride=2, pad=1, dilation=1, bias=True),
    dict(group=3, stride=1, pad=2, dilation=2, bias=False),
])
@pytest.mark.parametrize("batch", [1, 3])
def test_equals_the_dense_convolution_and_the_branchs_loops(mode, geom, batch):
    shape = (batch, 6, 9, 8)
    layer = conv_layer(mode, shape, 12, 3, **geom)
    structured_zeros(layer.blobs[0], geom["group"], seed=batch)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = layer(x)
    assert layer.sparse is not None and layer.sparse.mode == mode
    assert layer.sparse._weights_key is not None  # the sparse path ran
    ref = dense(layer, x)
    scale = ref.abs().max().item()
    assert (y - ref).abs().max().item() <= 2e-6 * scale
    b = layer.blobs[1].detach().numpy() if geom["bias"] else None
    loops = branch_ccnmm(x.numpy().astype(np.float64), layer.blobs[0].detach().numpy(), b, geom["group"],
                         geom["stride"], geom["pad"], geom["dilation"])
    np.testing.assert_allclose(y.numpy(), loops, rtol=0, atol=2e-6 * scale)
    # the dropped filters give exactly the bias (or 0)
    dropped = (layer.blobs[0].detach().flatten(1) == 0).all(1)
    assert dropped.any()
    want = layer.blobs[1].detach()[dropped] if geom["bias"] else torch.zeros(int(dropped.sum()))
    assert torch.equal(y[:, dropped], want.view(1, -1, 1, 1).expand_as(y[:, dropped]))


@pytest.mark.parametrize("stride_h", [1, 2])
def test_row_runs_lowering_equals_dense(stride_h):
    """Batch 1, stride 1 across, >= ROW_RUNS output columns: the lowering copies runs of output rows."""
    text = ('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 10 kernel_size: 3 '
            f'stride_h: {stride_h} stride_w: 1 pad: 1 dilation: 2 conv_mode: LOWERED_CCNMM '
            'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } }')
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = get_layer_class("Convolution")(p, [(1, 4, 17, 21)], TEST)
    structured_zeros(layer.blobs[0], 1, seed=4)
    x = torch.randn(1, 4, 17, 21)
    with torch.no_grad():
        y = layer(x)
    assert layer.sparse._index[(1, 4, 17, 21)][2] == "runs"
    ref = dense(layer, x)
    assert (y - ref).abs().max() <= 2e-6 * ref.abs().max()


@pytest.mark.parametrize("group,batch", [(1, 1), (2, 3)])
def test_a_1x1_kernel_gathers_whole_channels(group, batch):
    layer = conv_layer("LOWERED_CCNMM", (batch, 8, 9, 20), 12, 1, group=group)
    structured_zeros(layer.blobs[0], group, seed=7)
    x = torch.randn(batch, 8, 9, 20)
    with torch.no_grad():
        y = layer(x)
    assert layer.sparse._index[(batch, 8, 9, 20)][2] == "channels"
    ref = dense(layer, x)
    assert (y - ref).abs().max() <= 2e-6 * ref.abs().max()


def test_ccnmm_keeps_its_rule_dense_where_squeezing_cannot_pay():
    """Dense (the layer's usual kernel) above MAX_KEPT_FRACTION kept or under MIN_SPARSE_MACS per call."""
    layer = conv_layer("LOWERED_CCNMM", (1, 16, 30, 30), 32, 3, pad=1)  # 4.1M multiply-adds per image
    x = torch.randn(1, 16, 30, 30)
    with torch.no_grad():
        assert not layer.sparse.applies(x, layer.blobs[0], layer.blobs[1])  # nothing to drop
        m = layer.blobs[0].view(32, -1)
        m[:, 20:] = 0  # 20 of 144 columns kept: 14%
        layer.weights_changed()
        assert layer.sparse.applies(x, layer.blobs[0], layer.blobs[1])
        small = torch.randn(1, 16, 4, 4)  # 4 x 4 outputs: 74k multiply-adds
        assert not layer.sparse.applies(small, layer.blobs[0], layer.blobs[1])
        m[:, :100] = 1  # 100 columns kept: 69%
        layer.weights_changed()
        assert not layer.sparse.applies(x, layer.blobs[0], layer.blobs[1])
        assert torch.equal(layer(x), dense(layer, x))


@pytest.mark.parametrize("mode", MODES)
def test_an_all_zero_weight_gives_the_bias_and_a_dense_one_the_convolution(mode):
    layer = conv_layer(mode, (2, 4, 5, 5), 6, 3, group=2)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        layer.blobs[0].zero_()
        y = layer(x)
        assert torch.equal(y, layer.blobs[1].view(1, -1, 1, 1).expand(2, 6, 3, 3))
        layer.blobs[0].normal_()  # no zero at all: every row and column kept
        layer.weights_changed()
        y = layer(x)
    ref = dense(layer, x)
    assert (y - ref).abs().max() <= 2e-6 * ref.abs().max()


@pytest.mark.parametrize("mode", MODES)
def test_weights_written_later_are_read_again(mode):
    layer = conv_layer(mode, (1, 4, 6, 6), 8, 3)
    structured_zeros(layer.blobs[0], 1, seed=1)
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        layer(x)
        # an in-place write, then the call its writer owes: a dropped filter comes back
        layer.blobs[0][(layer.blobs[0].flatten(1) == 0).all(1).nonzero()[0, 0]] = 1.5
        layer.weights_changed()
        y = layer(x)
    assert (y - dense(layer, x)).abs().max() <= 2e-6 * dense(layer, x).abs().max()
    # another tensor (Parameter.data replaced): read again without being told
    with torch.no_grad():
        layer.blobs[0].data = torch.randn_like(layer.blobs[0])
        y = layer(x)
    assert (y - dense(layer, x)).abs().max() <= 2e-6 * dense(layer, x).abs().max()
    # a NumPy view, as pycaffe's arrays are: read again once told
    arr = layer.blobs[0].detach().numpy()
    arr[...] = np.random.default_rng(0).standard_normal(arr.shape)
    layer.weights_changed()
    with torch.no_grad():
        y = layer(x)
    assert (y - dense(layer, x)).abs().max() <= 2e-6 * dense(layer, x).abs().max()


@pytest.mark.parametrize("mode", MODES)
def test_a_recorded_forward_is_the_dense_convolution_with_its_gradients(mode):
    layer = conv_layer(mode, (2, 3, 5, 5), 4, 3, pad=1)
    structured_zeros(layer.blobs[0], 1, seed=2)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    y = layer(x)
    assert layer.sparse._weights_key is None  # nothing squeezed: the dense kernel ran
    y.square().sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    w2, b2 = layer.blobs[0].detach().clone().requires_grad_(True), layer.blobs[1].detach().clone().requires_grad_(True)
    F.conv2d(x2, w2, b2, 1, 1).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(layer.blobs[0].grad, w2.grad)


NET = """
name: "ssl" input: "data" input_shape { dim: 2 dim: 3 dim: 12 dim: 12 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 %s weight_filler { type: "gaussian" std: 0.5 }
                      bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 6 kernel_size: 3 group: 2 stride: 2 %s weight_filler { type: "gaussian" std: 0.5 } } }
"""


def test_a_deploy_net_with_conv_mode_gives_the_dense_nets_outputs_through_pycaffe(tmp_path):
    caffe = pytest.importorskip("caffe")
    plain, sparse = tmp_path / "plain.prototxt", tmp_path / "sparse.prototxt"
    plain.write_text(NET % ("", ""))
    sparse.write_text(NET % ("conv_mode: LOWERED_CCNMM", "conv_mode: LOWERED_CSRMM"))
    a, b = caffe.Net(str(plain), caffe.TEST), caffe.Net(str(sparse), caffe.TEST)
    for name in ("conv1", "conv2"):
        w = a.params[name][0].data
        structured_zeros(torch.from_numpy(w), 2 if name == "conv2" else 1, seed=3)  # in place, a NumPy view
        for k in range(len(a.params[name])):
            b.params[name][k].data[...] = a.params[name][k].data
    x = np.random.default_rng(1).standard_normal((2, 3, 12, 12)).astype(np.float32)
    ya = a.forward(data=x)["conv2"].copy()
    yb = b.forward(data=x)["conv2"].copy()
    np.testing.assert_allclose(yb, ya, rtol=0, atol=2e-6 * np.abs(ya).max())
    assert all(b.layer_dict[n].module.sparse._weights_key is not None for n in ("conv1", "conv2"))  # computed sparse
    # net surgery through the arrays (pycaffe's idiom): the next forward reads the new weights
    b.params["conv1"][0].data[0] = 0.25
    a.params["conv1"][0].data[0] = 0.25
    np.testing.assert_allclose(b.forward(data=x)["conv2"], a.forward(data=x)["conv2"], rtol=0,
                               atol=2e-6 * np.abs(ya).max())


def test_a_test_net_sharing_trained_weights_reads_each_update(tmp_path):
    """After solver updates the test net's conv_mode layer squeezes the new weights, not the ones it saw
    first (the branch would keep its first squeeze), and so does the train net's own unrecorded forward."""
    caffe = pytest.importorskip("caffe")
    from tests.pycaffe.nets import simple_net_text, solver_file

    net = tmp_path / "net.prototxt"
    net.write_text(simple_net_text().replace("kernel_size: 2 pad: 3", "kernel_size: 2 pad: 3 conv_mode: LOWERED_CCNMM"))
    s = caffe.SGDSolver(solver_file(tmp_path, str(net), test_interval=1, test_iter=1))
    test = s.test_nets[0]
    for _ in range(3):
        w, b = (torch.from_numpy(s.net.params["conv"][k].data.copy()) for k in range(2))
        s.step(1)  # tests with these weights (a forward that records nothing), then updates them
        assert test.layer_dict["conv"].module.sparse._weights_key is not None
        ref = F.conv2d(torch.from_numpy(test.blobs["data"].data.copy()), w, b, 1, 3).numpy()
        np.testing.assert_allclose(test.blobs["conv"].data, ref, rtol=0, atol=2e-6 * np.abs(ref).max())
    train = s.net._net
    with torch.no_grad():
        train.forward()  # squeezes the weights of now
    s.step(1)
    with torch.no_grad():
        train.forward()
    w, b = (train.layer("conv").blobs[k].detach() for k in range(2))
    ref = F.conv2d(train.blob("data"), w, b, 1, 3)
    assert train.layer("conv").sparse._weights_key is not None
    assert (train.blob("conv") - ref).abs().max() <= 2e-6 * ref.abs().max()


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [1, 4])
def test_cuda_sparse_modes_equal_dense(mode, batch):
    """On CUDA: the gather indices and squeezed (or CSR) weights live on the device; dense results."""
    shape = (batch, 8, 20, 19)
    layer = conv_layer(mode, shape, 16, 3, group=2, pad=1).cuda()
    structured_zeros(layer.blobs[0], 2, seed=6)
    x = torch.randn(shape, device="cuda")
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # fp32, as Net runs
        y = layer(x)
        ref = dense(layer, x)
    assert layer.sparse._weights_key is not None
    assert (y - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
