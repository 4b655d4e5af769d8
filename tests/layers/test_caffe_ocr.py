"""senlinuc/caffe_ocr's WarpCTCLoss and CTCGreedyDecoder forms (neocaffe/layers/ocr.py) against loop-by-loop NumPy
ports of the fork's code (tests/layers/caffe_ocr_reference.py); float64 gradient checks; a hand-written trimmed
equivalent of its ResNet BLSTM + CTC head (examples/ocr/resnet/ResNet-train_val.prototxt and deploy.prototxt: the
fork carries no licence file, so its prototxt is not copied) builds, runs and trains."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from neocaffe.graph.net import Net
from neocaffe.layers.base import TEST, TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import caffe_ocr_reference as ref


def _layer(text, shapes, phase=TRAIN):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(param.type)(param, shapes, phase)


def _loss(x, *rest, opts=""):
    names = "".join(f' bottom: "b{i}"' for i in range(len(rest)))
    layer = _layer(f'name: "ctc" type: "WarpCTCLoss" bottom: "x"{names} top: "loss" {opts}',
                   [x.shape] + [r.shape for r in rest]).double()
    xt = torch.tensor(x, requires_grad=True)
    out = layer(xt, *(torch.tensor(r) for r in rest))
    out.backward()
    return out.item(), xt.grad.numpy()


def test_two_bottoms_equal_the_forks_warp_ctc():
    r = np.random.default_rng(0)
    x = r.standard_normal((8, 4, 6))
    rows = np.array([[1, 2, 0, 0, 0], [3, 3, 3, 3, 0], [5, 0, 5, 1, 4], [2, 2, 2, 2, 2]], np.float64)
    # sequence 3 (2,2,2,2,2 with 4 repeats) needs 9 > 8 steps: cost 0 (counted), no diff
    loss, diff = _loss(x, rows)
    costs, grads = ref.warp_ctc(x, ref.labels_from_rows(rows, 0), [8] * 4, 0)
    assert costs[3] == 0 and np.all(diff[:, 3] == 0)
    assert loss == pytest.approx(ref.layer_loss(costs), rel=1e-12)
    np.testing.assert_allclose(diff, grads, rtol=1e-9, atol=1e-12)


def test_blank_index_set_and_truncated_labels():
    r = np.random.default_rng(1)
    x = r.standard_normal((7, 3, 5))
    rows = np.array([[0.9, 2.7, 4, 4], [1, 4, 4, 4], [4, 4, 4, 4]])  # truncated: 0, 2; blank 4 dropped
    loss, diff = _loss(x, rows, opts="ctc_loss_param { blank_index: 4 }")
    costs, grads = ref.warp_ctc(x, [[0, 2], [1], []], [7] * 3, 4)
    assert loss == pytest.approx(ref.layer_loss(costs), rel=1e-12)
    np.testing.assert_allclose(diff, grads, rtol=1e-9, atol=1e-12)


def test_four_bottoms_lengths_and_three_bottoms_indicators():
    r = np.random.default_rng(2)
    x = r.standard_normal((6, 2, 4))
    seq_len, lab_len = np.array([6.0, 4.0]), np.array([2.0, 3.0])
    lab = np.array([[1.0, 3], [2, 1], [0, 2]])  # (L, N)
    loss, diff = _loss(x, seq_len, lab_len, lab)
    costs, grads = ref.warp_ctc(x, [[1, 2], [3, 1, 2]], [6, 4], 0)
    assert loss == pytest.approx(ref.layer_loss(costs), rel=1e-12)
    np.testing.assert_allclose(diff, grads, rtol=1e-9, atol=1e-12)
    # ChWick's layout: indicators (T, N), targets (T, N) -1-terminated; blank 0 shifts the targets by 1
    ind = np.array([[0.0, 0], [1, 1], [1, 1], [1, 0], [1, 0], [1, 0]])
    tgt = np.array([[0.0, 2], [1, -1], [-1, -1], [-1, -1], [-1, -1], [-1, -1]])
    loss, diff = _loss(x, ind, tgt)
    costs, grads = ref.warp_ctc(x, [[1, 2], [3]], [6, 3], 0)
    assert loss == pytest.approx(ref.layer_loss(costs), rel=1e-12)
    np.testing.assert_allclose(diff, grads, rtol=1e-9, atol=1e-12)


def test_gradient_check_float64_and_loss_weight():
    r = np.random.default_rng(3)
    x = torch.tensor(r.standard_normal((6, 1, 5)), requires_grad=True)
    lab = torch.tensor([[1.0, 4, 4, 0]])
    layer = _layer('name: "ctc" type: "WarpCTCLoss" bottom: "x" bottom: "l" top: "loss"',
                   [tuple(x.shape), (1, 4)]).double()
    assert torch.autograd.gradcheck(lambda v: layer(v, lab), (x,), eps=1e-6, atol=1e-7)
    # the fork's diff ignores the loss weight (and the 1/num): a weight-2 layer passes the same diff
    heavy = _layer('name: "ctc" type: "WarpCTCLoss" bottom: "x" bottom: "l" top: "loss" loss_weight: 2',
                   [tuple(x.shape), (1, 4)]).double()
    g1 = torch.autograd.grad(layer(x, lab), x)[0]
    g2 = torch.autograd.grad(heavy(x, lab) * 2, x)[0]
    torch.testing.assert_close(g1, g2)


def test_errors():
    with pytest.raises(LayerSetupError, match="not a class"):
        _layer('name: "c" type: "WarpCTCLoss" bottom: "x" bottom: "l" top: "o" ctc_loss_param { blank_index: -1 }',
               [(4, 2, 3), (2, 3)])
    layer = _layer('name: "c" type: "WarpCTCLoss" bottom: "x" bottom: "l" top: "o"', [(4, 2, 3), (2, 3)])
    with pytest.raises(Exception, match="outside"):
        layer(torch.zeros(4, 2, 3), torch.tensor([[1.0, 5, 0], [1, 0, 0]]))


def test_decoder_one_bottom_is_caffe_ocrs():
    r = np.random.default_rng(4)
    x = r.standard_normal((7, 3, 5))
    for opts, blank, merge in (("", 0, True), ("ctc_decoder_param { blank_index: -1 ctc_merge_repeated: false }",
                                              4, False)):
        layer = _layer(f'name: "d" type: "CTCGreedyDecoder" bottom: "x" top: "s" {opts}', [x.shape], TEST)
        out = layer(torch.tensor(x)).numpy()
        assert out.shape == (3, 7, 1, 1)
        for n, seq in enumerate(ref.greedy_decode(x, blank, merge)):
            np.testing.assert_array_equal(out[n, :, 0, 0], seq + [-1] * (7 - len(seq)))


NET_HEAD = '''
layer { name: "in" type: "Input" top: "x" top: "label"
  input_param { shape { dim: 7 dim: 4 dim: 5 } shape { dim: 4 dim: 3 } } }
'''


def test_decoder_two_bottoms_accuracy_in_a_caffe_ocr_net():
    r = np.random.default_rng(5)
    x = r.standard_normal((7, 4, 5)).astype(np.float32)
    dec = 'layer { name: "acc" type: "CTCGreedyDecoder" bottom: "x" bottom: "label" top: "acc" }\n'
    seqs = ref.greedy_decode(x, 0)
    label = np.zeros((4, 3), np.float32)
    label[0, :len(seqs[0][:3])] = seqs[0][:3]
    label[1] = [1, 2, -1]
    label[2] = [0, 0, 0]
    label[3] = [3, 0, 4]
    for text in ('lineage: "caffe_ocr"\n' + NET_HEAD + dec,
                 NET_HEAD + dec + 'layer { name: "ctc" type: "WarpCTCLoss" bottom: "x" bottom: "label" top: "l" }\n'):
        net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), TEST)
        net.blob_data["x"].copy_(torch.tensor(x))
        lab = label if "lineage" in text else np.where(label < 0, 0, label)  # WarpCTCLoss takes no -1
        net.blob_data["label"].copy_(torch.tensor(lab))
        net.forward()
        acc = net.blob_data["acc"].numpy()
        assert acc.shape == (1, 2, 1, 1)
        np.testing.assert_allclose(acc[0, :, 0, 0], ref.greedy_accuracy(x, lab, 0), rtol=1e-6)
    # without the lineage, 2 bottoms are TextBoxes++'s (x, indicators (T, N)) -> sequences: (N, L) labels are refused
    with pytest.raises(Exception, match="too small for its"):
        Net(text_format.Parse(NET_HEAD + dec, caffe_pb2.NetParameter()), TEST)


T_STEPS, BATCH, CLASSES = 12, 6, 4  # labels 1..3, blank 0; padded with 0 as caffe_ocr's datums
# the fork's ResNet head, trimmed: conv -> AVE pool over the height -> Transpose (W, N, H, C) -> Reshape (W, N, C)
# -> two BLSTM layers of Lstm/Reverse pairs, Concat on axis 2, Eltwise SUM -> InnerProduct axis 2 -> WarpCTCLoss
BODY = f'''
layer {{ name: "in" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: {BATCH} dim: 1 dim: 4 dim: {T_STEPS} }} shape {{ dim: {BATCH} dim: 3 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 8 kernel_h: 3 kernel_w: 1 pad_h: 1 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool5_ave" type: "Pooling" bottom: "conv1" top: "pool5_ave"
  pooling_param {{ pool: AVE kernel_w: 1 kernel_h: 4 stride_w: 1 stride_h: 1 }} }}
layer {{ name: "pool5_ave_transpose" type: "Transpose" bottom: "pool5_ave" top: "pool5_ave_transpose"
  transpose_param {{ dim: 3 dim: 2 dim: 0 dim: 1 }} }}
layer {{ name: "blstm_input" type: "Reshape" bottom: "pool5_ave_transpose" top: "blstm_input"
  reshape_param {{ shape {{ dim: -1 }} axis: 1 num_axes: 2 }} }}
'''
for _k, _bottom in ((1, "blstm_input"), (2, "blstm1")):
    BODY += f'''
layer {{ name: "lstm{_k}" type: "Lstm" bottom: "{_bottom}" top: "lstm{_k}"
  lstm_param {{ num_output: 8 weight_filler {{ type: "gaussian" std: 0.1 }} bias_filler {{ type: "constant" }} }} }}
layer {{ name: "lstm{_k}-reverse1" type: "Reverse" bottom: "{_bottom}" top: "rlstm{_k}_input" reverse_param {{ axis: 0 }} }}
layer {{ name: "rlstm{_k}" type: "Lstm" bottom: "rlstm{_k}_input" top: "rlstm{_k}-output"
  lstm_param {{ num_output: 8 weight_filler {{ type: "gaussian" std: 0.1 }} bias_filler {{ type: "constant" }} }} }}
layer {{ name: "lstm{_k}-reverse2" type: "Reverse" bottom: "rlstm{_k}-output" top: "rlstm{_k}" reverse_param {{ axis: 0 }} }}
layer {{ name: "blstm{_k}" type: "Concat" bottom: "lstm{_k}" bottom: "rlstm{_k}" top: "blstm{_k}" concat_param {{ axis: 2 }} }}
'''
BODY += f'''
layer {{ name: "blstm_sum" type: "Eltwise" bottom: "blstm1" bottom: "blstm2" top: "blstm_sum"
  eltwise_param {{ operation: SUM }} }}
layer {{ name: "fc1x" type: "InnerProduct" bottom: "blstm_sum" top: "fc1x"
  inner_product_param {{ axis: 2 num_output: {CLASSES} weight_filler {{ type: "xavier" }}
                        bias_filler {{ type: "constant" value: 0 }} }} }}
'''
TRAIN_NET = BODY + '''
layer { name: "ctcloss" type: "WarpCTCLoss" bottom: "fc1x" bottom: "label" top: "ctcloss" loss_weight: 1 }
layer { name: "acc" type: "CTCGreedyDecoder" bottom: "fc1x" bottom: "label" top: "acc" include { phase: TEST } }
'''
DEPLOY_NET = BODY.replace('top: "label"', "").replace(f"shape {{ dim: {BATCH} dim: 3 }}", "") + \
    'layer { name: "result" type: "CTCGreedyDecoder" bottom: "fc1x" top: "result" }\n'


def _text_images(r):
    return ref.text_images(r, BATCH, T_STEPS)


def test_resnet_blstm_head_builds_runs_and_trains(tmp_path):
    (tmp_path / "train_val.prototxt").write_text(TRAIN_NET)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "train_val.prototxt"}" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" display: 0 '
        'max_iter: 1000 snapshot: 0 solver_mode: CPU random_seed: 3 clip_gradients: 10')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    data, label = _text_images(np.random.default_rng(0))
    solver.net.blobs["data"].data[...] = data
    solver.net.blobs["label"].data[...] = label
    first = float(solver.net.forward()["ctcloss"])
    assert solver.net.blobs["fc1x"].data.shape == (T_STEPS, BATCH, CLASSES)
    conv_before = solver.net.params["conv1"][0].data.copy()
    solver.step(40)
    last = float(solver.net.forward()["ctcloss"])
    assert np.isfinite(first) and last < 0.5 * first, (first, last)
    assert np.abs(solver.net.params["conv1"][0].data - conv_before).max() > 1e-4
    test = caffe.Net(str(tmp_path / "train_val.prototxt"), caffe.TEST)
    test.share_with(solver.net)
    test.blobs["data"].data[...] = data
    test.blobs["label"].data[...] = label
    out = test.forward()
    edit, line = ref.greedy_accuracy(test.blobs["fc1x"].data, label, 0)
    np.testing.assert_allclose(out["acc"][0, :, 0, 0], [edit, line], rtol=1e-6)
    (tmp_path / "deploy.prototxt").write_text(DEPLOY_NET)
    deploy = caffe.Net(str(tmp_path / "deploy.prototxt"), caffe.TEST)
    deploy.share_with(solver.net)
    deploy.blobs["data"].data[...] = data
    result = deploy.forward()["result"]
    assert result.shape == (BATCH, T_STEPS, 1, 1)
    for n, seq in enumerate(ref.greedy_decode(deploy.blobs["fc1x"].data, 0)):
        np.testing.assert_array_equal(result[n, :, 0, 0], seq + [-1] * (T_STEPS - len(seq)))


def test_schema_carries_caffe_ocrs_fields():
    text = ('name: "x" type: "DenseBlock" denseblock_param { numTransition: 8 initChannel: 64 growthRate: 8 '
            'Filter_Filler { type: "msra" } BN_Scaler_Filler { type: "constant" value: 1 } use_dropout: false '
            'dropout_amount: 0.2 use_BC: true BC_ultra_space_efficient: false moving_average_fraction: 0.1 } '
            'reverse_time_param { copy_remaining: true } image_data_param { task_class_num: 2 regression: true }')
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    assert p.denseblock_param.numTransition == 8 and p.image_data_param.task_class_num == 2
