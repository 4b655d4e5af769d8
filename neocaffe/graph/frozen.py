"""The ``frozen`` inference mode: per input shape, the fastest of the net's traced-and-frozen graphs, its
native plan and its lean path, chosen once.

For each set of input shapes the layers after the data/Input layers are traced (``torch.jit.trace``)
through the lean path's own kernels (``Layer.lean_kernel``: the small-convolution im2col rule of
:mod:`neocaffe.layers.conv_kernel`, PReLU as ``torch.prelu``, ReLU, BatchNorm and Scale in place where
the lean path does it) into one graph whose outputs are the net's outputs (plus any blobs asked for);
``torch.jit.freeze`` inlines the weights. That gives four candidates (``CANDIDATES``): the lean path
itself, the frozen graph, the frozen graph after ``torch.jit.optimize_for_inference``
(Convolution+BatchNorm folded, activations fused, weights prepacked for oneDNN), and, for small nets
of common layers, the layers as one C call (:mod:`neocaffe.graph.native_plan`; MTCNN det1 at batch 1:
5 us against 40 us for its frozen graph, whose eleven PyTorch calls each cost more than their
arithmetic). None wins on every net: the oneDNN layout pays off
on large convolutions and costs a conversion per small one (MTCNN's det1 at batch 1, one thread:
0.05 ms frozen or lean, 0.65 ms optimized when traced through the layers' own forwards, whose PReLU
left oneDNN for every channel product). So at the first forward of a shape each candidate runs
``WARMUP`` times (its probe runs included; fewer once they take ``WARMUP_BUDGET_S``), then they alternate (``layers.fastest.time_candidates``, blocks of calls) for at most
``MAX_ROUNDS`` rounds or ``BUDGET_S`` seconds (at least one round), and ``pick`` keeps the fastest by
its best time per call, an earlier one in
``CANDIDATES`` unless a later one is more than ``TIE`` faster. The choice is logged once per shape
and kept (``choices``, for the last ``MAX_SHAPES`` shapes) until ``refreeze``; timings depend on the machine's load, so two processes may
choose differently, and their results differ by float32 rounding (within the tolerance below).

Deviations (the mode is opt-in; fp32 eager stays the default and Caffe-exact):

* float32 results differ from eager in the last bits (folded and fused arithmetic, another summation
  order): the tests hold every real model within ``TOLERANCE`` of the output's scale for each candidate
  (the oneDNN-optimized graph reaches 1.3e-5 on ResNet-50's ``prob`` on an AMD EPYC, hence 3e-5 there);
* weights are read when a shape is first traced: after changing them call ``Net.refreeze()``
  (``copy_from``/``share_with`` do it themselves);
* with a frozen graph chosen only the outputs (and the blobs asked for) are computed: other blobs keep
  no value of this forward;
* a layer the tracer cannot follow (a Python layer, a data layer after the first compute layer) makes
  the net run the lean path instead, logged once.
"""
from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor, nn

from neocaffe.graph import native_plan
from neocaffe.graph.grad_mode import no_grad
from neocaffe.graph.inference import InferenceExecutor
from neocaffe.layers.fastest import time_candidates

if TYPE_CHECKING:
    from neocaffe.graph.net import Net

log = logging.getLogger("neocaffe.graph")

