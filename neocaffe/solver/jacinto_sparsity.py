"""TI caffe-jacinto's gradual weight sparsification in the solver (``sparse_mode``, ``sparsity_*``,
``display_sparsity``), and its solver fields about loading (``ignore_shape_mismatch``, ``snapshot_log``).

Lineage: mathmanu/caffe-jacinto ``caffe-0.17`` @ 2678b2b8556cc64ba66d801537bb066fc070889a:
``src/caffe/solver.cpp`` (``Init``: ``sparsity_factor_ = sparsity_start_factor``; ``Solve``: connectivity
stored before ``Restore``; ``Step``: ``ThresholdNet`` after every update, before ``iter += 1``, and once more
at the end of each ``Step``, with the ``display_sparsity`` lines; ``ThresholdNet``), ``src/caffe/net.cpp``
(``FindAndApplyChannelThresholdNet``, ``ApplySparseModeConnectivity``, ``StoreSparseModeConnectivity``,
``DisplaySparsity``, ``GetSparsity``, ``GetConnectivitySparsity``), ``src/caffe/blob.cpp`` and
``include/caffe/util/math_functions.hpp`` (``count_zero``/``zerout``: ``|w| <= t``; ``if_nonzero``); caffe-0.16's
``solver.cpp`` for ``sparsity_itr_increment_bfr_applying``.

As the fork, only Convolution layers' weights (blob 0) take part:

* at the start of ``solve`` (``sparse_mode`` not SPARSE_NONE) each one's connectivity is its nonzero entries;
* after the update of iteration ``it``, when ``sparsity_target`` > 0, ``it >= sparsity_start_iter`` and
  ``it % sparsity_step_iter == 0``: the connectivity sparsity (zeros of the stored connectivity over the
  Convolution layers whose next layer, Split layers counted, is not Softmax/SoftmaxWithLoss) is compared with
  the target; below it, and with the factor <= min(target + 0.15, 0.95), each Convolution layer with both
  kernel sides > 2, group < num_output and (ni >= 32 or no >= 32) gets, per output channel, the fork's
  four-pass grid search (steps of max|w| * 1e-7 * 1000, 100, 10, 1, in float32 as the fork adds them) for
  the largest threshold whose fraction of ``|w| <= t`` in that channel is <= the factor (factor / 2 unless
  ni >= 32 and no >= 32), below min(``sparsity_threshold_value_max``, ``sparsity_threshold_maxratio`` x
  max|w|, max|w|); those weights become 0, every Convolution weight's connectivity is stored again and the
  factor grows by ``sparsity_step_factor``;
* after every update each Convolution weight is multiplied by its connectivity (SPARSE_UPDATE: zeros stay
  zero through momentum and weight decay);
* ``display_sparsity`` > 0: ``Sparsity after update:`` and the exact-zero fractions every that many
  iterations, ``Sparsity after training:`` at the end of each ``step``.

Batched torch ops on the weights' device; the grid search runs its float32 sums for all channels of all
layers at once (host reads only on threshold iterations, as the fork's schedule). The search equals the
fork's: its ``count <= fraction`` test is ``t < `` the (c+1)-th smallest ``|w|`` of the channel.

Deviations: (1) resume: the fork saves neither the factor nor the connectivity (``Solve`` stores the
connectivity from the weights before ``Restore``; ``Init`` resets the factor), so a resumed fork run restarts
its schedule; here both go in the ``.resume.pt`` companion and a resumed run continues the same trajectory.
From a Caffe snapshot without it, the connectivity is the restored weights' nonzeros and the factor is derived
from the iteration (every scheduled step taken while the factor <= the cap), logged. (2) Data-parallel: the
fork thresholds on the root solver only; here every process thresholds its identical weights, the root logs.
(3) ``sparsity_itr_increment_bfr_applying``: caffe-0.17 ignores it; set explicitly to true, ``ThresholdNet``
and the ``display_sparsity`` test see ``iter + 1`` as in caffe-0.16 (the released JDetNet solvers set it);
unset or false: 0.17's. (4) A search that would never end in the fork (a step too small to move the float
sum) stops. (5) ``ignore_shape_mismatch``: see :func:`ignores_shape_mismatch`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from neocaffe.proto import caffe_pb2
from neocaffe.solver.nets import SolverError

__all__ = ["JacintoSparsity", "channel_thresholds", "ignores_shape_mismatch", "check_fields"]

log = logging.getLogger("neocaffe.solver")
f32 = np.float32
SPARSE_NONE = caffe_pb2.SPARSE_NONE
SOFTMAX_TYPES = ("Softmax", "SoftmaxWithLoss")
GRANULARITIES = (f32(1000), f32(100), f32(10), f32(1))
STEP_FACTOR = f32(1e-7)  # ThresholdNet's threshold_step_factor
CHUNK = 32  # grid steps between host reads


def ignores_shape_mismatch(p: Any) -> bool:
    """``ignore_shape_mismatch`` (SolverParameter) set explicitly to true. The fork's default is true and its
    ``caffe train -weights`` copies before the net knows its solver, so it ignores mismatches always; here a
    solver must ask, and an unset field keeps Caffe's error (no silent partial load)."""
    return explicit_true(p, "ignore_shape_mismatch")


