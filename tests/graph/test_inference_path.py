"""The lean inference path (graph.inference): the same blob values as the recording executors, bit for
bit with the same convolution kernel (within 1e-6 when a convolution takes the im2col kernel there,
layers.conv_kernel), with no autograd graph, in-place layers truly in place only where no one else holds the
tensor."""
from __future__ import annotations

import torch

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TEST
from neocaffe.layers import conv_kernel

NET = """name: 'n'
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: 'rin' type: 'ReLU' bottom: 'data' top: 'data' }
layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv'
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'relu' type: 'ReLU' bottom: 'conv' top: 'conv' }
layer { name: 'pool' type: 'Pooling' bottom: 'conv' top: 'pool' pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: 'a' type: 'ReLU' bottom: 'pool' top: 'pool' relu_param { negative_slope: 0.1 } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'pool' top: 'ip'
  inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'r2' type: 'ReLU' bottom: 'ip' top: 'ip' }
layer { name: 'sp' type: 'Split' bottom: 'ip' top: 's1' top: 's2' }
layer { name: 'r3' type: 'ReLU' bottom: 's1' top: 's1' }
layer { name: 'e' type: 'Eltwise' bottom: 's1' bottom: 's2' top: 'sum' }
layer { name: 'prob' type: 'Softmax' bottom: 'sum' top: 'prob' }
"""


def _pair():
    lean = Net(read_net(NET), TEST)
    rec = Net(read_net("force_backward: true\n" + NET), TEST)
    rec.copy_from(lean.to_weights())
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    return lean, rec, x


def test_lean_forward_equals_the_recording_one_bit_for_bit(monkeypatch):
    monkeypatch.setattr(conv_kernel, "im2col_wins", lambda *a: False)  # PyTorch's default kernel
    lean, rec, x = _pair()
    assert not lean.needs.any and rec.needs.any
    lean.forward({"data": x})
    rec.forward({"data": x})
    assert lean.recorded("conv") is None and rec.recorded("conv") is not None
    for name in rec.blob_names:
        assert torch.equal(lean.blob(name), rec.blob(name).detach()), name
    assert torch.equal(lean.blob("data"), x.clamp_min(0))
    lean.forward()  # the input was not rewritten by 'rin': a second forward gives the same
    assert torch.equal(lean.blob("prob"), rec.blob("prob").detach())


def test_lean_forward_with_the_im2col_kernel_is_within_1e6(monkeypatch):
    monkeypatch.setattr(conv_kernel, "im2col_wins", lambda *a: True)
    lean, rec, x = _pair()
    lean.forward({"data": x})
    rec.forward({"data": x})
    assert not rec.layers[2].kernels._by_key  # a recorded forward never takes it
    conv, st = lean.layers[2], lean.steps[2]
    w, b = conv.blobs[0], conv.blobs[1]
    with torch.no_grad():  # the lean path's convolution is the im2col kernel's, bit for bit
        want = torch._C._nn.thnn_conv2d(lean.blob(st.bottoms[0]), w, tuple(w.shape[2:]), b, conv.stride, conv.pad)
    assert torch.equal(lean.blob("conv"), torch.relu(want))  # 'relu' runs in place on it
    for name in rec.blob_names:
        want = rec.blob(name).detach()
        assert torch.allclose(lean.blob(name), want, rtol=0, atol=1e-6 * max(1.0, want.abs().max().item())), name


def test_relu_in_place_only_over_fresh_tensors():
    lean, _, _ = _pair()
    in_place = [st.name for st, on in zip(lean.steps, lean.lean.in_place) if on]
    # not 'rin' (its blob is the Input's, kept for every forward), not 'r3' (a Split's tops share
    # the tensor of its bottom)
    assert in_place == ["relu", "a", "r2"]


def test_no_grad_forward_of_a_training_net_forgets_its_graph():
    lean, rec, x = _pair()
    rec.set_keep_blob_diffs(False)
    rec.forward({"data": x})
    assert rec.backward_ready()
    with torch.no_grad():
        rec.forward({"data": x})
    assert not rec.backward_ready() and rec.recorded("conv") is None


def test_frozen_mode_traces_once_per_shape_and_stays_close_to_fp32():
    lean, rec, x = _pair()
    lean.set_frozen(True)
    with torch.no_grad():
        lean.forward({"data": x})
        rec.forward({"data": x})
        assert lean.frozen.failed is None and len(lean.frozen.cache) == 1
        ref = rec.blob("prob").detach()
        assert (lean.blob("prob") - ref).abs().max() <= 1e-5 * ref.abs().max()
        lean.forward({"data": 2 * x})
        assert len(lean.frozen.cache) == 1
        lean.forward({"data": torch.randn(3, 3, 9, 9)})
        assert len(lean.frozen.cache) == 2
        lean.copy_from(rec.to_weights())  # new weights: traced again
        assert len(lean.frozen.cache) == 0


