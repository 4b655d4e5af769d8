"""SSL (the scnn branch's group lasso) against NumPy loops written from the branch's kernels
(sgd_solver.cpp GroupLassoRegularize, math_functions.cu col/row/block_group_lasso_kernel), in the solver
with decay_mult and lr_mult, and on a tiny net whose unneeded filters/columns/blocks go to exactly 0."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from neocaffe.graph.params import ParamInfo
from neocaffe.io.prototxt import parse_text
from neocaffe.proto import caffe_pb2
from neocaffe.regularizers.chain import RegularizerChain
from neocaffe.regularizers.connectivity import connectivity_mask, sparsity_percentages
from neocaffe.regularizers.group_lasso import GroupLasso, group_lasso_gradients


# -- the branch's formulas, one group at a time ---------------------------------------------------
def reference(w: np.ndarray, group: int, kernel: float, breadth: float, blocks=()):
    """(gradient, penalty): kernel-shape columns and breadth rows within each convolution group, then
    each (xdimen, ydimen, decay) block of the whole rows x cols matrix; 0 where a group's norm is 0."""
    rows = w.shape[0]
    m = w.reshape(rows, -1).astype(np.float64)
    cols = m.shape[1]
    grad, pen = np.zeros_like(m), 0.0
    per = rows // group
    for g in range(group):
        sub = slice(g * per, (g + 1) * per)
        for c in range(cols):
            norm = np.sqrt((m[sub, c] ** 2).sum())
            pen += kernel * norm
            if norm:
                grad[sub, c] += kernel * m[sub, c] / norm
        for r in range(g * per, (g + 1) * per):
            norm = np.sqrt((m[r] ** 2).sum())
            pen += breadth * norm
            if norm:
                grad[r] += breadth * m[r] / norm
    for x, y, decay in blocks:
        for by in range(rows // y):
            for bx in range(cols // x):
                blk = (slice(by * y, (by + 1) * y), slice(bx * x, (bx + 1) * x))
                norm = np.sqrt((m[blk] ** 2).sum())
                pen += decay * norm
                if norm:
                    grad[blk] += decay * m[blk] / norm
    return grad.reshape(w.shape), pen


def make_info(w: np.ndarray, group: int = 1, name: str = "conv", **spec) -> ParamInfo:
    blocks = spec.pop("blocks", ())
    p = torch.nn.Parameter(torch.from_numpy(w.astype(np.float32)))
    p.grad = torch.zeros_like(p)
    s = caffe_pb2.ParamSpec(**spec)
    for x, y, mult in blocks:
        s.block_group_lasso.add(xdimen=x, ydimen=y, block_decay_mult=mult)
    return ParamInfo(p, name, 0, s, group, 0, "Convolution")


GROUPINGS = {  # solver fields, ParamSpec fields, reference arguments (kernel, breadth, blocks)
    "kernel_shape": (dict(kernel_shape_decay=0.03), dict(kernel_shape_decay_mult=2.0), (0.06, 0.0, ())),
    "breadth": (dict(breadth_decay=0.02), dict(breadth_decay_mult=0.5), (0.0, 0.01, ())),
    "block": (dict(block_group_decay=0.05), dict(blocks=[(3, 2, 1.5), (9, 1, 1.0)]),
              (0.0, 0.0, [(3, 2, 0.075), (9, 1, 0.05)])),
}


@pytest.mark.parametrize("grouping", sorted(GROUPINGS))
@pytest.mark.parametrize("group", [1, 2])
def test_gradient_and_penalty_against_numpy(grouping, group):
    solver, spec, (kernel, breadth, blocks) = GROUPINGS[grouping]
    rng = np.random.default_rng(7)
    ws = [rng.normal(size=(4, 3, 3, 3)).astype(np.float32) for _ in range(3)]
    ws[1][1] = 0.0  # an all-zero filter, and an all-zero column: no gradient there (div_checkzero)
    ws[2][:, 0, 1, 1] = 0.0
    infos = [make_info(w, group, **spec) for w in ws] + [make_info(ws[0], group, name="off")]
    infos[-1].spec.Clear()  # no multiplier: untouched
    reg = GroupLasso.from_solver(caffe_pb2.SolverParameter(**solver))
    pens = reg.apply_all(infos, 0, 0.1)
    for info, w, pen in zip(infos, ws, pens):
        want, want_pen = reference(w, group, kernel, breadth, blocks)
        np.testing.assert_allclose(info.param.grad.numpy(), want, rtol=1e-5, atol=1e-6)
        assert float(pen) == pytest.approx(want_pen, rel=1e-5)
    assert infos[-1].param.grad.abs().sum() == 0 and pens[-1] == 0.0


def test_all_three_add_up_and_follow_weight_decay_in_the_chain():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 2, 2, 2)).astype(np.float32)
    p = caffe_pb2.SolverParameter(weight_decay=0.01, breadth_decay=0.02, kernel_shape_decay=0.03, block_group_decay=0.04)
    info = make_info(w, 2, decay_mult=3.0, breadth_decay_mult=1.0, kernel_shape_decay_mult=1.0, blocks=[(2, 3, 0.5)])
    chain = RegularizerChain.from_solver(p, [info])
    assert chain.names == ["weight_decay", "group_lasso", "connectivity"]
    pens = chain.apply([info], 0, 0.1)
    want, want_pen = reference(w, 2, 0.03, 0.02, [(2, 3, 0.02)])
    np.testing.assert_allclose(info.param.grad.numpy(), want + 0.03 * w, rtol=1e-5, atol=1e-6)
    assert float(pens["group_lasso"]) == pytest.approx(want_pen, rel=1e-5)
    assert float(pens["weight_decay"]) == pytest.approx(0.03 / 2 * (w.astype(np.float64) ** 2).sum(), rel=1e-5)


