"""Force regularization: the fork's 11 golden trajectories, a pairwise reference, closed forms, schedule."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from neocaffe.graph.params import ParamInfo
from neocaffe.proto import caffe_pb2
from neocaffe.regularizers.base import get_regularizer_class
from neocaffe.regularizers.chain import RegularizerChain
from neocaffe.regularizers.force import ForceRegularizer, force_field, force_gradient
from tests.conftest import SHARED, shared_path

FORCE = SHARED / "fixtures" / "force"
CONFIGS = sorted(p.name[: -len(".solver.prototxt")] for p in FORCE.glob("*.solver.prototxt"))
TYPES = ("Degradation", "Constant", "Linear", "Gravity")


# -- a pairwise reference, written from the fork's semantics (float64, one pair at a time) ----------
def pairwise_force(w: np.ndarray, force_type: str) -> np.ndarray:
    """Sum over pairs i<j of the fork's per-pair forces, skips included, before direction/strength."""
    power = {"Degradation": 0, "Constant": 1, "Linear": 2, "Gravity": 3}[force_type]
    x = w.reshape(w.shape[0], -1).astype(np.float64)
    out = np.zeros_like(x)
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            li, lj = np.linalg.norm(x[i]), np.linalg.norm(x[j])
            if li <= 1e-4 or lj <= 1e-4:
                continue
            ni, nj = x[i] / li, x[j] / lj
            diff = ni - nj
            dist = np.linalg.norm(diff) if power else 1.0
            if dist <= 1e-4:
                continue
            f = diff / dist**power
            radial = ni @ f  # the fork projects both ends with n_i . f (equal to -n_j . (-f) exactly)
            out[i] += li * (f - radial * ni)
            out[j] += lj * (-f - radial * nj)
    return out.reshape(w.shape)


def reference_delta(w, g, decay, force_type, direction, decay_type):
    field = pairwise_force(w, force_type)
    g = g.astype(np.float64)
    if direction == "same":
        field = np.where(g * field < 0, 0.0, field)
    if decay_type == "adaptive":
        reg = np.linalg.norm(field)
        decay = decay * np.linalg.norm(g) / reg if reg >= 1e-8 else 0.0
    return decay * field


def random_weights(rng, trial):
    n = int(rng.integers(2, 10))
    shape = (n, int(rng.integers(1, 4)), 3, 3) if trial % 2 else (n, int(rng.integers(2, 20)))
    w = rng.normal(size=shape) * rng.uniform(0.01, 2.0)
    if trial % 4 == 0:
        w[0] = 0.0  # a dead filter: skipped
    if trial % 3 == 0:
        w[1] = 2.5 * w[-1]  # parallel filters: distance 0, skipped by all types but Degradation
    if trial % 5 == 0:
        w[-1] = w[0] + 1e-2 * rng.normal(size=w[0].shape)  # nearly parallel: large Gravity forces
    return w.astype(np.float32), rng.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("force_type", TYPES)
@pytest.mark.parametrize("direction", ("all", "same"))
@pytest.mark.parametrize("decay_type", ("fixed", "adaptive"))
def test_matrix_form_matches_pairwise_reference(force_type, direction, decay_type):
    rng = np.random.default_rng(7)
    for trial in range(25):
        w, g = random_weights(rng, trial)
        want = reference_delta(w, g, 0.05, force_type, direction, decay_type)
        got, _ = force_gradient(torch.from_numpy(w), torch.from_numpy(g), 0.05, force_type, direction,
                                decay_type)
        scale = max(np.abs(want).max(), 1e-30)
        assert np.abs(got.numpy() - want).max() <= 1e-5 * scale, (trial, w.shape)


