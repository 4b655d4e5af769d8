"""Devices and opt-in precisions: CUDA reproduces the trajectories; tf32/bf16 run (not Caffe-exact)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.solver.test_trajectories import CONFIGS, FIX, _fixture_dir, rel_err


def _solver(cfg, monkeypatch, **kw):
    from neocaffe.io.prototxt import read_solver
    from neocaffe.solver.solver import Solver

    monkeypatch.chdir(_fixture_dir())
    s = Solver(read_solver(f"{cfg}.solver.prototxt"), **kw)
    s.net.copy_from("init.caffemodel")
    return s


FORCE = FIX.parent / "force"
EVERY = [("solver", c) for c in CONFIGS] + [("force", p.name.split(".")[0]) for p in sorted(FORCE.glob("*.solver.prototxt"))]


@pytest.mark.parametrize("folder,cfg", EVERY)
def test_steps_make_no_tensor_on_the_default_device(folder, cfg, monkeypatch):
    """Every update rule, lr policy, clip, iter_size, force type and SSL term makes its tensors on the
    parameters' device: with PyTorch's default device set to meta, where a tensor made without
    ``device=`` lands and cannot mix with the CPU parameters (as a CPU tensor cannot mix into CUDA
    work), three steps give the same weights as without."""
    import torch
    from google.protobuf import text_format

    from neocaffe.io.prototxt import read_solver
    from neocaffe.solver.solver import Solver

    monkeypatch.chdir(_fixture_dir().parent / folder)
    weights = []
    for default in ("cpu", "meta"):
        param = read_solver(f"{cfg}.solver.prototxt")
        if folder == "force":  # the scnn branch's group lasso terms ride along
            text_format.Merge("kernel_shape_decay: 0.001 breadth_decay: 0.001", param)
        s = Solver(param)
        with torch.device(default):
            s.step(3)
        weights.append([p.detach().clone() for p in s.net.parameters()])
    for a, b in zip(*weights):
        assert torch.equal(a, b), cfg


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_opt_in_precisions_train(precision, monkeypatch):
    s = _solver("sgd_fixed_l2", monkeypatch, precision=precision)
    s.step(3)
    assert np.isfinite(float(s.net.blob_data["loss"].detach()))


def test_unknown_precision_and_missing_cuda_are_errors(monkeypatch):
    import torch

    from neocaffe.solver.solver import SolverError

    with pytest.raises(SolverError, match="valid: fp32, tf32, bf16"):
        _solver("sgd_fixed_l2", monkeypatch, precision="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(SolverError, match="CUDA is not available"):
            _solver("sgd_fixed_l2", monkeypatch, device="cuda:0")


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", CONFIGS)
def test_trajectory_on_cuda(cfg, monkeypatch):
    s = _solver(cfg, monkeypatch, device="cuda:0")
    t = np.load(FIX / f"{cfg}.trajectory.npz")
    ip = s.net.layer("innerprod")
    for k in range(10):
        s.step(1)
        assert rel_err(ip.blobs[0].detach().cpu(), t["weight"][k + 1]) < 1e-5, f"{cfg} step {k + 1}"
        assert rel_err(ip.blobs[1].detach().cpu(), t["bias"][k + 1]) < 1e-5


@pytest.mark.gpu
def test_device_cuda_without_an_index_means_the_current_one(monkeypatch):
    """``device="cuda"`` resolves to ``cuda:<current>``: set_device (data-parallel) and device
    comparisons need the index."""
    import torch

    s = _solver("sgd_fixed_l2", monkeypatch, device="cuda")
    assert s.device == torch.device("cuda", torch.cuda.current_device()) == s.net.device
    s.step(2)
