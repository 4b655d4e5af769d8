"""person_search's OIM layers (neocaffe/layers/oim.py) against loop ports of Cysu/caffe's CPU code
(tests/layers/oim_reference.py), in the real train.prototxt, and training its OIM head."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers.oim_reference import LabeledMatchingRef, UnlabeledMatchingRef

DATA = Path(__file__).parent / "data" / "person_search"


def _layer(text: str, shapes, phase: int = TRAIN):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, shapes, phase)


def _lm(n: int, k: int, extra: str = "", m: int = 8):
    return _layer('name: "lm" type: "LabeledMatching" bottom: "x" bottom: "l" top: "s" top: "ids" '
                  f'labeled_matching_param {{ num_classes: {n} {extra} }}', [(m, k), (m,)])


def _um(q: int, k: int, m: int = 8):
    return _layer('name: "um" type: "UnlabeledMatching" bottom: "x" bottom: "l" top: "s" '
                  f'unlabeled_matching_param {{ queue_size: {q} }}', [(m, k), (m,)])


def _run(layer, x, lab, diff, device="cpu"):
    xt = torch.tensor(x, device=device, requires_grad=True)
    out = layer(xt, torch.tensor(lab, device=device))
    s = out[0] if isinstance(out, tuple) else out
    s.backward(torch.tensor(diff, device=device))
    return out, xt.grad


def _batches(m, k, n, iters, seed):
    r = np.random.default_rng(seed)
    for _ in range(iters):
        x = r.standard_normal((m, k)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        # labeled ids (repeated within the batch), -1 (unlabeled), out of range, fractional values
        lab = r.choice([-1.0, -1.0, 0.0, 1.0, 2.0, n - 1.0, n, n + 3.0, 1.7, -0.5, -2.0], size=m).astype(np.float32)
        yield x, lab, r.standard_normal((m, n)).astype(np.float32)


def _compare_labeled(device: str) -> float:
    m, k, n = 9, 5, 6
    ref, layer = LabeledMatchingRef(n, k, 0.5), _lm(n, k, m=m).to(device)
    worst = 0.0
    for x, lab, diff in _batches(m, k, n, 5, seed=1):
        (s, ids), gx = _run(layer, x, lab, diff, device)
        rs, rids = ref.forward(x, lab)
        rgx = ref.backward(diff, x, lab)
        np.testing.assert_array_equal(ids.cpu().numpy(), rids)
        for a, b in ((s, rs), (gx, rgx), (layer.blobs[0], ref.weight)):
            d = float(np.abs(a.detach().cpu().numpy() - b).max())
            worst = max(worst, d)
            assert d < 2e-6
        np.testing.assert_array_equal(layer.blobs[1].detach().cpu().numpy(), ref.tstamp)
    assert np.abs(ref.weight).sum() > 0
    return worst


def _compare_unlabeled(device: str) -> float:
    m, k, q = 9, 5, 4  # more unlabeled rows than the queue holds in some batches
    ref, layer = UnlabeledMatchingRef(q, k), _um(q, k, m=m).to(device)
    worst = 0.0
    for x, lab, diff in _batches(m, k, q, 6, seed=2):
        s, gx = _run(layer, x, lab, diff, device)
        rs = ref.forward(x)
        rgx = ref.backward(diff, x, lab)
        for a, b in ((s, rs), (gx, rgx)):
            d = float(np.abs(a.detach().cpu().numpy() - b).max())
            worst = max(worst, d)
            assert d < 2e-6
        np.testing.assert_array_equal(layer.blobs[0].detach().cpu().numpy(), ref.weight)  # copies: exact
        assert layer.tail == ref.tail
    return worst


def test_labeled_matching_matches_the_fork_over_iterations():
    print(f"LabeledMatching max abs diff vs port: {_compare_labeled('cpu'):.2e}")


def test_unlabeled_matching_matches_the_fork_over_iterations():
    print(f"UnlabeledMatching max abs diff vs port: {_compare_unlabeled('cpu'):.2e}")


def test_repeated_labels_apply_in_order():
    layer = _lm(3, 2, "momentum: 0.25", m=3)
    x = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], np.float32)
    _run(layer, x, np.array([1.0, 1.0, 1.0], np.float32), np.zeros((3, 3), np.float32))
    w = np.zeros(2)
    for row in x:
        w = 0.25 * w + 0.75 * row
    np.testing.assert_allclose(layer.blobs[0][1].detach().numpy(), w, rtol=1e-6)
    np.testing.assert_array_equal(layer.blobs[1].detach().numpy(), [1.0, 0.0, 1.0])


def test_no_update_in_forward_nor_with_lr_mult_0():
    layer = _lm(4, 3, m=2)
    x, lab = np.ones((2, 3), np.float32), np.array([1.0, 2.0], np.float32)
    layer(torch.tensor(x), torch.tensor(lab))  # TRAIN forward alone: nothing changes
    assert float(layer.blobs[0].detach().abs().sum()) == 0.0
    for b in layer.blobs:
        b.requires_grad_(False)  # what the net does for lr_mult: 0 (param_propagate_down off)
    _run(layer, x, lab, np.ones((2, 4), np.float32))
    assert float(layer.blobs[0].detach().abs().sum()) == 0.0 and float(layer.blobs[1].detach().abs().sum()) == 0.0
    layer.blobs[1].requires_grad_(True)
    with pytest.raises(LayerSetupError, match="both be updated"):
        layer(torch.tensor(x), torch.tensor(lab))


def test_setup_errors_name_the_layer():
    with pytest.raises(LayerSetupError, match="'lm'.*num_classes"):
        _layer('name: "lm" type: "LabeledMatching" bottom: "x" bottom: "l" top: "s" top: "i"', [(2, 3), (2,)])
    with pytest.raises(LayerSetupError, match="'um'.*queue_size"):
        _layer('name: "um" type: "UnlabeledMatching" bottom: "x" bottom: "l" top: "s" '
               'unlabeled_matching_param { queue_size: 0 }', [(2, 3), (2,)])
    with pytest.raises(LayerSetupError, match="one label per item"):
        _lm(4, 3, m=2).reshape([(2, 3), (3,)])
    with pytest.raises(LayerSetupError, match="incompatible"):
        _um(4, 3, m=2).reshape([(2, 4), (2,)])


def test_queue_tail_resumes():
    a, b = _um(5, 3, m=4), _um(5, 3, m=4)
    x, lab = np.ones((4, 3), np.float32), np.array([-1.0, -1.0, 0.0, -1.0], np.float32)
    _run(a, x, lab, np.zeros((4, 5), np.float32))
    with torch.no_grad():
        b.blobs[0].copy_(a.blobs[0])
    b.load_resume_state(a.resume_state())
    for lay in (a, b):
        _run(lay, 2 * x, lab, np.zeros((4, 5), np.float32))
    np.testing.assert_array_equal(a.blobs[0].detach().numpy(), b.blobs[0].detach().numpy())
    assert a.tail == b.tail == 1


def test_real_prototxts_parse():
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent")
    for name in ("train", "eval_gallery", "eval_probe"):
        net = text_format.Parse((DATA / f"{name}.prototxt").read_text(), caffe_pb2.NetParameter())
        assert len(net.layer) > 100
    net = text_format.Parse((DATA / "train.prototxt").read_text(), caffe_pb2.NetParameter())
    lm = next(layer for layer in net.layer if layer.type == "LabeledMatching")
    um = next(layer for layer in net.layer if layer.type == "UnlabeledMatching")
    assert (lm.labeled_matching_param.num_classes, lm.labeled_matching_param.momentum) == (5532, 0.5)
    assert um.unlabeled_matching_param.queue_size == 5000


def _oim_head(m: int, c: int, feat: int, n: int, q: int) -> str:
    """train.prototxt from feat_lowdim on, shrunk, with an Input layer for its bottoms."""
    net = text_format.Parse((DATA / "train.prototxt").read_text(), caffe_pb2.NetParameter())
    names = [layer.name for layer in net.layer]
    head = net.layer[names.index("feat_lowdim"):]
    out = caffe_pb2.NetParameter(name="oim_head")
    inp = out.layer.add(name="input", type="Input", top=["caffe.Pooling_168", "pid_label"])
    inp.input_param.shape.add(dim=[m, c])
    inp.input_param.shape.add(dim=[m])
    for layer in head:
        if layer.type in ("InnerProduct", "Normalize", "LabeledMatching", "UnlabeledMatching", "Power",
                          "Concat", "Accuracy", "SoftmaxWithLoss"):
            if layer.name in ("det_score", "det_accuracy", "det_loss", "bbox_pred", "loss_bbox"):
                continue
            out.layer.add().CopyFrom(layer)
    for layer in out.layer:
        if layer.name == "feat_lowdim":
            layer.inner_product_param.num_output = feat
        if layer.type == "LabeledMatching":
            layer.labeled_matching_param.num_classes = n
        if layer.type == "UnlabeledMatching":
            layer.unlabeled_matching_param.queue_size = q
    return text_format.MessageToString(out)


M, C, FEAT, N, Q = 16, 12, 8, 5, 6


def _head_solver(tmp_path, extra: str = ""):
    from neocaffe.solver.solver import Solver

    text = _oim_head(M, C, FEAT, N, Q)
    assert [l for l in ("labeled_matching", "unlabeled_matching", "id_loss") if f'"{l}"' not in text] == []
    (tmp_path / "net.prototxt").write_text(text)
    sp = caffe_pb2.SolverParameter()
    text_format.Parse(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 '
                      f'weight_decay: 0.0005 display: 0 random_seed: 3 solver_mode: CPU {extra}', sp)
    return Solver(sp)


def _head_batches(iters: int):
    r = np.random.default_rng(0)
    centers = r.standard_normal((N, C)).astype(np.float32) * 3
    for _ in range(iters):
        lab = r.integers(-1, N, size=M).astype(np.float32)
        x = centers[np.maximum(lab, 0).astype(int)] + r.standard_normal((M, C)).astype(np.float32)
        x[lab < 0] = r.standard_normal((int((lab < 0).sum()), C)).astype(np.float32) * 3
        yield x, lab


def _step(s, x, lab) -> float:
    s.net.set_blob("caffe.Pooling_168", torch.tensor(x))
    s.net.set_blob("pid_label", torch.tensor(lab))
    s.step(1)
    return float(s.net.blob_data["id_loss"])


def test_oim_head_of_the_real_train_prototxt_trains(tmp_path):
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent")
    s = _head_solver(tmp_path)
    losses = [_step(s, x, lab) for x, lab in _head_batches(30)]
    params = s.net.params_by_layer()
    table, stamps = params["labeled_matching"]
    assert float(table.detach().abs().sum()) > 0 and float(stamps.detach().max()) < 30
    np.testing.assert_array_less(table.detach().norm(dim=1).numpy(), 1.0 + 1e-5)  # means of unit features
    assert float(params["unlabeled_matching"][0].detach().abs().sum()) > 0
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"OIM head: id_loss first 5 {first:.3f}, last 5 {last:.3f}")
    assert last < first
    s.close()


def test_oim_head_resumes_exactly_from_a_snapshot(tmp_path):
    """The tables are blobs of the .caffemodel, the queue tail the layer's resume state."""
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent")
    batches = list(_head_batches(8))
    a = _head_solver(tmp_path, f'snapshot_prefix: "{tmp_path / "snap"}"')
    for x, lab in batches[:5]:  # 5 steps: the queue tail is not 0 (at most Q * 5 = 30 rows went in)
        _step(a, x, lab)
    _, state = a.snapshot()
    tail = next(layer.tail for layer in a.net.layers if layer.name == "unlabeled_matching")
    assert tail != 0
    for x, lab in batches[5:]:
        _step(a, x, lab)
    b = _head_solver(tmp_path)
    b.restore(state)
    for x, lab in batches[5:]:
        _step(b, x, lab)
    for name in ("labeled_matching", "unlabeled_matching", "feat_lowdim"):
        for pa, pb in zip(a.net.params_by_layer()[name], b.net.params_by_layer()[name]):
            np.testing.assert_array_equal(pb.detach().numpy(), pa.detach().numpy(), err_msg=f"{name}, tail {tail}")
    a.close()
    b.close()