def test_float32_compute_is_close_for_well_separated_filters():
    rng = np.random.default_rng(4)
    w = torch.from_numpy(rng.normal(size=(32, 4, 3, 3)).astype(np.float32))
    g = torch.from_numpy(rng.normal(size=(32, 4, 3, 3)).astype(np.float32))
    for force_type in TYPES:
        d64, p64 = force_gradient(w, g, 0.1, force_type, "same", "adaptive")
        d32, p32 = force_gradient(w, g, 0.1, force_type, "same", "adaptive", dtype=torch.float32)
        assert (d32 - d64).abs().max() <= 1e-4 * d64.abs().max()
        assert p32.item() == pytest.approx(p64.item(), rel=1e-4)


def test_closed_form_two_orthogonal_filters():
    # e1 (length 3) and e2 (length 1): d = sqrt(2); pair force on 1 is (e1 - e2)/d^p, tangent part -e2/d^p.
    w = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    for force_type, p in zip(TYPES, range(4)):
        field, energy = force_field(w, force_type)
        k = math.sqrt(2) ** -p
        assert torch.allclose(field, torch.tensor([[0.0, -3 * k], [-k, 0.0]], dtype=field.dtype))
        d = math.sqrt(2)
        u = {0: d * d / 2, 1: d, 2: math.log(d), 3: -1 / d}[p]
        assert energy.item() == pytest.approx(u)


def test_gradient_descent_on_field_brings_filters_together():
    w = torch.tensor([[1.0, 0.2, 0.0], [0.1, 1.0, 0.3], [0.0, 0.4, 1.0]])
    cos_before = F.normalize(w, dim=1) @ F.normalize(w, dim=1).T
    for force_type in TYPES:
        field, _ = force_field(w, force_type)
        moved = w - 0.05 * field.float()
        cos_after = F.normalize(moved, dim=1) @ F.normalize(moved, dim=1).T
        assert (cos_after.triu(1).sum() > cos_before.triu(1).sum()), force_type


def _info(shape, force_mult=1.0, value=None):
    p = torch.nn.Parameter(torch.randn(*shape) if value is None else value.clone())
    p.grad = torch.randn(*shape)
    return ParamInfo(p, "conv", 0, caffe_pb2.ParamSpec(force_mult=force_mult))


def test_from_solver_and_registry():
    assert get_regularizer_class("force") is ForceRegularizer
    assert ForceRegularizer.from_solver(caffe_pb2.SolverParameter()) is None
    reg = ForceRegularizer.from_solver(caffe_pb2.SolverParameter(
        force_decay=0.1, force_type="Linear", force_direction="same", force_decay_type="adaptive",
        force_iter=7))
    assert (reg.force_type, reg.direction, reg.decay_type, reg.stop_iter) == ("Linear", "same", "adaptive", 7)
    assert reg.decay == pytest.approx(0.1)
    chain = RegularizerChain.from_solver(caffe_pb2.SolverParameter(weight_decay=1e-4, force_decay=0.1))
    assert chain.names == ["weight_decay", "force"]  # force after weight decay, as in the fork
    for field, value in (("force_type", "Spring"), ("force_direction", "opposite"),
                         ("force_decay_type", "auto")):
        sp = caffe_pb2.SolverParameter(force_decay=0.1)
        setattr(sp, field, value)
        with pytest.raises(ValueError, match=f"{field}.*Received.*{value}"):
            ForceRegularizer.from_solver(sp)


def test_skips_vectors_zero_mult_and_schedule():
    reg = ForceRegularizer(0.5, "Constant", stop_iter=3)
    bias = _info((6,))
    before = bias.param.grad.clone()
    assert reg.apply(bias, 0, 0.01) == 0.0 and torch.equal(bias.param.grad, before)  # 1 axis: untouched
    off = _info((4, 5), force_mult=0.0)
    before = off.param.grad.clone()
    assert reg.apply(off, 0, 0.01) == 0.0 and torch.equal(off.param.grad, before)
    on = _info((4, 5), force_mult=2.0)
    for it, applies in ((0, True), (2, True), (3, False), (100, False)):
        before = on.param.grad.clone()
        pen = reg.apply(on, it, 0.01)
        changed = not torch.equal(on.param.grad, before)
        assert changed == applies, it
        if applies:  # strength force_decay * force_mult
            delta, want_pen = force_gradient(on.param, before, 1.0, "Constant")
            torch.testing.assert_close(on.param.grad - before, delta)
            torch.testing.assert_close(pen, want_pen)
    assert ForceRegularizer(0.5).active(10**9)  # force_iter -1: never stops


