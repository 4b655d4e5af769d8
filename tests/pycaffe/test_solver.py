"""caffe.SGDSolver & co.: pycaffe's test_solver plus weight sharing, restore, callbacks, memory and
multi-process gradient averaging."""
from __future__ import annotations

import gc
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import caffe

from .nets import simple_net_file, solver_file


def _fill_labels(solver, n=13, seed=0):
    rs = np.random.RandomState(seed)
    solver.net.blobs["label"].data[...] = rs.randint(n, size=solver.net.blobs["label"].data.shape)
    solver.test_nets[0].blobs["label"].data[...] = rs.randint(n, size=solver.test_nets[0].blobs["label"].data.shape)


@pytest.fixture
def solver(tmp_path):
    path = solver_file(tmp_path, simple_net_file(tmp_path, 13))
    s = caffe.SGDSolver(path)
    caffe.get_solver(path)  # also make sure get_solver runs
    _fill_labels(s)
    return s


def test_solve(solver):
    assert solver.iter == 0
    solver.solve()
    assert solver.iter == 100


def test_apply_update(solver):
    net = solver.net
    data = net.layers[1].blobs[0].data[...]
    data[...] = 0
    net.layers[1].blobs[0].diff[...] = 1
    solver.apply_update()  # the initial learning rate is 0.01
    assert np.abs(data - -0.01 * np.ones(data.shape)).max() < 1e-7
    assert solver.iter == 0


def test_net_memory(solver):
    """Nets survive after the solver is destroyed."""
    nets = [solver.net] + list(solver.test_nets)
    assert len(nets) == 2
    del solver
    gc.collect()
    total = 0
    for net in nets:
        for ps in net.params.values():
            for p in ps:
                total += p.data.sum() + p.diff.sum()
        for bl in net.blobs.values():
            total += bl.data.sum() + bl.diff.sum()
    assert np.isfinite(total)


def test_snapshot(solver, tmp_path):
    solver.snapshot()
    for fn in ["model_iter_0.caffemodel", "model_iter_0.solverstate"]:
        assert (tmp_path / fn).is_file()


def test_param_and_views(solver):
    assert solver.param.base_lr == pytest.approx(0.01)
    assert solver.param.lr_policy == "inv"
    assert solver.net is solver.net
    assert solver.net.outputs == ["loss"] and solver.test_nets[0].outputs == ["loss"]
    assert solver.type == "SGD"


def test_test_nets_share_the_train_weights(solver, tmp_path):
    train, test = solver.net, solver.test_nets[0]
    for name in train.params:
        for a, b in zip(train.params[name], test.params[name]):
            assert np.shares_memory(a.data, b.data)
    train.params["ip"][0].data[...] = 0.5
    assert (test.params["ip"][0].data == 0.5).all()
    solver.step(3)
    np.testing.assert_array_equal(train.params["ip"][0].data, test.params["ip"][0].data)
    assert not (test.params["ip"][0].data == 0.5).all()
    # copy_from on the train net reaches the test net too
    other = caffe.Net(str(tmp_path / "simple_net.prototxt"), caffe.TEST)
    other.params["conv"][0].data[...] = 3.0
    other.save(str(tmp_path / "w.caffemodel"))
    train.copy_from(str(tmp_path / "w.caffemodel"))
    assert (test.params["conv"][0].data == 3.0).all()
    # share_weights: an outside net reads the solver's weights
    outside = caffe.Net(str(tmp_path / "simple_net.prototxt"), caffe.TEST)
    solver.share_weights(outside)
    assert (outside.params["conv"][0].data == 3.0).all()


