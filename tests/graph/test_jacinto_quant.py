"""caffe-jacinto's dynamic fixed-point inference (``quantize: true``, neocaffe.graph.jacinto_quant) against a
loop-by-loop NumPy port of the fork's range tracking and trimming (tests/graph/jacinto_quant_reference.py), over
several forwards of a small net with the layer mix of the fork's nets, and on a released test_quantize deploy net."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from neocaffe.export.onnx import export_onnx
from neocaffe.export.pt2 import export_pt2
from neocaffe.export.registry import ExportError
from neocaffe.graph.errors import NetError
from neocaffe.graph.jacinto_quant import QParams, estimate, trim
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TEST, TRAIN
from neocaffe.proto import caffe_pb2

from tests.conftest import cuda_available
from tests.graph.jacinto_quant_reference import ForkNet

DATA = Path(__file__).parent / "data" / "jacinto"

NET = """name: 'q'
layer { name: 'input' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: 'data/bias' type: 'Bias' bottom: 'data' top: 'data/bias'
  bias_param { filler { type: 'constant' value: -0.5 } } }
layer { name: 'conv1' type: 'Convolution' bottom: 'data/bias' top: 'conv1'
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: 'gaussian' std: 0.4 }
                      bias_filler { type: 'gaussian' std: 0.2 } } }
layer { name: 'bn1' type: 'BatchNorm' bottom: 'conv1' top: 'conv1' }
layer { name: 'sc1' type: 'Scale' bottom: 'conv1' top: 'conv1'
  scale_param { bias_term: true filler { type: 'gaussian' mean: 1 std: 0.2 } bias_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'relu1' type: 'ReLU' bottom: 'conv1' top: 'conv1' }
layer { name: 'pool1' type: 'Pooling' bottom: 'conv1' top: 'pool1' pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: 'conv2a' type: 'Convolution' bottom: 'pool1' top: 'conv2a'
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: 'gaussian' std: 0.3 }
                      bias_filler { type: 'gaussian' std: 0.2 } } }
layer { name: 'relu2a' type: 'ReLU' bottom: 'conv2a' top: 'conv2a' }
layer { name: 'conv2b' type: 'Convolution' bottom: 'pool1' top: 'conv2b'
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: 'gaussian' std: 0.5 }
                      bias_filler { type: 'gaussian' std: 0.2 } } }
layer { name: 'sum' type: 'Eltwise' bottom: 'conv2a' bottom: 'conv2b' top: 'sum' }
layer { name: 'cat' type: 'Concat' bottom: 'sum' bottom: 'pool1' top: 'cat' }
layer { name: 'ip' type: 'InnerProduct' bottom: 'cat' top: 'ip'
  inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 0.2 } bias_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'prob' type: 'Softmax' bottom: 'ip' top: 'prob' }
"""

CONFIGS = {
    "defaults": "",
    "power2_offsets": """net_quantization_param { power2_scale_weights: true power2_scale_activations: true
        apply_offset_activations: true bitwidth_activations: 6 bitwidth_weights: 10 bitwidth_bias: 12
        quantization_start: 2 range_update_factor: 0.1 range_expansion_factor: 1.1 }""",
    "no_offset_weights": """net_quantization_param { apply_offset_weights: false bitwidth_activations: 4
        range_update_factor: 0.3 }""",
    "ignored": """net_quantization_param { ignored_layer_names: 'conv2b' ignored_layer_names: 'relu1' }""",
}


def _sane_bn(net: Net, seed: int = 0) -> None:
    """Weights as a trained net has them: BatchNorm statistics that keep the activations in range (the fillers
    leave the variance 0), and biases that are not all equal (a constant blob has a zero range, which the fork's
    scale turns into inf and its weights into NaN)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, blobs in net.params_by_layer().items():
            kind = net.layer(name).type_name
            if kind == "BatchNorm":
                c = blobs[0].numel()
                blobs[0].copy_(torch.randn(c, generator=g) * 0.1)
                blobs[1].copy_(torch.rand(c, generator=g) + 0.5)
                blobs[2].fill_(1.0)
            elif kind in ("Convolution", "InnerProduct") and len(blobs) > 1:
                blobs[1].copy_(torch.randn(blobs[1].shape, generator=g) * 0.1)
    net.weights_changed()


def _nets(text: str, seed: int = 0) -> tuple[Net, Net, Net]:
    """The quantized net, a float twin for the port, and a float twin that stays float (same weights)."""
    torch.manual_seed(seed)
    quant = Net(read_net("quantize: true\n" + text), TEST)
    _sane_bn(quant, seed)
    twins = []
    for _ in range(2):
        p = read_net(text)
        n = Net(p, TEST)
        n.copy_from(quant.to_weights())
        twins.append(n)
    return quant, twins[0], twins[1]


