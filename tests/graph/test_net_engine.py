"""The net engine (neocaffe.graph): NetState rules, automatic splits, in-place tops, loss_weight,
propagate_down, force_backward, parameter sharing, lr_mult 0, and what a net keeps alive between
forward and backward."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neocaffe.graph.net import Net, NetError
from neocaffe.graph.params import ParamShareError
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TEST, TRAIN

IN = "layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 3 } } }\n"


def _ip(name: str, bottom: str, top: str, n: int = 2, extra: str = "") -> str:
    return (f"layer {{ name: '{name}' type: 'InnerProduct' bottom: '{bottom}' top: '{top}' {extra} "
            f"inner_product_param {{ num_output: {n} weight_filler {{ type: 'gaussian' std: 1 }} "
            f"bias_filler {{ type: 'constant' value: 0.5 }} }} }}\n")


def _net(text: str, phase: int = TRAIN, **kw) -> Net:
    return Net(read_net(text), phase, **kw)


X = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]])


def test_netstate_rules_phase_level_stage_not_stage():
    text = IN + (
        "layer { name: 'tr' type: 'Power' bottom: 'x' top: 'a' include { phase: TRAIN } }\n"
        "layer { name: 'te' type: 'Power' bottom: 'x' top: 'b' include { phase: TEST } }\n"
        "layer { name: 'lv' type: 'Power' bottom: 'x' top: 'c' include { min_level: 2 } }\n"
        "layer { name: 'st' type: 'Power' bottom: 'x' top: 'd' include { stage: 's1' stage: 's2' } }\n"
        "layer { name: 'ns' type: 'Power' bottom: 'x' top: 'e' exclude { stage: 's1' } }\n")
    def names(net: Net) -> list[str]:
        return [n for n in net.layer_names if not n.endswith("_split")]  # Caffe's automatic Splits

    assert names(_net(text, TRAIN)) == ["in", "tr", "ns"]
    assert names(Net(read_net(text), TEST, level=2, stages=["s1", "s2"])) == ["in", "te", "lv", "st"]
    with pytest.raises(ValueError, match="either include rules or exclude rules"):
        _net(IN + "layer { name: 'b' type: 'Power' bottom: 'x' top: 'y' include { phase: TRAIN } "
                  "exclude { phase: TEST } }")


def test_automatic_split_sums_the_diffs_of_every_reader():
    """x feeds two layers: Caffe inserts a Split and the diff of x is the sum of both readers' diffs."""
    text = "force_backward: true\n" + IN + (
        "layer { name: 'p1' type: 'Power' bottom: 'x' top: 'y1' power_param { scale: 2 } loss_weight: 1 }\n"
        "layer { name: 'p2' type: 'Power' bottom: 'x' top: 'y2' power_param { scale: 3 } loss_weight: 0.5 }\n")
    net = _net(text)
    assert "x_in_0_split" in net.layer_names
    net.forward({"x": X})
    net.backward()
    np.testing.assert_allclose(net.blob_diff("x").numpy(), np.full((2, 3), 2 * 1 + 3 * 0.5))


def test_loss_weight_scales_the_diff_and_the_loss():
    text = IN + "layer { name: 'l' type: 'EuclideanLoss' bottom: 'x' bottom: 't' top: 'loss' loss_weight: 4 }\n"
    text = text.replace("top: 'x' input_param { shape { dim: 2 dim: 3 } }",
                        "top: 'x' top: 't' input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } }")
    net = _net("force_backward: true\n" + text)
    t = torch.zeros(2, 3)
    loss = float(net.forward({"x": X, "t": t}).detach())
    assert loss == pytest.approx(4 * float((X * X).sum()) / 2 / 2)
    net.backward()
    np.testing.assert_allclose(net.blob_diff("x").numpy(), (4 * X / 2).numpy(), rtol=1e-6)


def test_propagate_down_false_stops_the_diff_and_lr_mult_zero_has_no_grad():
    body = IN + _ip("a", "x", "h", 3, "param { lr_mult: 0 } param { lr_mult: 0 }") + (
        "layer { name: 'p' type: 'Power' bottom: 'h' top: 'y' propagate_down: false loss_weight: 1 }\n")
    net = _net(body)
    net.forward({"x": X})
    net.backward()
    assert not net.blob_diff("x").any() and not net.blob_diff("h").any()
    a = net.layer("a")
    assert not a.blobs[0].requires_grad and not a.blobs[0].grad.any()
    assert net.needs.layer == (False, False, False)  # nothing below the cut learns: Caffe runs no backward
    with pytest.raises(NetError, match="propagate_down has 2 entries for 1 bottoms"):
        _net(IN + "layer { name: 'p' type: 'Power' bottom: 'x' top: 'y' propagate_down: 1 propagate_down: 1 }").forward({"x": X})


def test_force_backward_overrides_propagate_down_and_lr_mult_zero():
    """Caffe's Net::Init ORs AllowForceBackward into every bottom's flag after propagate_down was
    applied, and sets every parameter's propagate_down: with force_backward the Power layer writes
    h's diff despite ``propagate_down: false``, and 'a' (lr_mult 0) gets parameter diffs."""
    body = IN + _ip("a", "x", "h", 3, "param { lr_mult: 0 } param { lr_mult: 0 }") + (
        "layer { name: 'p' type: 'Power' bottom: 'h' top: 'y' propagate_down: false loss_weight: 1 }\n")
    net = _net("force_backward: true\n" + body)
    net.forward({"x": X})
    net.backward()
    a = net.layer("a")
    w = a.blobs[0].detach()
    np.testing.assert_allclose(net.blob_diff("h").numpy(), np.ones((2, 3)))  # Power(1): dy
    np.testing.assert_allclose(net.blob_diff("x").numpy(), (torch.ones(2, 3) @ w).numpy(), rtol=1e-6)
    np.testing.assert_allclose(a.blobs[0].grad.numpy(), (torch.ones(3, 2) @ X).numpy(), rtol=1e-6)
    np.testing.assert_allclose(a.blobs[1].grad.numpy(), np.full(3, 2.0))