def test_whole_train_prototxt_builds_and_runs_with_inputs_for_its_python_layers():
    """ResNet-50 + RPN + ROIPooling + detection + OIM head, the four Python layers (data, RPN targets,
    proposals, ROI targets) replaced by Input layers of their tops' shapes; tables shrunk."""
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent")
    from neocaffe.graph.net import Net

    net = text_format.Parse((DATA / "train.prototxt").read_text(), caffe_pb2.NetParameter())
    h, w, rn, a = 96, 128, 8, 9  # a 96 x 128 image: a 6 x 8 conv4 map, 9 anchors
    shapes = {"data": (1, 3, h, w), "im_info": (1, 3), "gt_boxes": (2, 6), "rpn_labels": (1, 1, a * 6, 8),
              "rpn_bbox_targets": (1, 4 * a, 6, 8), "rpn_bbox_inside_weights": (1, 4 * a, 6, 8),
              "rpn_bbox_outside_weights": (1, 4 * a, 6, 8), "rpn_rois": (rn, 5), "rois": (rn, 5), "labels": (rn,),
              "bbox_targets": (rn, 8), "bbox_inside_weights": (rn, 8), "bbox_outside_weights": (rn, 8),
              "pid_label": (rn,)}
    for layer in net.layer:
        if layer.type == "Python":
            del layer.bottom[:]
            layer.type = "Input"
            layer.ClearField("python_param")
            for t in layer.top:
                layer.input_param.shape.add(dim=shapes[t])
        if layer.type == "LabeledMatching":
            layer.labeled_matching_param.num_classes = 50
        if layer.type == "UnlabeledMatching":
            layer.unlabeled_matching_param.queue_size = 20
    n = Net(net, TRAIN)
    r = np.random.default_rng(0)
    rois = np.zeros((rn, 5), np.float32)
    rois[:, 1:3] = r.uniform(0, 40, (rn, 2))
    rois[:, 3:5] = rois[:, 1:3] + r.uniform(10, 50, (rn, 2))
    for name, value in (("data", r.standard_normal((1, 3, h, w))), ("im_info", [[h, w, 1.0]]),
                        ("rpn_labels", r.integers(-1, 2, (1, 1, a * 6, 8))), ("rois", rois),
                        ("labels", r.integers(0, 2, rn)), ("pid_label", [0, 3, -1, 5, 5, -1, 60, 1])):
        n.set_blob(name, torch.tensor(np.asarray(value, np.float32)))
    with torch.no_grad():  # the backbone's convolutions have no filler (zero until ImageNet weights load):
        n.params_by_layer()["feat_lowdim"][1].copy_(torch.tensor(r.standard_normal(256)))  # a bias gives features
    n.forward()
    n.backward()
    np.testing.assert_allclose(float(n.blob_data["id_loss"]), np.log(70.0), rtol=1e-6)  # zero tables: uniform
    table, stamps = n.params_by_layer()["labeled_matching"]
    assert sorted(np.nonzero(table.detach().abs().sum(1).numpy())[0].tolist()) == [0, 1, 3, 5]
    assert float(stamps.detach()[2]) == 1.0
    assert int((n.params_by_layer()["unlabeled_matching"][0].detach().abs().sum(1) > 0).sum()) == 2


@pytest.mark.gpu
def test_cuda_matches_the_fork():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    print(f"CUDA: LabeledMatching {_compare_labeled('cuda'):.2e}, UnlabeledMatching {_compare_unlabeled('cuda'):.2e}")