SOLVER_SETTINGS = {
    "SGD": {},
    "Nesterov": {},
    "AdaGrad": {"momentum": 0, "delta": 1e-8},
    "RMSProp": {"momentum": 0, "rms_decay": 0.98},
    "AdaDelta": {"base_lr": 1.0, "momentum": 0.95, "delta": 1e-6},
    "Adam": {"momentum": 0.9, "momentum2": 0.999, "delta": 1e-8},
}
CLASSES = {
    "SGD": caffe.SGDSolver, "Nesterov": caffe.NesterovSolver, "AdaGrad": caffe.AdaGradSolver,
    "RMSProp": caffe.RMSPropSolver, "AdaDelta": caffe.AdaDeltaSolver, "Adam": caffe.AdamSolver,
}


@pytest.mark.parametrize("kind", list(CLASSES))
def test_every_solver_class(tmp_path, kind):
    path = solver_file(tmp_path, simple_net_file(tmp_path, 13), **SOLVER_SETTINGS[kind])
    s = CLASSES[kind](path)
    assert s.type == kind
    _fill_labels(s)
    before = s.net.params["ip"][0].data.copy()
    s.step(2)
    assert s.iter == 2
    assert not np.array_equal(before, s.net.params["ip"][0].data)
    # get_solver reads the type from the file
    typed = solver_file(tmp_path, str(tmp_path / "simple_net.prototxt"), extra=f'type: "{kind}"\n',
                        **SOLVER_SETTINGS[kind])
    assert caffe.get_solver(typed).type == kind


@pytest.mark.parametrize("kind", list(CLASSES))
def test_get_solver_returns_the_typed_class(tmp_path, kind):
    """caffe.get_solver gives the class of the type the file names (Caffe's SolverRegistry creates
    an AdamSolver for type "Adam"), from ``type`` or the legacy ``solver_type`` enum."""
    net = simple_net_file(tmp_path, 13)
    typed = caffe.get_solver(solver_file(tmp_path, net, extra=f'type: "{kind}"\n', **SOLVER_SETTINGS[kind]))
    assert type(typed) is CLASSES[kind] and typed.type == kind
    legacy = kind.upper()
    legacy = caffe.get_solver(solver_file(tmp_path, net, extra=f"solver_type: {legacy}\n", **SOLVER_SETTINGS[kind]))
    assert type(legacy) is CLASSES[kind] and legacy.type == kind
    param = caffe.proto.caffe_pb2.SolverParameter()
    param.net, param.lr_policy, param.base_lr = net, "fixed", 0.01
    param.solver_type = caffe.proto.caffe_pb2.SolverParameter.SolverType.Value(kind.upper())
    assert type(caffe.get_solver(param)) is CLASSES[kind]


def test_get_solver_defaults_to_sgd(tmp_path):
    assert isinstance(caffe.get_solver(solver_file(tmp_path, simple_net_file(tmp_path, 13))), caffe.SGDSolver)


def test_typed_class_overrides_the_file(tmp_path):
    path = solver_file(tmp_path, simple_net_file(tmp_path, 13), extra='type: "Nesterov"\n')
    assert caffe.get_solver(path).type == "Nesterov"
    assert caffe.SGDSolver(path).type == "SGD"
    assert caffe.AdamSolver(path).type == "Adam"


INPUT_TRAIN_NET = """name: 'det'
layer { name: 'data' type: 'Input' top: 'data' top: 'label'
  input_param { shape { dim: 6 dim: 2 dim: 3 dim: 4 } shape { dim: 6 } } }
layer { type: 'InnerProduct' name: 'ip1' bottom: 'data' top: 'ip1'
  inner_product_param { num_output: 8 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { type: 'ReLU' name: 'relu' bottom: 'ip1' top: 'ip1' }
layer { type: 'InnerProduct' name: 'ip2' bottom: 'ip1' top: 'ip2'
  inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip2' bottom: 'label' top: 'loss' }
"""


def _det_solver(folder: Path, **fields):
    net = folder / "det.prototxt"
    net.write_text(INPUT_TRAIN_NET)
    fields.setdefault("test_interval", 1000)
    path = solver_file(folder, str(net), random_seed=7, **fields)
    path = Path(path)
    text = path.read_text().replace("test_iter: 10\n", "")
    text = text.replace("test_interval: 1000\n", "")
    path.write_text(text)
    s = caffe.SGDSolver(str(path))
    rs = np.random.RandomState(3)
    s.net.blobs["data"].data[...] = rs.randn(6, 2, 3, 4)
    s.net.blobs["label"].data[...] = rs.randint(3, size=6)
    return s