#: what a shape may run, in the order ties go: the lean path, the frozen graph, the frozen graph optimized,
#: the whole net in one C call (``graph.native_plan``: small nets of common layers only)
CANDIDATES = ("lean", "frozen", "frozen+optimized", "native")
#: per candidate, the largest deviation from the fp32 default the tests allow, relative to the output's scale
TOLERANCE = {"lean": 0.0, "frozen": 1e-5, "frozen+optimized": 3e-5, "native": 1e-5}
#: a candidate later in ``CANDIDATES`` is chosen only when its best call is this fraction faster: timed
#: alone, a graph looked 8-9% faster than the lean path on MTCNN det2 and was 2-3% slower in use
TIE = 0.12
#: a native plan this many times as fast as the lean path runs without tracing the frozen graphs: they
#: run the lean path's PyTorch kernels with less Python between them (MTCNN det1 and det2 at 12 x 12 to
#: 100 x 130, batch 1 and 16, on an AMD EPYC: 0.8-1.3x the lean path's speed), while a trace costs about
#: 0.1 s per new shape (MTCNN's P-Net over an image pyramid: a shape per scale)
NATIVE_FAR_AHEAD = 2.0
#: the shapes whose choice (and graph, which holds its own copy of the weights) is kept: past this many,
#: the one chosen first is forgotten (chosen again if it comes back), so inputs of ever new sizes (an
#: image pyramid over photos of every size) do not grow the process by a copy of the weights per size
MAX_SHAPES = 16
#: untimed calls of each candidate first (TorchScript's profiling executor optimizes at the second call),
#: a traced or native one's ``PROBE_RUNS`` included
WARMUP = 5
#: and a candidate's untimed calls stop once they have taken this long: one call of a large net warms
#: what it runs, and each more costs as much (PSPNet at 473 x 473, one thread: 8 s a call)
WARMUP_BUDGET_S = 1.0
#: runs of each candidate before the timing, to drop one that fails (see ``FrozenExecutor._drop_failing``);
#: the chosen one's last run gives the shape's first forward its outputs
PROBE_RUNS = 3
#: the timed rounds (one call of each candidate per round): at most this many, at least one
MAX_ROUNDS = 50
#: and no new round once the timed rounds have taken this long
BUDGET_S = 0.1


def pick(best_ms: dict[str, float], order: tuple[str, ...] = CANDIDATES, tie: float = TIE) -> str:
    """The name in ``order`` (and in ``best_ms``) to run: the first, replaced by a later one only when
    that one's time is more than ``tie`` below the current choice's."""
    chosen: str | None = None
    for name in order:
        if name in best_ms and (chosen is None or best_ms[name] < best_ms[chosen] * (1 - tie)):
            chosen = name
    if chosen is None:
        raise ValueError(f"no candidate of {order} was timed (timed: {sorted(best_ms)})")
    return chosen


class _Core(nn.Module):
    """Layers ``start``.. as one module of tensors in, tensors out (what the tracer sees), each through
    the kernel the lean path would run for these bottoms."""

    def __init__(self, lean: InferenceExecutor, layers: nn.ModuleList, start: int, inputs: list[str],
                 outputs: list[str]) -> None:
        super().__init__()
        self.layers = layers
        self.lean, self.start, self.inputs, self.outputs = lean, start, inputs, outputs

    def forward(self, *xs: Tensor) -> tuple[Tensor, ...]:  # noqa: D102
        vals = dict(zip(self.inputs, xs))
        for i in range(self.start, len(self.lean.ops)):
            op = self.lean.ops[i]
            bottoms = [vals[b] for b in op.bottoms]
            out = self.lean.build(i, bottoms, self.lean.in_place[i])(*bottoms)
            tops = [out] if isinstance(out, Tensor) else list(out)
            vals.update(zip(op.tops, tops))
        return tuple(vals[o] for o in self.outputs)


