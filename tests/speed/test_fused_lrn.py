"""The ``fused`` speed mode's Triton kernels (LRN, ReLU+LRN), checked on the CPU through Triton's
interpreter (``TRITON_INTERPRET=1``, set before Triton compiles anything, hence a child process):
against a float64 reference, and a whole net fused vs eager (every blob, diff and param diff).
On CUDA the same checks run compiled (``-m gpu``)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="Triton is not installed (it comes with PyTorch's CUDA wheels)")

CHECK = textwrap.dedent(r'''
    import json, sys
    import torch
    from neocaffe.layers import triton_lrn as T
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    dev = sys.argv[1]
    out = {}
    torch.manual_seed(0)
    size, alpha, beta, k = 5, 1e-4, 0.75, 2.0
    aos, cr = alpha / size, 2 * alpha * beta / size

    def ref(x, relu):
        r = torch.relu(x) if relu else x
        sq = torch.nn.functional.pad(r * r, (0, 0, 0, 0, size // 2, size // 2))
        s = k + aos * sum(sq[:, i:i + x.shape[1]] for i in range(size))
        return r, r * s.pow(-beta)

    def rel(a, b):
        return float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30))

    for relu in (False, True):
        for layout in ("nchw", "nhwc", "slice"):
            x = torch.randn(2, 9, 5, 7, device=dev) * 60
            if layout == "nhwc":
                x = x.contiguous(memory_format=torch.channels_last)
            if layout == "slice":  # a channel Slice's view: strided, neither dense NCHW nor NHWC
                wide = torch.cat([x, torch.randn(2, 3, 5, 7, device=dev)], 1).requires_grad_(True)
                x = wide[:, :9]
                x.retain_grad()
            else:
                x.requires_grad_(True)
            xd = x.detach().double().requires_grad_(True)
            rd, zd = ref(xd, relu)
            if relu:
                r, z = T.relu_lrn(x, size, aos, beta, k, cr)
                gr, gz = torch.randn_like(r), torch.randn_like(z)
                torch.autograd.backward([r, z], [gr, gz])
                torch.autograd.backward([rd, zd], [gr.double(), gz.double()])
                out[f"relu_{layout}_r"] = rel(r, rd)
            else:
                z = T.lrn(x, size, aos, beta, k, cr)
                gz = torch.randn_like(z)
                z.backward(gz)
                zd.backward(gz.double())
            out[f"{relu}_{layout}_fwd"] = rel(z, zd)
            out[f"{relu}_{layout}_bwd"] = rel(x.grad, xd.grad)
    xb = (torch.randn(2, 6, 4, 4, device=dev) * 30).to(torch.bfloat16)
    zb = T.lrn(xb, size, aos, beta, k, cr)
    out["bf16_dtype"] = str(zb.dtype)
    out["bf16_fwd"] = rel(zb.float(), ref(xb.double(), False)[1])

    text = """name: 'n'
    layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 dim: 13 dim: 13 } } }
    layer { name: 'label' type: 'Input' top: 'label' input_param { shape { dim: 2 } } }
    layer { name: 'conv1' type: 'Convolution' bottom: 'data' top: 'conv1'
      convolution_param { num_output: 8 kernel_size: 3 weight_filler { type: 'gaussian' std: 0.3 } } }
    layer { name: 'relu1' type: 'ReLU' bottom: 'conv1' top: 'conv1' }
    layer { name: 'norm1' type: 'LRN' bottom: 'conv1' top: 'norm1' lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
    layer { name: 'pool1' type: 'Pooling' bottom: 'norm1' top: 'pool1' pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
    layer { name: 'norm2' type: 'LRN' bottom: 'pool1' top: 'norm2' lrn_param { local_size: 3 alpha: 0.01 beta: 0.75 } }
    layer { name: 'ip' type: 'InnerProduct' bottom: 'norm2' top: 'ip' inner_product_param { num_output: 4
      weight_filler { type: 'gaussian' std: 0.1 } } }
    layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label' top: 'loss' }
    """
    # a solver-style net (no kept blob diffs) runs relu1+norm1 as one kernel; a pycaffe-style net (blob
    # diffs kept, ranged backward possible) runs them one by one but still uses the LRN kernels
    nets = []
    from neocaffe import rng
    for fused, keep in ((False, True), (True, False), (True, True)):
        rng.set_seed(5)  # the same fillers in every run (the parameters are copied from the first net too)
        net = Net(read_net("force_backward: true " + text), 0, device=dev, keep_blob_diffs=keep)
        if fused:
            out[f"pairs_{keep}"] = net.set_fused_kernels(True)
            with torch.no_grad():
                for pa, pb in zip(nets[0].parameters(), net.parameters()):
                    pb.copy_(pa)
        torch.manual_seed(2)
        net.set_blob("data", torch.randn(2, 3, 13, 13, device=dev) * 50)
        net.set_blob("label", torch.tensor([1.0, 3.0], device=dev))
        out[f"loss_{fused}_{keep}"] = float(net.forward().detach())
        net.clear_param_diffs()
        net.backward()
        nets.append(net)
    eager, lean, kept = nets
    worst = 0.0
    for other in (lean, kept):
        for name in eager.blob_names:
            pairs = [(eager.blob_data[name], other.blob_data[name])]
            if other.keep_blob_diffs:  # a training net (no kept blob diffs) has parameter diffs only
                pairs.append((eager.blob_diff(name), other.blob_diff(name)))
            for a, b in pairs:
                if a.is_floating_point() and a.numel():
                    worst = max(worst, rel(b.detach(), a.detach().double()))
        for pa, pb in zip(eager.parameters(), other.parameters()):
            worst = max(worst, rel(pb.grad, pa.grad.double()))
    out["net_worst"] = worst
    print(json.dumps(out))
''')


def _run(device: str, interpret: bool) -> dict:
    env = dict(os.environ)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, "-c", CHECK, device], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(out: dict) -> None:
    for key, value in out.items():
        if key.endswith(("_fwd", "_bwd", "_r")) and not key.startswith("bf16"):
            assert value < 1e-6, f"{key}: relative error {value}"
    assert out["bf16_dtype"] == "torch.bfloat16" and out["bf16_fwd"] < 1e-2
    assert out["pairs_False"] == out["pairs_True"] == ["relu1+norm1"]
    for fused in ("True_False", "True_True"):
        # float32 through LRN kernels that sum in another order: the loss, as every blob (net_worst), to 1e-5
        assert abs(out[f"loss_{fused}"] - out["loss_False_True"]) <= 1e-5 * abs(out["loss_False_True"])
    assert out["net_worst"] < 1e-5, out


@needs_triton
def test_fused_lrn_kernels_in_triton_interpreter():
    _check(_run("cpu", interpret=True))


@pytest.mark.gpu
@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_lrn_kernels_on_cuda():
    _check(_run("cuda", interpret=False))


def test_fused_mode_plumbing():
    from neocaffe.solver.speed import SpeedModeError, SpeedModes

    assert SpeedModes.resolve("fp32", fused=True).describe() == "fp32+fused"
    with pytest.raises(SpeedModeError, match="exclude each other"):
        SpeedModes(fused=True, compile="default")


def test_fused_mode_off_the_gpu_runs_the_eager_layers():
    """On a CPU without the interpreter the fused mode changes nothing, bit for bit."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter is on in this process")
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    text = """layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 6 dim: 5 dim: 5 } } }
    layer { name: 'relu1' type: 'ReLU' bottom: 'data' top: 'data' }
    layer { name: 'norm1' type: 'LRN' bottom: 'data' top: 'norm1' lrn_param { local_size: 5 alpha: 0.1 } }"""
    x = torch.randn(2, 6, 5, 5) * 5
    tops = []
    for fused in (False, True):
        net = Net(read_net(text), 0)
        assert net.set_fused_kernels(fused) == (["relu1+norm1"] if fused else [])
        net.forward({"data": x})
        tops.append(net.blob_data["norm1"].detach().clone())
    assert torch.equal(tops[0], tops[1])


@needs_triton
@pytest.mark.parametrize("relu", [False, True])
def test_fused_lrn_kernels_compile_for_hopper(relu):
    import triton

    """Both kernels go through Triton's CUDA backend to a cubin for sm_90 (H100/H200); no GPU needed."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter is on in this process")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from neocaffe.layers import triton_lrn as T

    target = GPUTarget("cuda", 90, 32)
    scalars = {"C": "i32", "P": "i32", "oN": "i32", "oC": "i32", "oP": "i32"}
    for dtype in ("fp32", "bf16"):
        fwd = {"x_ptr": f"*{dtype}", "r_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "s_ptr": "*fp32", **scalars,
               "sN": "i32", "sC": "i32", "sP": "i32", "alpha_over_size": "fp32", "beta": "fp32", "k": "fp32",
               "HALF": "constexpr", "RELU": "constexpr", "LIBDEVICE": "constexpr", "BLOCK": "constexpr"}
        bwd = {"x_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "s_ptr": "*fp32", "dy_ptr": f"*{dtype}",
               "dr_ptr": f"*{dtype}", "dx_ptr": f"*{dtype}", **scalars, "beta": "fp32", "cache_ratio": "fp32",
               "HALF": "constexpr", "RELU": "constexpr", "EXTRA": "constexpr", "LIBDEVICE": "constexpr",
               "BLOCK": "constexpr"}
        consts = {"HALF": 2, "RELU": relu, "LIBDEVICE": True, "BLOCK": T._BLOCK}
        for fn, sig, extra in ((T._lrn_fwd_kernel, fwd, {}), (T._lrn_bwd_kernel, bwd, {"EXTRA": relu})):
            kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs={**consts, **extra}), target=target)
            assert kernel.asm["cubin"], f"{fn.__name__} ({dtype}) gave no cubin"


SOLVER_CHECK = textwrap.dedent(r'''
    import json
    import torch
    from tests.speed.nets import make_solver, train_losses

    out = {}
    for name, kw in (("fp32", {}), ("fused", {"fused": True}),
                     ("bf16_nhwc", {"precision": "bf16", "channels_last": True}),
                     ("bf16_nhwc_fused", {"precision": "bf16", "channels_last": True, "fused": True})):
        s = make_solver(**kw)
        out[name] = train_losses(s, 4)
        out[name + "_pairs"] = sorted(k for k, v in s.net.fused_pairs.items())
    print(json.dumps(out))
''')


@needs_triton
def test_solver_in_fused_mode_trains_like_eager_in_triton_interpreter():
    """Solver(fused=True) pairs relu1+norm1 (the net's one ReLU+LRN) and trains as the eager net does:
    fp32 losses within 1e-5, bf16+channels_last within bf16 rounding of its eager run."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", SOLVER_CHECK], capture_output=True, text=True, env=env,
                          timeout=600, cwd=str(Path(__file__).resolve().parents[2]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["fp32_pairs"] == [] and out["fused_pairs"] == out["bf16_nhwc_fused_pairs"] == [2], out
    for a, b in zip(out["fp32"], out["fused"]):
        assert abs(a - b) <= 1e-5 * abs(a), (out["fp32"], out["fused"])
    for a, b in zip(out["bf16_nhwc"], out["bf16_nhwc_fused"]):
        assert abs(a - b) <= 0.02 + 0.03 * abs(a), (out["bf16_nhwc"], out["bf16_nhwc_fused"])