def test_connectivity_masks_and_sparsity_numbers():
    w = torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 5e-5, 1.0], [0.0, 0.0, 0.0, 0.0]])
    assert connectivity_mask(w, 1).tolist() == (w != 0).float().tolist()
    grp = connectivity_mask(w, 2)  # rows 1, 3 and column 0 are all zero
    assert grp.tolist() == [[0, 1, 1, 1], [0, 0, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]]
    per_group = connectivity_mask(w, 2, group=2)  # column 2 and 3 of the first group are all zero too
    assert per_group.tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]]
    element, column, row, block = (float(v) for v in sparsity_percentages(w, [(2, 2)]))
    assert (element, column, row) == (pytest.approx(100 * 13 / 16), 25.0, 50.0)  # 5e-5 counts as zero
    assert block == pytest.approx(25.0)  # blocks: [0:2,0:2] has 2.0; [0:2,2:4] all 0; [2:4,*] nonzero


# -- the solver: lr_mult, decay_mult, the display lines ---------------------------------------------
NET = '''
name: "ssl"
layer { name: "x" type: "DummyData" top: "x" top: "y"
        dummy_data_param { shape { dim: 3 dim: 4 dim: 5 dim: 5 } shape { dim: 3 dim: 6 dim: 3 dim: 3 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
        param { lr_mult: 2 decay_mult: 0.5 %s } param { lr_mult: 1 decay_mult: 0 }
        convolution_param { num_output: 6 kernel_size: 3 group: 2 weight_filler { type: "uniform" min: 0.2 max: 1 }
                            bias_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "c" bottom: "y" top: "loss" }
'''
SPEC = "breadth_decay_mult: 1 kernel_shape_decay_mult: 0.5 block_group_lasso { xdimen: 9 ydimen: 3 block_decay_mult: 2 }"


def make_solver(extra: str, spec: str = SPEC):
    from neocaffe.solver.solver import Solver

    p = parse_text(f'base_lr: 0.01 lr_policy: "fixed" max_iter: 1 display: 1 solver_mode: CPU random_seed: 5 '
                   f'weight_decay: 0.004 {extra}', caffe_pb2.SolverParameter())
    p.net_param.CopyFrom(parse_text(NET % spec, caffe_pb2.NetParameter()))
    return Solver(p)