def check_fields(p: Any) -> None:
    """Refuse what is not carried: ``snapshot_log`` (caffe-jacinto 0.15's text snapshot of layers' blobs;
    0.17 parses and ignores it); ``sparsity_step_iter`` 0 where the fork divides by it."""
    if p.snapshot_log:
        raise SolverError("snapshot_log: true (caffe-jacinto 0.15's extra text snapshot of the layers' blobs, "
                          "NetLogParameter) is not supported; expected it unset or false (caffe-jacinto 0.17 "
                          "ignores it too)")
    if p.sparse_mode != SPARSE_NONE and p.sparsity_target > 0 and p.sparsity_step_iter == 0:
        raise SolverError("sparse_mode is set with sparsity_target > 0 but sparsity_step_iter is 0; expected a "
                          "nonzero number of iterations between sparsity steps (the fork divides by it)")


@dataclass(eq=False)
class ConvEntry:
    """A Convolution layer's weight as the fork's sparsity code sees it."""

    name: str
    weight: nn.Parameter
    key: str  # GetSparsity's map key: <layer>_param_<param name or index>
    counted: bool  # its next layer is not Softmax/SoftmaxWithLoss
    thresholded: bool
    ni: int
    no: int
    high: bool  # ni >= 32 and no >= 32: threshold_fraction_mid/high (the factor), else _low (factor / 2)


def _kernel(cp: Any) -> tuple[int, int]:
    if cp.HasField("kernel_h") or cp.HasField("kernel_w"):
        return int(cp.kernel_h), int(cp.kernel_w)
    ks = [int(k) for k in cp.kernel_size] or [0]
    return ks[0], ks[0 if len(ks) == 1 else 1]


def conv_entries(net: Any) -> list[ConvEntry]:
    """Every Convolution layer of ``net`` with its weight, in layer order (Split layers included, as Caffe's)."""
    out = []
    for i, layer in enumerate(net.layers):
        lp = layer.param
        if lp.type != "Convolution" or not len(layer.blobs):
            continue
        w = layer.blobs[0]
        group = int(lp.convolution_param.group)
        no = int(w.shape[0]) if w.dim() > 1 else w.numel()
        ni = (int(w.shape[1]) if w.dim() > 1 else w.numel()) * group
        kh, kw = _kernel(lp.convolution_param)
        thresholded = (ni >= 32 or no >= 32) and group < no and kh > 2 and kw > 2 and group != no
        if thresholded and ni * kh * kw // group != w.numel() // no:
            raise SolverError(f"layer '{lp.name}' (Convolution): sparse_mode thresholds 2-D kernels by output "
                              f"channel; received weight shape {tuple(w.shape)} for kernel {kh}x{kw}")
        nxt = net.layers[i + 1].param.type if i + 1 < len(net.layers) else ""
        pname = lp.param[0].name if len(lp.param) and lp.param[0].name else "0"
        out.append(ConvEntry(lp.name, w, f"{lp.name}_param_{pname}", nxt not in SOFTMAX_TYPES, thresholded,
                             ni, no, ni >= 32 and no >= 32))
    return out