def test_restore_continues_the_trajectory(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    s1 = _det_solver(a)
    s1.step(5)
    s1.snapshot()
    s1.step(5)
    b = tmp_path / "b"
    b.mkdir()
    s2 = _det_solver(b)
    s2.restore(str(a / "model_iter_5.solverstate"))
    assert s2.iter == 5
    s2.step(5)
    assert s2.iter == 10
    for name in s1.net.params:
        for p1, p2 in zip(s1.net.params[name], s2.net.params[name]):
            np.testing.assert_allclose(p1.data, p2.data, rtol=1e-6, atol=1e-7)


def test_solve_with_resume_file(tmp_path):
    s1 = _det_solver(tmp_path, max_iter=8)
    s1.step(4)
    s1.snapshot()
    s2 = _det_solver(tmp_path, max_iter=8)
    s2.solve(str(tmp_path / "model_iter_4.solverstate"))
    assert s2.iter == 8


def test_callbacks(tmp_path):
    s = _det_solver(tmp_path, weight_decay=0)
    events = []
    s.add_callback(lambda: events.append(("start", s.iter)), lambda: events.append(("ready", s.iter)))
    s.step(2)
    assert events == [("start", 0), ("ready", 0), ("start", 1), ("ready", 1)]

    # on_gradients_ready sees this iteration's gradients and may change them before the update
    t = _det_solver(tmp_path / ".." / tmp_path.name, weight_decay=0)

    def zero_grads():
        assert np.abs(t.net.params["ip2"][0].diff).sum() > 0
        for ps in t.net.params.values():
            for p in ps:
                p.diff[...] = 0

    t.add_callback(lambda: None, zero_grads)
    before = {k: [p.data.copy() for p in v] for k, v in t.net.params.items()}
    t.step(3)
    for k, v in t.net.params.items():
        for b, p in zip(before[k], v):
            np.testing.assert_array_equal(b, p.data)


def test_train_net_forward_backward_between_steps(tmp_path):
    s = _det_solver(tmp_path)
    s.step(1)
    loss = float(s.net.blobs["loss"].data)
    out = s.net.forward()
    assert float(out["loss"]) == pytest.approx(loss, rel=0.5)
    s.net.backward()
    assert np.abs(s.net.blobs["ip1"].diff).sum() > 0  # blob diffs are kept for pycaffe calls
    s.step(1)
    assert s.iter == 2


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc to read the RSS")
def test_repeated_step_does_not_grow_memory(tmp_path):
    s = _det_solver(tmp_path)
    for _ in range(30):  # warm up allocator caches
        s.step(1)
        float(s.net.blobs["loss"].data)
    gc.collect()
    rss0 = _rss_kb()
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    for _ in range(200):
        s.step(1)
        float(s.net.blobs["loss"].data)
    gc.collect()
    snap1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(st.size_diff for st in snap1.compare_to(snap0, "filename"))
    rss1 = _rss_kb()
    assert s.iter == 230
    assert grown < 256 * 1024, f"Python allocations grew by {grown} bytes over 200 steps"
    assert rss1 - rss0 < 32 * 1024, f"RSS grew by {rss1 - rss0} kB over 200 steps"


def test_solver_count_and_rank_settings():
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0
    with pytest.raises(ValueError):
        caffe.set_solver_count(0)
    with pytest.raises(ValueError):
        caffe.set_solver_rank(-1)
    assert caffe.has_nccl() in (True, False)
    uid = caffe.NCCL.new_uid()
    assert isinstance(uid, bytes)  # as BVLC's on Python 3
    assert uid.startswith(b"file://") and uid != caffe.NCCL.new_uid()


def _one_rank_main(uid, folder, out):
    import caffe as c

    c.set_mode_cpu()
    c.set_solver_count(1)
    c.set_solver_rank(0)
    s = _det_solver(Path(folder))
    nccl = c.NCCL(s, uid)
    nccl.bcast()
    s.add_callback(nccl)
    s.step(3)
    np.save(os.path.join(out, "w.npy"), s.net.params["ip1"][0].data)


def test_nccl_takes_the_bytes_uid(tmp_path):
    """NCCL(solver, new_uid()) with the bytes uid joins a one-rank group and trains as without it."""
    import multiprocessing as mp

    (tmp_path / "r").mkdir()
    (tmp_path / "plain").mkdir()
    proc = mp.get_context("spawn").Process(target=_one_rank_main,
                                           args=(caffe.NCCL.new_uid(), str(tmp_path / "r"), str(tmp_path)))
    proc.start()
    proc.join(timeout=240)
    if proc.is_alive():  # bounded: a hung rank fails the test instead of stalling the run
        proc.kill()
        proc.join()
    assert proc.exitcode == 0
    plain = _det_solver(tmp_path / "plain")
    plain.step(3)
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), plain.net.params["ip1"][0].data)