def test_strengths_are_built_once_per_parameter_list_however_it_is_asked(monkeypatch):
    """Whole net at once or one weight at a time (``apply``), the strengths tensor of each list is made
    once: made again every step it would be a host-to-device copy, a CUDA synchronisation, per weight."""
    reg = ForceRegularizer(0.5, "Gravity")
    infos = [_info((4, 5)), _info((3, 2, 3, 3)), _info((4, 5), force_mult=2.0)]
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or real(*a, **k))
    for _ in range(3):
        reg.apply_all(infos, 0)
        for info in infos:
            reg.apply(info, 0)
    assert len(made) == 2 + 3  # the whole list's two shape groups, then each weight alone
    assert len(reg._groups(infos)) == 2 and len(made) == 5


def test_adaptive_scales_to_gradient_length():
    info = _info((5, 3, 3, 3))
    g0 = info.param.grad.clone()
    ForceRegularizer(0.25, "Gravity", decay_type="adaptive").apply(info, 0, 0.01)
    added = info.param.grad - g0
    assert added.norm().item() == pytest.approx(0.25 * g0.norm().item(), rel=1e-5)


def test_same_direction_never_opposes_the_gradient():
    info = _info((6, 4, 3, 3))
    g0 = info.param.grad.clone()
    ForceRegularizer(1.0, "Linear", direction="same").apply(info, 0, 0.01)
    added = info.param.grad - g0
    assert (added * g0 >= 0).all() and added.abs().sum() > 0


def test_float64_params_stay_float64():
    info = _info((4, 6))
    info.param.data = info.param.data.double()
    info.param.grad = info.param.grad.double()
    pen = ForceRegularizer(0.1, "Gravity").apply(info, 0, 0.01)
    assert info.param.grad.dtype == torch.float64 and pen.dtype == torch.float64


@pytest.mark.gpu
@pytest.mark.parametrize("force_type", TYPES)
def test_cuda_matches_cpu(force_type):
    rng = np.random.default_rng(3)
    w, g = random_weights(rng, 5)
    w = np.concatenate([w] * 40)  # 200+ filters
    g = np.concatenate([g] * 40)
    w += 1e-3 * rng.normal(size=w.shape).astype(np.float32)
    cpu, pc = force_gradient(torch.from_numpy(w), torch.from_numpy(g), 0.05, force_type, "same", "adaptive")
    gpu, pg = force_gradient(torch.from_numpy(w).cuda(), torch.from_numpy(g).cuda(), 0.05, force_type, "same",
                             "adaptive")
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5 * cpu.abs().max().item())
    torch.testing.assert_close(pg.cpu(), pc, rtol=1e-4, atol=1e-6)


# -- the fork's trajectories -------------------------------------------------------------------------
def run_solver(folder, config, device=None):
    """The real Solver on the fixture (paths in the prototxts are relative to the fixture folder)."""
    from neocaffe.solver.solver import Solver

    solver = Solver(str(folder / f"{config}.solver.prototxt"), device=device)
    solver.net.copy_from(str(folder / "init.caffemodel"))
    weight = solver.net.layer("conv1").blobs[0]
    traj, losses = [weight.detach().cpu().numpy().copy()], []
    for _ in range(solver.param.max_iter):
        solver.step(1)
        losses.append(solver.losses[-1])
        traj.append(weight.detach().cpu().numpy().copy())
    assert ("force" in solver.regularizers.names) == config.startswith("force_")
    return np.stack(traj), np.array(losses)