def _most_zeros(k: int, fraction: np.float32) -> int:
    """The largest count c (-1 if none) with float(c) / float(k) <= fraction, as the fork's zratio test."""
    return int(np.count_nonzero(np.arange(k + 1, dtype=f32) / f32(k) <= f32(fraction))) - 1


def _scan(sel: Tensor, lo: Tensor, bound: Tensor, step: Tensor) -> Tensor:
    """The fork's ``for (s = lo; s < bound; s += step) selected = s`` for every channel (float32 sums)."""
    s = lo.clone()
    ok = s < bound
    while bool(ok.any()):
        for _ in range(CHUNK):
            sel = torch.where(ok, s, sel)
            nxt = s + step
            ok = ok & (nxt > s) & (nxt < bound)  # a sum that no longer moves stops (the fork loops forever)
            s = nxt
    return sel


def channel_thresholds(weights: list[Tensor], fractions: list[np.float32], maxratio: np.float32,
                       value_max: np.float32) -> list[Tensor]:
    """Each output channel's threshold of FindAndApplyChannelThresholdNet for weights (no, ...) and their
    fractions (``threshold_fraction_*``), ``threshold_value_maxratio`` and ``threshold_value_max``."""
    if not weights:
        return []
    dev = weights[0].device
    absw = [w.detach().reshape(w.shape[0], -1).abs().float() for w in weights]
    bounds = []
    for a, fraction in zip(absw, fractions):
        c = _most_zeros(a.shape[1], fraction)
        if c < 0:
            bounds.append(torch.zeros(a.shape[0], device=dev))  # even t = 0 counts too many
        elif c >= a.shape[1]:
            bounds.append(torch.full((a.shape[0],), float("inf"), device=dev))
        else:
            bounds.append(torch.kthvalue(a, c + 1, dim=1).values)
    big = torch.cat(bounds)  # t must stay below the (c+1)-th smallest |w|
    mx = torch.cat([a.amax(dim=1) for a in absw])
    t32 = lambda x: torch.tensor(x, dtype=torch.float32, device=dev)  # noqa: E731
    step = mx * t32(STEP_FACTOR)
    cap = torch.minimum(torch.minimum(t32(value_max), mx * t32(maxratio)), mx)
    sel = torch.zeros_like(mx)
    for k, g in enumerate(GRANULARITIES):
        step_x = step * t32(g)
        if k == 0:
            lo, hi = torch.zeros_like(mx), cap
        else:
            span = (step_x * t32(f32(10))) * t32(f32(2))
            lo, hi = torch.clamp_min(sel - span, 0.0), sel + span
        sel = _scan(sel, lo, torch.minimum(torch.minimum(hi, cap), big), step_x)
    return list(torch.split(sel, [a.shape[0] for a in absw]))


def _ratio_lines(pairs: dict[str, tuple[int, int]], title: str) -> tuple[list[str], np.float32]:
    """Net::DisplaySparsity's lines for {key: (zeros, count)} (std::map order, float sums) and the ratio."""
    zeros, count = f32(0), f32(0)
    lines = [f"Num Params({len(pairs)}), {title} (zero_weights/count): "]
    with np.errstate(divide="ignore", invalid="ignore"):
        for key in sorted(pairs):
            z, c = f32(pairs[key][0]), f32(pairs[key][1])
            zeros, count = f32(zeros + z), f32(count + c)
            lines.append(f"{key}({'%.3g' % float(z / c)}) ")
        ratio = f32(zeros / count)
    lines.append(f"Total {title} (zero_weights/count) =  ({'%g' % zeros}/{'%g' % count}) {'%.3g' % ratio}")
    return lines, ratio


def _pack(mask: Tensor) -> Tensor:
    return torch.from_numpy(np.packbits(mask.detach().to("cpu").numpy().reshape(-1) != 0))