def test_one_solver_step_against_numpy(caplog):
    plain = make_solver("")  # each solver seeds the generators: the same weights and the same data
    w0 = plain.net.layer("conv").blobs[0].detach().numpy().copy()
    plain.step(1)
    ssl = make_solver("breadth_decay: 0.3 kernel_shape_decay: 0.2 block_group_decay: 0.1")
    np.testing.assert_array_equal(w0, ssl.net.layer("conv").blobs[0].detach().numpy())
    with caplog.at_level(logging.INFO, logger="neocaffe.solver"):
        ssl.step(1)
    grad, pen = reference(w0, 2, 0.2 * 0.5, 0.3 * 1, [(9, 3, 0.1 * 2)])
    lr, lr_mult = 0.01, 2
    want = plain.net.layer("conv").blobs[0].detach().numpy() - lr * lr_mult * grad  # same data, same loss gradient
    want[np.abs(want) < 1e-4] = 0.0
    np.testing.assert_allclose(ssl.net.layer("conv").blobs[0].detach().numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ssl.net.layer("conv").blobs[1].detach().numpy(),
                                  plain.net.layer("conv").blobs[1].detach().numpy())  # no multipliers on the bias
    text = caplog.text
    for head in ("    Element Sparsity %: \n0\t0\t", "     Column Sparsity %: \n0\t0\t", "        Row Sparsity %: \n0\t0\t",
                 "      Block Sparsity %: \n(9,3):0;\t\t"):
        assert head in text
    total = [r.getMessage() for r in caplog.records if "Total regularization terms" in r.getMessage()][0]
    wd = 0.004 * 0.5 / 2 * (w0.astype(np.float64) ** 2).sum()
    assert float(total.split()[3]) == pytest.approx(wd + pen, rel=1e-4)


# -- a tiny net: the filters/columns/blocks a teacher does not use go to exactly zero ---------------
TEACHER = '''
name: "teacher"
layer { name: "x" type: "DummyData" top: "x" dummy_data_param { shape { dim: 4 dim: 4 dim: 5 dim: 5 }
        data_filler { type: "gaussian" std: 1 } } }
layer { name: "teacher" type: "Convolution" bottom: "x" top: "t" param { lr_mult: 0 decay_mult: 0 }
        convolution_param { num_output: 8 kernel_size: 3 bias_term: false } }
layer { name: "student" type: "Convolution" bottom: "x" top: "s" param { %s }
        convolution_param { num_output: 8 kernel_size: 3 bias_term: false weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "t" top: "loss" }
'''
STRUCTURES = {  # solver decay, ParamSpec, the teacher's zero pattern on its (8, 36) matrix
    "breadth": ("breadth_decay: 0.004", "breadth_decay_mult: 1", (slice(2, 8), slice(None))),
    "kernel_shape": ("kernel_shape_decay: 0.002", "kernel_shape_decay_mult: 1", (slice(None), slice(9, 36))),
    "block": ("block_group_decay: 0.004", "block_group_lasso { xdimen: 9 ydimen: 4 }", (slice(4, 8), slice(0, 27))),
}