def _rank_main(rank, uid, folder, out):
    import caffe as c

    c.set_mode_cpu()
    c.set_solver_count(2)
    c.set_solver_rank(rank)
    c.set_multiprocess(True)
    s = _det_solver(Path(folder) / f"r{rank}")
    rs = np.random.RandomState(100 + rank)  # each rank its own data
    s.net.blobs["data"].data[...] = rs.randn(6, 2, 3, 4)
    if rank == 1:  # different initial weights: bcast must make them equal
        s.net.params["ip1"][0].data[...] += 1
    nccl = c.NCCL(s, uid)
    nccl.bcast()
    s.add_callback(nccl)
    s.step(4)
    np.save(os.path.join(out, f"w{rank}.npy"), s.net.params["ip1"][0].data)


@pytest.mark.slow
def test_nccl_averages_gradients_across_processes(tmp_path):
    import multiprocessing as mp

    for r in (0, 1):
        (tmp_path / f"r{r}").mkdir()
    uid = caffe.NCCL.new_uid()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(r, uid, str(tmp_path), str(tmp_path))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    for p in procs:
        if p.is_alive():  # bounded: a hung rank fails the test instead of stalling the run
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    w0, w1 = np.load(tmp_path / "w0.npy"), np.load(tmp_path / "w1.npy")
    np.testing.assert_array_equal(w0, w1)
    # averaged gradients (SoftmaxWithLoss normalizes by the batch): one process on both ranks' batches
    (tmp_path / "ref").mkdir()
    ref = _det_solver(tmp_path / "ref")
    labels = np.concatenate([ref.net.blobs["label"].data] * 2)
    ref.net.blobs["data"].reshape(12, 2, 3, 4)
    ref.net.blobs["label"].reshape(12)
    ref.net.blobs["data"].data[...] = np.concatenate([np.random.RandomState(100 + r).randn(6, 2, 3, 4) for r in (0, 1)])
    ref.net.blobs["label"].data[...] = labels
    ref.step(4)
    np.testing.assert_allclose(w0, ref.net.params["ip1"][0].data, rtol=1e-5, atol=1e-6)


def test_init_log_log_and_timer(capsys):
    import logging

    logger = logging.getLogger("neocaffe")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        caffe.init_log(0, True)
        caffe.log("hello from pycaffe")
        err = capsys.readouterr().err
        assert "hello from pycaffe" in err and err.startswith("I")
        caffe.init_log(1)
        caffe.log("hidden")
        assert "hidden" not in capsys.readouterr().err
    finally:  # leave logging as other tests expect it
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
    t = caffe.Timer()
    t.start()
    sum(range(10000))
    t.stop()
    assert t.ms > 0