class JacintoSparsity:
    """The fork's sparsity state of one solver: the factor and each Convolution weight's connectivity."""

    def __init__(self, p: Any, net: Any, rank: int = 0) -> None:
        self.net, self.root = net, rank == 0
        self.sparse = p.sparse_mode != SPARSE_NONE
        self.display_every = int(p.display_sparsity)
        self.target, self.step_factor = f32(p.sparsity_target), f32(p.sparsity_step_factor)
        self.step_iter, self.start_iter = int(p.sparsity_step_iter), int(p.sparsity_start_iter)
        self.start_factor = f32(p.sparsity_start_factor)
        self.maxratio, self.value_max = f32(p.sparsity_threshold_maxratio), f32(p.sparsity_threshold_value_max)
        self.target_max = f32(min(float(self.target) + 0.15, 0.95))  # std::min(target + 0.15, 0.95) as float
        self.offset = int(explicit_true(p, "sparsity_itr_increment_bfr_applying"))
        self.factor = self.start_factor
        self.convs = conv_entries(net)
        self.masks: list[Tensor | None] = [None] * len(self.convs)  # the connectivity (1/0 in the weight's dtype)
        self._restored = False

    @classmethod
    def from_solver(cls, p: Any, net: Any, rank: int = 0) -> "JacintoSparsity | None":
        """One for SolverParameter ``p`` when it sets ``sparse_mode`` or ``display_sparsity`` > 0, else None."""
        check_fields(p)
        if p.sparse_mode == SPARSE_NONE and p.display_sparsity <= 0:
            return None
        return cls(p, net, rank)

    # -- the solver's calls --------------------------------------------------------------------
    def start(self) -> None:
        """Solver::Solve: store the connectivity, unless a restore set it (the fork stores it before restoring,
        from the weights the run started with)."""
        if self._restored:
            self._restored = False
        elif self.sparse:
            self.store()

    def after_update(self, iteration: int) -> None:
        """Solver::Step after the update of ``iteration``: ThresholdNet and the display_sparsity lines."""
        it = iteration + self.offset
        if self.offset and iteration < 2 and self.root:
            log.info("sparsity_itr_increment_bfr_applying is true: old behaviour:")
        self.threshold_net(it)
        if self.display_every > 0 and it % self.display_every == 0:
            self.display("Sparsity after update:")

    def step_end(self, iteration: int) -> None:
        """The end of Solver::Step: ThresholdNet once more and ``Sparsity after training:``."""
        self.threshold_net(iteration)
        if self.display_every > 0:
            self.display("Sparsity after training:")

    # -- the fork's functions ------------------------------------------------------------------
    def threshold_net(self, it: int) -> None:
        """Solver::ThresholdNet at iteration ``it``."""
        if not self.sparse:
            return
        if self.target > 0 and it >= self.start_iter and it % self.step_iter == 0:
            achieved = self.connectivity_sparsity()
            if self.factor <= self.target_max and achieved < self.target:
                if self.root:
                    log.info("Finding and applying sparsity: sparsity_target=%s sparsity_factor=%s "
                             "sparsity_achieved=%s iter=%d", _g(self.target), _g(self.factor), _g(achieved), it)
                self.apply_channel_thresholds()
                self.store()
                self.factor = f32(self.factor + self.step_factor)
        self.apply_masks()

    def apply_channel_thresholds(self) -> None:
        """Net::FindAndApplyChannelThresholdNet with the current factor (its WARNING lines on the root)."""
        low = f32(self.factor / f32(2))
        chosen, seen = [], set()
        for c in self.convs:
            if c.thresholded and id(c.weight) not in seen:  # a shared weight: once (a second pass changes nothing)
                seen.add(id(c.weight))
                chosen.append(c)
        with torch.no_grad():
            fractions = [self.factor if c.high else low for c in chosen]
            thresholds = channel_thresholds([c.weight for c in chosen], fractions, self.maxratio, self.value_max)
            for c, t in zip(chosen, thresholds):  # Blob::zerout per channel: |w| <= t becomes 0
                w = c.weight.data
                w.masked_fill_(w.abs() <= t.view(-1, *[1] * (w.dim() - 1)), 0.0)
            counts = [((c.weight == 0).sum(), c.weight.numel()) for c in self.convs if c.thresholded]
            zeros = torch.stack([z for z, _ in counts]).tolist() if counts else []
        if not self.root:
            return
        it = iter(zip(zeros, (n for _, n in counts)))
        for c in self.convs:
            log.warning("%s ni=%d no=%d", c.name, c.ni, c.no)
            if c.thresholded:
                z, n = next(it)
                log.warning("%s ZeroWeightsFraction=%s", c.name, _g(f32(z) / f32(n)))

    def store(self) -> None:
        """Net::StoreSparseModeConnectivity: each Convolution weight's nonzeros (``x > 0 || x < -0``)."""
        if self.root:
            log.info("All zero weights of convolution layers are frozen")
        with torch.no_grad():
            self.masks = [((c.weight > 0) | (c.weight < 0)).to(c.weight.dtype) for c in self.convs]

    def apply_masks(self) -> None:
        """Net::ApplySparseModeConnectivity: each weight times its connectivity (once per shared weight). It
        runs right after the solver's update, whose ``net.weights_changed()`` already dropped what layers derive
        from the weights (they derive again at the next forward), so it does not call that again."""
        pairs = {id(c.weight): (c.weight, m) for c, m in zip(self.convs, self.masks) if m is not None}
        if pairs:
            with torch.no_grad():
                torch._foreach_mul_([w.data for w, _ in pairs.values()], [m for _, m in pairs.values()])

    def connectivity_sparsity(self) -> np.float32:
        """Net::DisplayConnectivitySparsity(false): zeros of the stored connectivity (none before a store)."""
        return self._ratio([(c, m) for c, m in zip(self.convs, self.masks)], "ConnectivitySparsity")[1]

    def display(self, header: str) -> None:
        """``header`` then Net::DisplaySparsity(true): exact zeros of each counted weight (root only)."""
        if not self.root:
            return
        log.info("%s", header)
        for line in self._ratio([(c, c.weight) for c in self.convs], "Sparsity")[0]:
            log.info("%s", line)

    def _ratio(self, items: list[tuple[ConvEntry, Tensor | None]], title: str) -> tuple[list[str], np.float32]:
        counted = [(c, t) for c, t in items if c.counted]
        with torch.no_grad():
            zs = [(t == 0).sum() for _, t in counted if t is not None]
            values = iter(torch.stack(zs).tolist() if zs else [])
        pairs = {c.key: (next(values) if t is not None else 0, c.weight.numel()) for c, t in counted}
        return _ratio_lines(pairs, title)

    # -- resume --------------------------------------------------------------------------------
    def state(self) -> dict:
        """The factor and the connectivity (bit-packed, by layer) for the ``.resume.pt`` companion."""
        return {"factor": float(self.factor),
                "masks": {c.name: (_pack(m) if m is not None else None) for c, m in zip(self.convs, self.masks)}}

    def load_state(self, state: dict | None) -> None:
        """Continue from ``state()``'s result (None: a companion written without sparsity; keep what
        ``restored`` derived)."""
        if state is None:
            return
        masks = state["masks"]
        if sorted(masks) != sorted(c.name for c in self.convs):
            raise ValueError(f"the sparsity state holds layers {sorted(masks)}; this net's Convolution layers are "
                             f"{sorted(c.name for c in self.convs)}")
        out: list[Tensor | None] = []
        for c in self.convs:
            packed = masks[c.name]
            if packed is None:
                out.append(None)
                continue
            bits = np.unpackbits(packed.numpy(), count=c.weight.numel())
            out.append(torch.from_numpy(bits.astype(f32)).reshape(c.weight.shape).to(c.weight.device, c.weight.dtype))
        self.masks, self.factor, self._restored = out, f32(state["factor"]), True
        log.info("sparsity_factor %s and the zero connectivity restored from the resume companion", _g(self.factor))

    def restored(self, iteration: int) -> None:
        """After a solverstate's weights were loaded: connectivity from their nonzeros, factor from the
        iteration (replaced by the companion's exact state when there is one)."""
        if not self.sparse:
            return
        self.store()
        factor = self.start_factor
        if self.target > 0:
            k = abs(self.step_iter)
            first = -(-max(self.start_iter, self.offset) // k) * k
            for _ in range(first, iteration + self.offset, k):
                if factor <= self.target_max:
                    factor = f32(factor + self.step_factor)
        self.factor, self._restored = factor, True
        log.info("sparsity_factor %s derived from iteration %d (the solverstate does not hold it)", _g(factor),
                 iteration)


def explicit_true(p: Any, field: str) -> bool:
    """A bool field of ``p`` set explicitly to true (an unset one keeps caffe-0.17's behaviour)."""
    return p.HasField(field) and bool(getattr(p, field))


def _g(x: Any) -> str:
    return "%g" % float(f32(x))  # C++ ostream << float
