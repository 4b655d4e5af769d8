"""Opt-in speed modes on the CPU: each trains with finite losses; bf16 stays within its stated
tolerance of fp32; channels_last and the compiled forward reproduce fp32; modes come from arguments,
flags or the NEOCAFFE_* environment."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.speed.nets import make_solver, train_losses

MODES = {
    "fp32": {},
    "tf32": {"precision": "tf32"},
    "bf16": {"precision": "bf16"},
    "channels_last": {"channels_last": True},
    "bf16_channels_last": {"precision": "bf16", "channels_last": True},
    "cudnn_benchmark": {"cudnn_benchmark": True},
    "fused": {"fused": True},  # off CUDA the layers run eagerly (the kernels: tests/speed/test_fused_lrn.py)
    "bf16_channels_last_fused": {"precision": "bf16", "channels_last": True, "fused": True},
}

# bf16 (8-bit mantissa, relative rounding 2**-9) against fp32 over 20 SGD iterations of the tiny net:
# every loss within 0.02 + 3% of fp32's, every parameter within 5% (relative L2). Seen on the CPU:
# at most 0.012 apart and 1.3%.
BF16_LOSS_ABS, BF16_LOSS_REL, BF16_PARAM_REL = 0.02, 0.03, 0.05


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_trains_with_finite_losses(mode):
    s = make_solver(dropout=True, **MODES[mode])
    before = [p.detach().clone() for p in s.net.parameters()]
    losses = train_losses(s, 5)
    assert all(math.isfinite(x) for x in losses), losses
    assert not s.diverged
    for p, b in zip(s.net.parameters(), before):
        assert torch.isfinite(p).all() and not torch.equal(p.detach(), b)
    if MODES[mode].get("channels_last"):
        conv = s.net.layer("conv1").blobs[0]
        assert conv.is_contiguous(memory_format=torch.channels_last)
        assert conv.grad.is_contiguous(memory_format=torch.channels_last)


def test_compiled_forward_trains_with_finite_losses():
    """The compiled path (Dynamo + AOTAutograd; the aot_eager backend keeps CI fast), in one graph."""
    s = make_solver(dropout=True)
    s.net.enable_compile(backend="aot_eager", fullgraph=True)
    losses = train_losses(s, 5)
    assert all(math.isfinite(x) for x in losses), losses


def test_bf16_stays_within_tolerance_of_fp32():
    ref = make_solver()
    bf = make_solver(precision="bf16")
    la, lb = train_losses(ref, 20), train_losses(bf, 20)
    for k, (a, b) in enumerate(zip(la, lb)):
        assert abs(a - b) <= BF16_LOSS_ABS + BF16_LOSS_REL * abs(a), f"iteration {k}: fp32 {a} bf16 {b}"
    for p, q in zip(ref.net.parameters(), bf.net.parameters()):
        assert q.dtype == torch.float32  # fp32 master weights
        assert float((p - q).detach().norm() / p.detach().norm()) <= BF16_PARAM_REL
    assert all(h.dtype == torch.float32 for h in bf.rule.history)


def test_channels_last_and_compiled_forward_reproduce_fp32():
    ref = make_solver()
    nhwc = make_solver(channels_last=True)
    comp = make_solver()
    comp.net.enable_compile(backend="aot_eager", fullgraph=True)
    la, lb, lc = train_losses(ref, 6), train_losses(nhwc, 6), train_losses(comp, 6)
    np.testing.assert_allclose(lb, la, rtol=1e-5)
    np.testing.assert_allclose(lc, la, rtol=1e-5)
    for p, q, r in zip(ref.net.parameters(), nhwc.net.parameters(), comp.net.parameters()):
        torch.testing.assert_close(q.detach(), p.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r.detach(), p.detach(), rtol=1e-5, atol=1e-6)


def test_solver_compile_flag_compiles_the_train_net(monkeypatch):
    from neocaffe.graph.net import Net

    seen = []
    monkeypatch.setattr(Net, "enable_compile", lambda self, mode="default", **kw: seen.append((self, mode)))
    s = make_solver(compile="reduce-overhead")
    assert seen == [(s.net, "reduce-overhead")]
    assert s.modes.compile == "reduce-overhead" and not s.modes.caffe_exact


def _inductor_ok() -> tuple[bool, str]:
    from neocaffe.solver.speed import compile_supported

    return compile_supported("cpu")


@pytest.mark.slow
@pytest.mark.skipif(not _inductor_ok()[0], reason=f"torch.compile cannot run here: {_inductor_ok()[1]}")
def test_solver_compile_with_inductor():
    """The real thing: inductor generates and builds C++ kernels (about 30 s the first time on 2 busy
    cores, a few seconds from its on-disk cache)."""
    ref, comp = make_solver(), make_solver(compile=True)
    la, lc = train_losses(ref, 4), train_losses(comp, 4)
    np.testing.assert_allclose(lc, la, rtol=1e-4)


def test_modes_from_environment_and_errors(monkeypatch):
    from neocaffe.solver.solver import SolverError
    from neocaffe.solver.speed import SpeedModes

    monkeypatch.setenv("NEOCAFFE_PRECISION", "bf16")
    monkeypatch.setenv("NEOCAFFE_CHANNELS_LAST", "1")
    m = SpeedModes.resolve()
    assert (m.precision, m.channels_last, m.compile) == ("bf16", True, "")
    assert SpeedModes.resolve(precision="fp32", channels_last=False).caffe_exact
    monkeypatch.setenv("NEOCAFFE_PRECISION", "fp16")
    with pytest.raises(SolverError, match="valid: fp32, tf32, bf16"):
        make_solver()
    monkeypatch.delenv("NEOCAFFE_PRECISION")
    with pytest.raises(SolverError, match="unknown compile mode"):
        make_solver(compile="fastest")
    monkeypatch.setenv("NEOCAFFE_FUSED", "1")
    assert SpeedModes.resolve().fused and not SpeedModes.resolve(fused=False).fused


def test_cli_speed_flags():
    from neocaffe.cli.caffe import parse_args
    from neocaffe.cli.train import speed_modes as _speed_modes

    a = parse_args(["train", "-channels_last", "--compile", "--precision=tf32", "-nocudnn_benchmark"])
    m = _speed_modes(a)
    assert (m.precision, m.channels_last, m.cudnn_benchmark, m.compile) == ("tf32", True, False, "default")
    assert _speed_modes(parse_args(["train", "-fused"])).fused
    with pytest.raises(Exception, match="exclude each other"):
        _speed_modes(parse_args(["train", "-fused", "-compile"]))
    assert parse_args(["train", "--compile=reduce-overhead"]).compile == "reduce-overhead"
    assert parse_args(["-channels_last=false", "train"]).channels_last is False
    assert parse_args(["train", "-cpu_procs", "2"]).cpu_procs == 2


def test_slice_concat_and_split_compile_into_one_graph():
    """The split AlexNet's Slice/Concat and the net's own Split layers trace without graph breaks."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    text = """
    layer { name: "in" type: "Input" top: "x" top: "y"
      input_param { shape { dim: 2 dim: 4 dim: 5 dim: 5 } shape { dim: 2 dim: 6 dim: 3 dim: 3 } } }
    layer { name: "sl" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { axis: 1 } }
    layer { name: "ca" type: "Convolution" bottom: "a" top: "ca" convolution_param { num_output: 3 kernel_size: 3
      weight_filler { type: "gaussian" std: 0.3 } } }
    layer { name: "cb" type: "Convolution" bottom: "b" top: "cb" convolution_param { num_output: 3 kernel_size: 3
      weight_filler { type: "gaussian" std: 0.3 } } }
    layer { name: "cat" type: "Concat" bottom: "ca" bottom: "cb" top: "c" }
    layer { name: "relu" type: "ReLU" bottom: "c" top: "r" }
    layer { name: "l1" type: "EuclideanLoss" bottom: "c" bottom: "y" top: "l1" }
    layer { name: "l2" type: "EuclideanLoss" bottom: "r" bottom: "y" top: "l2" }
    """  # c feeds two layers: the net inserts a Split
    out = []
    for compiled in (False, True):
        torch.manual_seed(0)
        from neocaffe import rng

        rng.set_seed(0)
        net = Net(read_net(text), 0, keep_blob_diffs=False)
        assert any(t == "Split" for t in (s.type for s in net.steps))
        g = torch.Generator().manual_seed(1)
        net.set_blob("x", torch.randn(2, 4, 5, 5, generator=g))
        net.set_blob("y", torch.randn(2, 6, 3, 3, generator=g))
        if compiled:
            net.enable_compile(backend="aot_eager", fullgraph=True)
        loss = net.forward()
        net.backward()
        out.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(out[1][0], out[0][0])
    for a, b in zip(out[1][1], out[0][1]):
        torch.testing.assert_close(a, b)