def test_lean_kernels_follow_a_new_input_shape():
    """Kernels are built per bottom shape: after the input changes shape the lean path still equals
    the recording forward, and going back reuses nothing stale."""
    lean, rec, _ = _pair()
    g = torch.Generator().manual_seed(3)
    for shape in ((2, 3, 9, 9), (1, 3, 9, 9), (3, 3, 9, 9), (2, 3, 9, 9)):  # the InnerProduct fixes C, H, W
        x = torch.randn(shape, generator=g)
        lean.forward({"data": x})
        rec.forward({"data": x})
        for name in ("conv", "pool", "ip", "prob"):
            want = rec.blob(name).detach()
            assert lean.blob(name).shape == want.shape, name
            assert torch.allclose(lean.blob(name), want, rtol=0, atol=1e-6 * max(1.0, want.abs().max().item())), name
    conv_kernel_built_for = lean.lean.kernels[2][0]  # ((shape, dtype, device),) of its bottom
    assert tuple(conv_kernel_built_for[0][0]) == (2, 3, 9, 9)


ALIASES = """name: 'alias'
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'c'
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'flat' type: 'Flatten' bottom: 'c' top: 'f' }
layer { name: 'rf' type: 'ReLU' bottom: 'f' top: 'f' }
layer { name: 'conv2' type: 'Convolution' bottom: 'data' top: 'c2'
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'cat' type: 'Concat' bottom: 'c2' top: 'k' }
layer { name: 'bn' type: 'BatchNorm' bottom: 'k' top: 'k' }
layer { name: 'conv3' type: 'Convolution' bottom: 'data' top: 'c3'
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'bn3' type: 'BatchNorm' bottom: 'c3' top: 'c3' }
layer { name: 'sc3' type: 'Scale' bottom: 'c3' top: 'c3' scale_param { filler { type: 'gaussian' } bias_term: true
  bias_filler { type: 'gaussian' } } }
layer { name: 'r3' type: 'ReLU' bottom: 'c3' top: 'c3' relu_param { negative_slope: 0.2 } }
layer { name: 'resh' type: 'Reshape' bottom: 'c3' top: 'v' reshape_param { shape { dim: 0 dim: -1 } } }
"""


def test_in_place_layers_never_write_a_blob_another_blob_shares(monkeypatch):
    """A Flatten's top is a view of its bottom and a one-bottom Concat hands its bottom on: an
    in-place layer on their tops allocates, so no other blob changes under it; the
    BatchNorm+Scale+ReLU chain over a fresh convolution runs in place, equal to the recording forward."""
    monkeypatch.setattr(conv_kernel, "im2col_wins", lambda *a: False)
    lean = Net(read_net(ALIASES), TEST)
    g = torch.Generator().manual_seed(5)
    for layer in (lean.layers[7], lean.layers[9]):  # stored statistics: mean, variance sums, factor
        with torch.no_grad():
            layer.blobs[0].copy_(torch.randn(4, generator=g))
            layer.blobs[1].copy_(torch.rand(4, generator=g) + 0.5)
            layer.blobs[2].fill_(2.0)
    rec = Net(read_net("force_backward: true\n" + ALIASES), TEST)
    rec.copy_from(lean.to_weights())
    in_place = [st.name for st, on in zip(lean.steps, lean.lean.in_place) if on]
    assert in_place == ["bn3", "sc3", "r3"]
    x = torch.randn(2, 3, 6, 6, generator=g)
    lean.forward({"data": x})
    rec.forward({"data": x})
    for name in rec.blob_names:
        assert torch.equal(lean.blob(name), rec.blob(name).detach()), name
    assert (lean.blob("c") < 0).any() and (lean.blob("c2") < 0).any()  # not rewritten by 'rf', 'bn'
    assert lean.blob("v").data_ptr() == lean.blob("c3").data_ptr()  # one tensor through the chain


def test_lean_kernels_read_weights_copied_in_or_shared_after_they_were_built():
    """Kernels hold the Parameters, not their data: new weights (copy_from, share_with, pycaffe-style
    writes into a blob) show in the next steady forward."""
    lean, rec, x = _pair()
    lean.forward({"data": x})
    other = Net(read_net(NET), TEST)  # other random weights
    assert not torch.equal(other.layers[2].blobs[0], lean.layers[2].blobs[0])
    for update in ("copy_from", "share_with", "in place"):
        if update == "copy_from":
            lean.copy_from(other.to_weights())
        elif update == "share_with":
            other = Net(read_net(NET), TEST)
            lean.share_with(other)
        else:
            with torch.no_grad():
                other.layers[6].blobs[0].mul_(-1)  # the InnerProduct, through the shared storage
        lean.forward({"data": x})
        other.forward({"data": x})
        for name in ("conv", "ip", "prob"):
            assert torch.equal(lean.blob(name), other.blob(name)), (update, name)