def _inputs(frames: int, shape=(2, 3, 8, 8), seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=g) * (1.0 + 0.2 * k) for k in range(frames)]


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_forwards_equal_the_fork_port(config):
    text = CONFIGS[config] + "\n" + NET
    quant, twin, _ = _nets(text)
    fork = ForkNet(twin, quant.net_param.net_quantization_param)
    worst = 0.0
    for x in _inputs(5):
        quant.forward({"data": x})
        ref = fork.forward({"data": x})
        for name, v in ref.items():
            got = quant.blob(name).numpy()
            assert got.shape == v.shape
            np.testing.assert_array_equal(got, v, err_msg=f"{config}: blob '{name}' at forward {fork.infer_count}")
            worst = max(worst, float(np.abs(got - v).max()))
    assert worst == 0.0
    for i, name in enumerate(quant.layer_names):  # the records the fork keeps, field by field
        mine, theirs = quant.quant.layer_q[i], fork.qparam[i]
        for kind in ("qin", "qw", "qout"):
            for a, b in zip(getattr(mine, kind), theirs[kind]):
                for f in ("quantize", "bitwidth", "unsigned_quant", "scale_target", "scale_applied", "offset", "min", "max"):
                    assert getattr(a, f) == b[f] or (np.isnan(getattr(a, f)) and np.isnan(b[f])), (name, kind, f)


def test_quantized_forwards_differ_from_float_and_weights_are_quantized_once():
    quant, _, plain = _nets(NET)
    xs = _inputs(4)
    w0 = quant.layer("conv1").blobs[0].detach().clone()
    quant.forward({"data": xs[0]})
    plain.forward({"data": xs[0]})
    assert torch.equal(quant.blob("prob"), plain.blob("prob"))  # forward 0 only collects ranges
    assert torch.equal(quant.layer("conv1").blobs[0], w0)
    quant.forward({"data": xs[1]})
    w1 = quant.layer("conv1").blobs[0].detach().clone()
    assert not torch.equal(w1, w0)
    q = quant.quant.qparams("conv1").qw[0]
    levels = torch.unique(torch.round(w1 * q.scale_target + q.offset))
    assert len(levels) <= 2 ** 12 and float(levels.min()) >= 0 and float(levels.max()) <= 2 ** 12 - 1
    for x in xs[2:]:
        quant.forward({"data": x})
    assert torch.equal(quant.layer("conv1").blobs[0], w1)  # quantized once, at the first quantized forward
    assert quant.quant.infer_count == 4


def test_explicit_defaults_equal_the_defaults():
    explicit = """net_quantization_param { quantize_weights: true quantize_activations: true bitwidth_weights: 12
      bitwidth_activations: 8 bitwidth_bias: 16 power2_scale_weights: false power2_scale_activations: false
      apply_offset_weights: true apply_offset_activations: false precision: QuantizationParameter_Precision_DYNAMIC_FIXED_POINT
      rounding_scheme: QuantizationParameter_Rounding_NEAREST display_quantization: 2000 update_quantization_param: true
      quantization_start: 1 range_update_factor: 0.01 range_expansion_factor: 1.25 }\n"""
    a, _, _ = _nets(NET)
    b = Net(read_net("quantize: true\n" + explicit + NET), TEST)
    b.copy_from(a.to_weights())
    for x in _inputs(4):
        a.forward({"data": x})
        b.forward({"data": x})
        for name in a.blob_names:
            assert torch.equal(a.blob(name), b.blob(name)), name


def test_selection_follows_the_fork_rules():
    quant, _, _ = _nets(CONFIGS["ignored"] + NET)
    for x in _inputs(2):
        quant.forward({"data": x})
    out = {n: bool(quant.quant.qparams(n).qout and quant.quant.qparams(n).qout[0].quantize) for n in quant.layer_names}
    # merged: conv1 (-> BatchNorm), bn1 (-> Scale), sc1 (-> ReLU), conv2a (-> ReLU); ignored: relu1, conv2b
    assert out == {"input": False, "data/bias": True, "conv1": False, "bn1": False, "sc1": False, "relu1": False,
                   "pool1": True, "pool1_pool1_0_split": False, "conv2a": False, "relu2a": True, "conv2b": False,
                   "sum": True, "cat": True, "ip": True, "prob": False}
    weights = {n for n in quant.layer_names if quant.quant.qparams(n).qw and quant.quant.qparams(n).qw[0].quantize}
    assert weights == {"conv1", "conv2a", "ip"}