def train_teacher(structure: str, ssl: bool, iters: int = 100):
    from neocaffe.solver.solver import Solver

    decay, spec, zero = STRUCTURES[structure]
    p = parse_text(f'base_lr: 0.05 lr_policy: "fixed" max_iter: {iters} solver_mode: CPU random_seed: 3 '
                   + (decay if ssl else ""), caffe_pb2.SolverParameter())
    p.net_param.CopyFrom(parse_text(TEACHER % spec, caffe_pb2.NetParameter()))
    s = Solver(p)
    t = torch.Generator().manual_seed(0)
    teacher = torch.randn(8, 36, generator=t)
    teacher[zero] = 0.0
    with torch.no_grad():
        s.net.layer("teacher").blobs[0].copy_(teacher.reshape(8, 4, 3, 3))
    s.step(iters)
    return s.net.layer("student").blobs[0].detach().reshape(8, 36), teacher


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
def test_unused_groups_go_to_exactly_zero(structure):
    learned, teacher = train_teacher(structure, ssl=True)
    zero = STRUCTURES[structure][2]
    assert torch.count_nonzero(learned[zero]) == 0  # whole groups exactly zero
    keep = teacher != 0
    assert torch.count_nonzero(learned[keep]) == keep.sum()  # the used weights stay
    assert torch.allclose(learned[keep], teacher[keep], atol=1e-3)
    if structure == "breadth":
        plain, _ = train_teacher(structure, ssl=False)
        assert torch.count_nonzero(plain[zero]) == plain[zero].numel()  # without SSL: small, never exactly zero


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    rng = np.random.default_rng(2)
    w = torch.from_numpy(rng.normal(size=(5, 12, 18)).astype(np.float32))
    dec = torch.tensor([0.1, 0.2, 0.0, 0.4, 0.5])
    cpu = group_lasso_gradients(w, 3, dec, dec * 2, [(6, 4, dec * 3)])
    gpu = group_lasso_gradients(w.cuda(), 3, dec.cuda(), dec.cuda() * 2, [(6, 4, dec.cuda() * 3)])
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["DISCONNECTED_ELTWISE", "DISCONNECTED_GRPWISE", "CONNECTED"])
def test_connectivity_mode_keeps_cut_weights_at_zero(mode):
    """Masks come from weights copied in (fine-tuning), as the branch's WeightAlign; then they stay cut."""
    from neocaffe.io.caffemodel import LayerWeights
    from neocaffe.solver.solver import Solver

    p = parse_text('base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" max_iter: 3 solver_mode: CPU random_seed: 5',
                   caffe_pb2.SolverParameter())
    p.net_param.CopyFrom(parse_text(NET % "", caffe_pb2.NetParameter()))
    p.net_param.layer[1].connectivity_mode = getattr(caffe_pb2.LayerParameter, mode)
    s = Solver(p)
    w = s.net.layer("conv").blobs[0]
    trained = w.detach().numpy().copy()
    trained[1] = 0.0  # a filter of the first group
    trained[:, 0, 1, 1] = 0.0  # a filter-shape column in both groups
    trained[4, 1, 2, 2] = 5e-5  # under the threshold: zeroed when the mask is set
    bias = s.net.layer("conv").blobs[1].detach().numpy()
    s.net.copy_from([LayerWeights("conv", "Convolution", [trained, bias])])
    before = w.detach().clone()
    s.step(3)
    cut = {"DISCONNECTED_ELTWISE": before.abs() < 1e-4,
           "DISCONNECTED_GRPWISE": connectivity_mask(torch.where(before.abs() < 1e-4, 0.0, before), 2, 2) == 0,
           "CONNECTED": torch.zeros_like(before, dtype=torch.bool)}[mode]
    assert torch.count_nonzero(w.detach()[cut]) == 0
    assert torch.count_nonzero(w.detach()[~cut] == before[~cut]) == 0  # everything else trains
    assert s.regularizers.names == ([] if mode == "CONNECTED" else ["connectivity"])


def test_connectivity_freezes_nothing_without_copied_weights():
    """A layer trained from its fillers has the branch's all-ones connectivity."""
    from neocaffe.solver.solver import Solver

    p = parse_text('base_lr: 0.01 lr_policy: "fixed" max_iter: 2 solver_mode: CPU random_seed: 5',
                   caffe_pb2.SolverParameter())
    p.net_param.CopyFrom(parse_text(NET % "", caffe_pb2.NetParameter()))
    p.net_param.layer[1].connectivity_mode = caffe_pb2.LayerParameter.DISCONNECTED_ELTWISE
    s = Solver(p)
    w = s.net.layer("conv").blobs[0]
    with torch.no_grad():
        w[1] = 0.0  # set in place, not copied in: not frozen
    s.step(2)
    assert torch.count_nonzero(w.detach()[1]) == w[1].numel()