def test_in_place_tops_show_the_last_value_and_the_diff_below_the_in_place_layers():
    text = IN + _ip("a", "x", "h", 3) + "layer { name: 'r' type: 'ReLU' bottom: 'h' top: 'h' }\n" + (
        "layer { name: 'l' type: 'Power' bottom: 'h' top: 'y' loss_weight: 1 }\n")
    net = _net(text)
    net.forward({"x": X})
    a = net.layer("a")
    pre = X @ a.blobs[0].detach().T + a.blobs[1].detach()
    np.testing.assert_allclose(net.blob_data["h"].detach().numpy(), pre.clamp_min(0).numpy(), rtol=1e-6)
    net.backward()
    np.testing.assert_allclose(net.blob_diff("h").numpy(), (pre > 0).float().numpy())  # ReLU's mask applied


def test_force_backward_gives_diffs_to_input_and_data_layer_tops():
    """Caffe's force_backward: every bottom that allows it needs backward, data-layer tops included."""
    text = ("force_backward: true\n"
            "layer { name: 'd' type: 'DummyData' top: 'x' dummy_data_param { shape { dim: 2 dim: 3 } "
            "data_filler { type: 'constant' value: 1 } } }\n" + _ip("a", "x", "h") +
            "layer { name: 'l' type: 'Power' bottom: 'h' top: 'y' loss_weight: 1 }\n")
    net = _net(text)
    net.forward()
    net.backward()
    w = net.layer("a").blobs[0].detach()
    np.testing.assert_allclose(net.blob_diff("x").numpy(), w.sum(0).expand(2, 3).numpy(), rtol=1e-6)
    net.forward()
    net.backward()  # replaced, not accumulated
    np.testing.assert_allclose(net.blob_diff("x").numpy(), w.sum(0).expand(2, 3).numpy(), rtol=1e-6)


def test_sharing_by_name_strict_and_permissive():
    shared = "param { name: 'W' } param { name: 'b' }"
    net = _net(IN + _ip("a", "x", "h", 3, shared) + _ip("b", "x", "g", 3, shared))
    assert net.layer("a").blobs[0] is net.layer("b").blobs[0] and len(net.learnable) == 2
    with pytest.raises(ParamShareError, match="shape mismatch, owner shape \\(3, 3\\), sharer shape \\(4, 3\\)"):
        _net(IN + _ip("a", "x", "h", 3, shared) + _ip("b", "x", "g", 4, shared))
    with pytest.raises(ParamShareError, match="lr_mult"):
        _net(IN + _ip("a", "x", "h", 3, "param { name: 'W' lr_mult: 1 }") +
             _ip("b", "x", "g", 3, "param { name: 'W' lr_mult: 2 }"))


def test_a_training_net_does_not_hold_values_from_before_in_place_layers():
    """Without kept blob diffs (a solver's net), the IP output under an in-place ReLU is not kept alive
    until backward; with them (pycaffe's), it is: 'a''s backward writes the blob's diff from it."""
    import gc
    import weakref

    text = IN + _ip("a", "x", "h", 3) + "layer { name: 'r' type: 'ReLU' bottom: 'h' top: 'h' }\n" + (
        "layer { name: 'l' type: 'Power' bottom: 'h' top: 'y' loss_weight: 1 }\n")
    alive = {}
    for keep in (False, True):
        net = _net(text, keep_blob_diffs=keep)
        outs: list = []
        net.layer("a").register_forward_hook(lambda m, i, o: outs.append(weakref.ref(o)))
        net.forward({"x": X})
        gc.collect()
        alive[keep] = outs[0]() is not None
        net.backward()
    assert alive == {False: False, True: True}


def test_a_forward_without_autograd_leaves_no_graph_for_a_ranged_backward():
    text = IN + _ip("a", "x", "h", 3) + "layer { name: 'l' type: 'Power' bottom: 'h' top: 'y' loss_weight: 1 }\n"
    net = _net(text)
    net.forward({"x": X})
    with torch.no_grad():
        net.forward({"x": X})
    with pytest.raises(NetError, match="needs a forward through them"):
        net.backward({}, start="l", end="a")


def test_layer_errors_name_the_prototxt_line_and_column(tmp_path):
    """DESIGN's error form: ``train_val.prototxt:57:3: layer 'conv2' (Convolution): ...``, from the
    NetSource passed at build (the layer index counts the filtered-out layers of the file too)."""
    from neocaffe.io.prototxt import read_net_with_source

    path = tmp_path / "train_val.prototxt"
    path.write_text("name: 'n'\n"
                    "layer { name: 'x' type: 'Input' top: 'x' input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }\n"
                    "layer { name: 'te' type: 'ReLU' bottom: 'x' top: 'x' include { phase: TEST } }\n"
                    "\n"
                    "  layer {\n"
                    "    name: 'conv2' type: 'Convolution' bottom: 'x' top: 'c'\n"
                    "    convolution_param { num_output: 4 kernel_size: 1 group: 3 } }\n")
    net_param, src = read_net_with_source(path)
    with pytest.raises(NetError, match=rf"^{path}:5:3: layer 'conv2' \(Convolution\): .*group"):
        Net(net_param, TRAIN, source=src)
    with pytest.raises(NetError, match=r"^train_val\.prototxt: layer 'conv2'"):
        Net(net_param, TRAIN, source="train_val.prototxt")