def test_switched_off_settings_compute_in_float():
    for settings in ("net_quantization_param { quantization_start: 0 }",
                     "net_quantization_param { update_quantization_param: false }",
                     "net_quantization_param { precision: QuantizationParameter_Precision_FLOAT }"):
        quant, _, plain = _nets(settings + "\n" + NET)
        assert quant.quant is None
        for x in _inputs(3):
            quant.forward({"data": x})
            plain.forward({"data": x})
        assert torch.equal(quant.blob("prob"), plain.blob("prob"))


def test_trim_rounds_half_away_from_zero_and_clips():
    q = QParams()
    estimate(q, -1.0, 1.0, 8, False, False, False)  # scale 127
    x = torch.tensor([0.5 / 127, -0.5 / 127, 1.5 / 127, 2.0, -2.0], dtype=torch.float32)
    y = trim(x, q, 0, True) * q.scale_target
    assert torch.allclose(y, torch.tensor([1.0, -1.0, 2.0, 127.0, -128.0]), atol=1e-4)


def test_refusals_name_the_field():
    quant, _, _ = _nets(NET)
    with pytest.raises(NetError, match="quantize: true"):
        Net(read_net("quantize: true\n" + NET), TRAIN)
    quant.forward({"data": _inputs(1)[0]})
    with pytest.raises(NetError, match="quantize: true"):
        quant.backward()
    for mode in (quant.set_frozen, quant.enable_compile):
        with pytest.raises(NetError, match="quantize: true"):
            mode()
    with pytest.raises(ExportError, match="quantize: true"):
        export_onnx(quant)
    with pytest.raises(ExportError, match="quantize: true"):
        export_pt2(quant)
    from neocaffe.export.fold import fold_net
    with pytest.raises(NetError, match="quantize: true"):
        fold_net(quant)


def _grid_error(net: Net, name: str, layer: str) -> float:
    q = net.quant.qparams(layer).qout[0]
    v = net.blob(name).double() * q.scale_target + q.offset
    return float((v - v.round()).abs().max())


def test_released_deploy_net_runs_within_the_quantization_step():
    param = read_net(str(DATA / "deploy.prototxt"))
    assert param.quantize and not param.HasField("net_quantization_param")
    torch.manual_seed(0)
    quant = Net(param, TEST)
    _sane_bn(quant)
    param.quantize = False
    plain, twin = Net(param, TEST), Net(param, TEST)
    plain.copy_from(quant.to_weights())
    twin.copy_from(quant.to_weights())
    fork = ForkNet(twin, quant.net_param.net_quantization_param)
    g = torch.Generator().manual_seed(3)
    for k in range(3):
        x = torch.rand(1, 3, 32, 32, generator=g) * 255
        quant.forward({"data": x})
        plain.forward({"data": x})
        for name, v in fork.forward({"data": x}).items():  # the fork's port: equal, blob by blob
            np.testing.assert_array_equal(quant.blob(name).numpy(), v, err_msg=f"blob '{name}' at forward {k}")
    q = quant.quant.qparams("fc10").qout[0]
    assert q.quantize and q.bitwidth == 8 and not q.unsigned_quant
    for name, layer in (("fc10", "fc10"), ("pool5", "pool5"), ("data/bias", "data/bias")):
        assert _grid_error(quant, name, layer) < 1e-3, name  # each quantized output sits on its 8-bit grid
    # the input Bias layer's output is the first quantized blob: within half a step of the float one
    step = 1.0 / quant.quant.qparams("data/bias").qout[0].scale_target
    assert float((quant.blob("data/bias") - plain.blob("data/bias")).abs().max()) <= 0.5 * step * (1 + 1e-5)
    # the logits: every quantized layer adds its rounding (12-bit weights, 8-bit activations); measured 1.1 and
    # 1.5 steps of fc10's 8-bit grid at the two quantized forwards here
    diff = float((quant.blob("fc10") - plain.blob("fc10")).abs().max())
    assert 0 < diff <= 2.5 / q.scale_target, (diff, 1.0 / q.scale_target)
    assert torch.equal(quant.blob("prob").argmax(1), plain.blob("prob").argmax(1))


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs CUDA")
def test_cuda_forwards_equal_the_fork_port_on_cuda():
    """The same code on CUDA: equal to the port driving the same layers on CUDA (the trim is the same float32
    arithmetic there), and within a step of the CPU run (the float layers take other kernels)."""
    quant, twin, _ = _nets(NET)
    cpu_q = Net(read_net("quantize: true\n" + NET), TEST)
    cpu_q.copy_from(quant.to_weights())
    quant.to("cuda")
    twin.to("cuda")
    fork = ForkNet(twin, quant.net_param.net_quantization_param)
    for k, x in enumerate(_inputs(4)):
        quant.forward({"data": x.cuda()})
        cpu_q.forward({"data": x})
        for name, v in fork.forward({"data": x.cuda()}).items():
            np.testing.assert_array_equal(quant.blob(name).cpu().numpy(), v, err_msg=f"blob '{name}' at forward {k}")
    assert quant.blob("ip").is_cuda and _grid_error(quant, "ip", "ip") < 1e-3
    q = cpu_q.quant.qparams("ip").qout[0]
    assert float((cpu_q.blob("ip") - quant.blob("ip").cpu()).abs().max()) <= 3.0 / q.scale_target