@pytest.mark.parametrize("kind", ["L2", "L1"])
def test_decay_proto_individual_weight_decay(tmp_path, kind):
    """The scnn branch's ParamSpec.decay_proto: per-weight multipliers of weight decay (sgd_solver.cpp Regularize)."""
    from neocaffe.io.binaryproto import write_blobproto

    rng = np.random.default_rng(4)
    w = rng.normal(size=(3, 2, 2, 2)).astype(np.float32)
    d = rng.uniform(0, 2, size=w.shape).astype(np.float32)
    write_blobproto(tmp_path / "d.binaryproto", d)
    a = make_info(w, decay_mult=2.0, decay_proto=str(tmp_path / "d.binaryproto"))
    b = make_info(w, decay_mult=2.0)  # without: plain decay, batched as before
    chain = RegularizerChain.from_solver(caffe_pb2.SolverParameter(weight_decay=0.05, regularization_type=kind), [a, b])
    pens = [float(p) for p in chain.regularizers[0].apply_all([a, b], 0, 0.1)]
    lam, w64 = 0.1, w.astype(np.float64)
    want = lam * w * d if kind == "L2" else lam * np.sign(w) * d
    np.testing.assert_allclose(a.param.grad.numpy(), want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(b.param.grad.numpy(), lam * (w if kind == "L2" else np.sign(w)), rtol=1e-6)
    want_pen = lam / 2 * (w64 * w64 * d).sum() if kind == "L2" else lam * np.abs(w64 * d).sum()
    assert pens[0] == pytest.approx(want_pen, rel=1e-5)
    missing = make_info(w, decay_proto=str(tmp_path / "nope.binaryproto"))
    with pytest.raises(ValueError, match="decay_proto: File does not exist"):
        RegularizerChain.from_solver(caffe_pb2.SolverParameter(weight_decay=0.05), [missing])
    write_blobproto(tmp_path / "bad.binaryproto", d[:2])
    with pytest.raises(ValueError, match="shape mismatch"):
        RegularizerChain.from_solver(caffe_pb2.SolverParameter(weight_decay=0.05),
                                     [make_info(w, decay_proto=str(tmp_path / "bad.binaryproto"))])


def test_per_parameter_caches_follow_the_param_info_object(tmp_path):
    """decay_proto multipliers, weight-decay groups and connectivity masks are computed once per ParamInfo
    and keyed by the object itself: a new ParamInfo (even one made where a freed one lived, so with the
    same id(), or one equal to another field by field) gets its own values, never a stale entry."""
    from neocaffe.io.binaryproto import write_blobproto
    from neocaffe.regularizers.connectivity import Connectivity
    from neocaffe.regularizers.weight_decay import WeightDecay

    rng = np.random.default_rng(7)
    w = rng.normal(size=(4, 2, 2, 2)).astype(np.float32)
    a, b = make_info(w), make_info(w)
    assert a != b and len({a, b}) == 2  # identity, not field equality
    decay = WeightDecay(0.5)
    for k in range(4):  # each round's ParamInfo is freed before the next one is made
        d = rng.uniform(0, 2, size=w.shape).astype(np.float32)
        write_blobproto(tmp_path / f"d{k}.binaryproto", d)
        info = make_info(w, decay_mult=float(k + 1), decay_proto=str(tmp_path / f"d{k}.binaryproto"))
        decay.apply_all([info], 0, 1.0)
        np.testing.assert_allclose(info.param.grad.numpy(), 0.5 * (k + 1) * w * d, rtol=1e-6)
        del info
    conn = Connectivity()
    for k in range(4):
        cut = w.copy()
        cut[k] = 0.0  # round k: filter k was cut
        info = make_info(cut)
        info.connectivity_mode, info.loads = caffe_pb2.LayerParameter.DISCONNECTED_ELTWISE, 1
        [(_, mask)] = conn.masks([info])
        np.testing.assert_array_equal(mask.numpy() == 0, cut == 0)
        del info, mask