class FrozenExecutor:
    """See the module docstring. ``lean``: the net's lean executor (data layers, fallbacks, a candidate);
    ``candidates``: the subset of ``CANDIDATES`` to choose from (one name: no timing)."""

    def __init__(self, net: "Net", lean: InferenceExecutor, candidates: tuple[str, ...] = CANDIDATES) -> None:
        unknown = set(candidates) - set(CANDIDATES)
        if unknown or not candidates:
            raise ValueError(f"frozen mode candidates {sorted(unknown) or '(none)'}: expected some of {CANDIDATES}")
        self.net, self.lean = net, lean
        self.candidates = tuple(c for c in CANDIDATES if c in candidates)
        #: per (input shapes, dtypes, devices, outputs): the frozen graph chosen, or None for the lean path
        self.cache: dict[tuple[Any, ...], Any] = {}
        #: per key of ``cache``: the candidate chosen and every candidate's best ms (empty: not timed)
        self.choices: dict[tuple[Any, ...], tuple[str, dict[str, float]]] = {}
        self.failed: str | None = None
        steps = net.steps
        self.start = 0
        while self.start < len(steps) and (steps[self.start].host or steps[self.start].input):
            self.start += 1
        produced: set[str] = set()
        self.inputs: list[str] = []
        for st, layer in zip(steps[self.start:], net.layers[self.start:]):
            if st.host or st.input or st.type == "Python" or layer.value_dependent_shape:
                self.failed = f"layer '{st.name}' ({st.type}) cannot be traced"
            for b in st.bottoms:
                if b not in produced and b not in self.inputs:
                    self.inputs.append(b)
            produced.update(st.tops)
        #: the loss-weighted tops after the data/Input layers, with their weights
        self.loss_terms = [(t, w) for st in steps[self.start:] for t, w in zip(st.tops, st.loss_weights) if w]
        self.outputs_for: dict[tuple[str, ...], list[str]] = {}

    def refreeze(self) -> None:
        """Forget every traced graph and choice (the weights changed)."""
        self.cache.clear()
        self.choices.clear()

    def forward(self, lo: int, hi: int, wanted: tuple[str, ...] = ()) -> Tensor | None:
        """A full forward through the candidate chosen for these shapes (partial ones run lean)."""
        net = self.net
        if self.failed or lo != 0 or hi != len(net.steps) - 1:
            return self.lean.forward(lo, hi)
        loss = self.lean.forward(0, self.start - 1) if self.start else None
        vals = net.state.values
        xs = [vals[b] for b in self.inputs]
        outputs = self.outputs_for.get(wanted)
        if outputs is None:
            names = list(net.outputs) + [t for t, _ in self.loss_terms] + list(wanted)
            outputs = self.outputs_for[wanted] = list(dict.fromkeys(names))
        key = tuple([(x.shape, x.dtype, x.device) for x in xs]) + (wanted,)  # ``wanted`` fixes ``outputs``
        if key in self.cache:
            fn, outs = self.cache[key], None
        else:
            fn, outs = self._choose(key, xs, outputs, hi)
        if fn is None:  # the lean path
            return self._lean_rest(loss, hi)
        if outs is None:
            with no_grad():
                outs = fn(*xs)
        for name, t in zip(outputs, outs):
            vals[name] = t
        for name, w in self.loss_terms:
            term = vals[name].sum() * w
            loss = term if loss is None else loss + term
        return loss

    def _lean_rest(self, loss: Tensor | None, hi: int) -> Tensor | None:
        """The layers after the sources on the lean path: as the rest of its own full forward (steady
        kernels, in-place layers, one-pass chains) where its sources are ours, else as a range."""
        if self.lean.steady_from == self.start:
            with no_grad():
                return self.lean.after_sources(loss)
        rest = self.lean.forward(self.start, hi)
        return rest if loss is None else loss if rest is None else loss + rest

    def _choose(self, key: tuple[Any, ...], xs: list[Tensor], outputs: list[str], hi: int
                ) -> tuple[Any, tuple[Tensor, ...] | None]:
        """The graph to run for ``key`` (None: the lean path), chosen and kept, with its outputs for ``xs``
        where a probe run already gave them (else None)."""
        graphs: dict[str, Any] = {}
        if "native" in self.candidates:
            plan, why = native_plan.build(self.net, self.start, self.inputs, xs, outputs)
            if plan is not None:
                graphs["native"] = plan
                if "lean" in self.candidates and self._native_far_ahead(plan, xs, hi):
                    log.info("frozen mode: %s, inputs %s: running native (over %gx the lean path's speed; "
                             "not traced)", self.net.name, [tuple(x.shape) for x in xs], NATIVE_FAR_AHEAD)
                    return self._keep(key, "native", {}, plan), None
            else:
                log.info("frozen mode: %s, inputs %s: no native candidate (%s)", self.net.name,
                         [tuple(x.shape) for x in xs], why)
        if set(self.candidates) & {"frozen", "frozen+optimized"}:
            graphs.update(self._trace(xs, outputs))
        fns: dict[str, Callable[[], Any]] = {}
        for name in self.candidates:
            if name == "lean":
                fns[name] = lambda: self._lean_rest(None, hi)
            elif name in graphs:
                fns[name] = lambda g=graphs[name]: g(*xs)
        probed = self._drop_failing(fns, xs)
        if not fns:  # the tracer failed (self.failed) or the net has no native plan: the lean path
            return self._keep(key, "lean", {}, None), None
        if len(fns) == 1:
            name, best = next(iter(fns)), {}
        else:
            warmup = {n: max(1, WARMUP - (PROBE_RUNS if n in probed else 0)) for n in fns}
            with torch.no_grad():
                best = time_candidates(fns, warmup, MAX_ROUNDS, BUDGET_S, sync=_sync_for(xs),
                                       warmup_budget_s=WARMUP_BUDGET_S)
            name = pick(best, self.candidates)
            log.info("frozen mode: %s, inputs %s: running %s (best ms %s)", self.net.name,
                     [tuple(x.shape) for x in xs], name, {k: round(v, 4) for k, v in best.items()})
        return self._keep(key, name, best, graphs.get(name)), probed.get(name)

    def _native_far_ahead(self, plan: Any, xs: list[Tensor], hi: int) -> bool:
        """Whether the native plan runs more than ``NATIVE_FAR_AHEAD`` times as fast as the lean path
        (a short timing of the two alone)."""
        with torch.no_grad():
            best = time_candidates({"lean": lambda: self._lean_rest(None, hi), "native": lambda: plan(*xs)},
                                   2, 5, BUDGET_S / 5, sync=_sync_for(xs))
        return best["native"] * NATIVE_FAR_AHEAD < best["lean"]

    def _drop_failing(self, fns: dict[str, Callable[[], Any]], xs: list[Tensor]) -> dict[str, Any]:
        """Run each traced or native candidate ``PROBE_RUNS`` times (TorchScript optimises, and on CUDA
        compiles its fusions, at the second run) and drop those that raise, with a warning: a backend
        that cannot run a graph (a cuDNN fusion with no valid plan, say) leaves the other candidates.
        Returns each kept one's outputs of its last run (held until the choice: one set per candidate)."""
        outs: dict[str, Any] = {}
        for name in [n for n in fns if n != "lean"]:
            try:
                with torch.no_grad():
                    for _ in range(PROBE_RUNS):
                        outs[name] = fns[name]()
            except Exception as e:  # noqa: BLE001 - that candidate is out, the others remain
                log.warning("frozen mode: %s, inputs %s: %s failed when run (%s: %s); not a candidate",
                            self.net.name, [tuple(x.shape) for x in xs], name, type(e).__name__,
                            str(e).splitlines()[0][:200] if str(e) else "")
                del fns[name]
                outs.pop(name, None)
        return outs

    def _keep(self, key: tuple[Any, ...], name: str, best: dict[str, float], fn: Any) -> Any:
        """Note the choice for ``key`` (``fn``: what runs; None: the lean path), forgetting the oldest
        past ``MAX_SHAPES``; returns ``fn``."""
        self.choices[key] = (name, best)
        self.cache[key] = fn
        while len(self.cache) > MAX_SHAPES:
            oldest = next(iter(self.cache))
            del self.cache[oldest]
            self.choices.pop(oldest, None)
        return fn

    def _trace(self, xs: list[Tensor], outputs: list[str]) -> dict[str, Any]:
        """The frozen graphs of ``self.candidates`` for inputs like ``xs`` (none if the tracer fails)."""
        core = _Core(self.lean, self.net.layers, self.start, self.inputs, outputs).eval()
        out: dict[str, Any] = {}
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(core, tuple(xs), check_trace=False)
                if "frozen" in self.candidates:
                    out["frozen"] = torch.jit.freeze(traced)
                if "frozen+optimized" in self.candidates:
                    out["frozen+optimized"] = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        except Exception as e:  # noqa: BLE001 - an untraceable net runs the lean path
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log.warning("frozen mode: %s cannot be traced (%s); running the lean path", self.net.name, self.failed)
            return {}
        return out


def _sync_for(xs: list[Tensor]) -> Callable[[], Any] | None:
    """``torch.cuda.synchronize`` when an input is on CUDA (its kernels finish after the call returns),
    else None: the timing must wait for them."""
    return torch.cuda.synchronize if any(x.device.type == "cuda" for x in xs) else None


__all__ = ["FrozenExecutor", "CANDIDATES", "TOLERANCE", "pick"]