def test_schema_defaults_are_the_fork_ones():
    p = caffe_pb2.NetParameter().net_quantization_param
    assert (p.bitwidth_weights, p.bitwidth_activations, p.bitwidth_bias, p.quantization_start) == (12, 8, 16, 1)
    assert p.apply_offset_weights and not p.apply_offset_activations and abs(p.range_expansion_factor - 1.25) < 1e-7


def test_stochastic_rounding_lands_on_a_neighbouring_level():
    q = QParams()
    estimate(q, -1.0, 1.0, 8, False, False, False)
    x = torch.rand(4096, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = trim(x, q, 1, True) * q.scale_target
    scaled = x * q.scale_target
    down = (y - torch.floor(scaled)).abs() < 1e-3
    up = (y - torch.floor(scaled) - 1).abs() < 1e-3
    assert torch.all(down | up)  # floor(x * scale + u), u uniform in [0, 1)
    frac = scaled - torch.floor(scaled)
    up = up.float()
    assert abs(float(up.mean() - frac.mean())) < 0.03  # rounds up with the probability of the fraction


def test_display_logs_the_records_and_plain_nets_carry_nothing(caplog):
    quant, _, plain = _nets("net_quantization_param { display_quantization: 1 }\n" + NET)
    assert plain.quant is None
    with caplog.at_level("INFO", logger="neocaffe.graph"):
        for x in _inputs(2):
            quant.forward({"data": x})
    text = caplog.text
    assert " Q weights:2 Name:conv1 bitwidth:12" in text and " Q output:" in text and "Name:ip" in text


DATA_NET = """name: 'd'
layer { name: 'data' type: 'Data' top: 'data' top: 'label'
  data_param { source: '%s' batch_size: 2 backend: LMDB } }
layer { name: 'data/bias' type: 'Bias' bottom: 'data' top: 'data/bias'
  bias_param { filler { type: 'constant' value: -128 } } }
layer { name: 'conv' type: 'Convolution' bottom: 'data/bias' top: 'conv'
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: 'gaussian' std: 0.01 }
                      bias_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'conv' top: 'ip'
  inner_product_param { num_output: 4 weight_filler { type: 'gaussian' std: 0.1 } bias_filler { type: 'gaussian' std: 0.1 } } }
"""


def test_data_layer_quantizes_its_first_top_only(tmp_path):
    from neocaffe.data.datum import array_to_datum
    from neocaffe.data.db_writer import DBWriter

    g = np.random.default_rng(1)
    with DBWriter(str(tmp_path / "db"), "lmdb") as db:
        for i in range(8):
            db.put(f"{i:08d}", array_to_datum(g.integers(0, 256, (3, 6, 6), dtype=np.uint8), i % 4).SerializeToString())
    text = DATA_NET % (tmp_path / "db")
    torch.manual_seed(0)
    quant = Net(read_net("quantize: true\n" + text), TEST)
    twin = Net(read_net(text), TEST)
    twin.copy_from(quant.to_weights())
    fork = ForkNet(twin, quant.net_param.net_quantization_param)
    for k in range(4):
        quant.forward()
        for name, v in fork.forward({}).items():
            np.testing.assert_array_equal(quant.blob(name).numpy(), v, err_msg=f"blob '{name}' at forward {k}")
    q = quant.quant.qparams("data").qout
    assert [r.quantize for r in q] == [True, False]  # the label is not quantized
    assert quant.blob("data").unique().numel() < 256  # 0..255 on the 8-bit grid of 1.25 x the range
    quant.close()
    twin.close()