def _check_trajectory(folder, config, traj, losses):
    gold = np.load(folder / f"{config}.trajectory.npz")
    want = gold["conv1_weight"]
    assert traj.shape == want.shape
    for step in range(len(want)):
        tol = 1e-4 * np.abs(want[step]).max()
        assert np.abs(traj[step] - want[step]).max() <= tol, f"step {step}"
    np.testing.assert_allclose(losses, gold["loss"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("config", CONFIGS or ["no-fixtures"])
def test_fork_trajectory_with_solver(config, monkeypatch):
    folder = shared_path("fixtures", "force")
    monkeypatch.chdir(folder)
    _check_trajectory(folder, config, *run_solver(folder, config))


@pytest.mark.gpu
@pytest.mark.parametrize("config", CONFIGS or ["no-fixtures"])
def test_fork_trajectory_with_solver_cuda(config, monkeypatch):
    folder = shared_path("fixtures", "force")
    monkeypatch.chdir(folder)
    _check_trajectory(folder, config, *run_solver(folder, config, device="cuda"))


# The same trajectories from a minimal exact Caffe SGD loop around the regularizer chain alone (plain
# torch forward, no data layer, net or solver): if the solver test fails and this passes, look there.
def _net_specs(folder):
    net = caffe_pb2.NetParameter()
    text_format.Parse((folder / "net.prototxt").read_text(), net)
    layers = {lp.name: lp for lp in net.layer}
    return layers


def _init_blobs(folder):
    net = caffe_pb2.NetParameter()
    net.ParseFromString((folder / "init.caffemodel").read_bytes())
    out = {}
    for lp in net.layer:
        if lp.blobs:
            out[lp.name] = [np.array(b.data, dtype=np.float32).reshape(tuple(b.shape.dim)) for b in lp.blobs]
    return out


def run_loop(folder, config):
    """Caffe's SGD on the force net: forward/backward, chain (weight decay, force), v = m v + lr g, w -= v."""
    import h5py

    solver = caffe_pb2.SolverParameter()
    text_format.Parse((folder / f"{config}.solver.prototxt").read_text(), solver)
    assert solver.lr_policy == "fixed" and solver.type == "SGD" and solver.iter_size == 1
    with h5py.File(folder / "solver_data.h5", "r") as h5:
        data, targets = torch.from_numpy(h5["data"][:]), torch.from_numpy(h5["targets"][:])
    layers, blobs = _net_specs(folder), _init_blobs(folder)
    batch = layers["data"].hdf5_data_param.batch_size
    infos = []
    for name in ("conv1", "ip"):
        for k, arr in enumerate(blobs[name]):
            spec = caffe_pb2.ParamSpec()
            spec.CopyFrom(layers[name].param[k])
            infos.append(ParamInfo(torch.nn.Parameter(torch.from_numpy(arr.copy())), name, k, spec))
    chain = RegularizerChain.from_solver(solver)
    history = [torch.zeros_like(i.param) for i in infos]
    traj, losses = [infos[0].param.detach().clone()], []
    for it in range(solver.max_iter):
        start = (it * batch) % len(data)
        x, t = data[start:start + batch], targets[start:start + batch]
        for i in infos:
            i.param.grad = None
        cw, cb, iw, ib = (i.param for i in infos)
        top = F.relu(F.conv2d(x, cw, cb)).reshape(len(x), -1) @ iw.T + ib
        loss = ((top - t) ** 2).sum() / (2 * len(x))  # EuclideanLoss
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            chain.apply(infos, it, solver.base_lr)
            for i, h in zip(infos, history):
                h.mul_(solver.momentum).add_(i.param.grad, alpha=solver.base_lr * i.lr_mult)
            for i, h in zip(infos, history):
                i.param.sub_(h)
        traj.append(infos[0].param.detach().clone())
    return torch.stack(traj).numpy(), np.array(losses)


@pytest.mark.parametrize("config", CONFIGS or ["no-fixtures"])
def test_fork_trajectory_minimal_loop(config):
    folder = shared_path("fixtures", "force")
    _check_trajectory(folder, config, *run_loop(folder, config))


def test_fixture_set_is_complete():
    shared_path("fixtures", "force")
    assert len(CONFIGS) == 11
