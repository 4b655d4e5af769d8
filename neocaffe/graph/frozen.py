"""The ``frozen`` inference mode: the net's forward traced once per input shape, frozen and optimised.

For each set of input shapes the layers after the data/Input layers are traced
(``torch.jit.trace``) into one graph whose outputs are the net's outputs (plus any blobs asked for),
then ``torch.jit.freeze`` inlines the weights and ``torch.jit.optimize_for_inference`` folds
Convolution+BatchNorm, fuses activations and prepacks weights for oneDNN. No Python runs per layer.

Deviations (the mode is opt-in; fp32 eager stays the default and Caffe-exact):

* float32 results differ from eager in the last bits (folded and fused arithmetic): the tests hold
  every real model within 1e-5 of the output's scale;
* weights are read when a shape is first traced: after changing them call ``Net.refreeze()``
  (``copy_from``/``share_with`` do it themselves);
* only the outputs (and the blobs asked for) are computed: other blobs keep no value of this forward;
* a layer the tracer cannot follow (a Python layer, a data layer after the first compute layer) makes
  the net run the lean path instead, logged once.
"""
from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from neocaffe.graph.inference import InferenceExecutor

if TYPE_CHECKING:
    from neocaffe.graph.net import Net

log = logging.getLogger("neocaffe.graph")


class _Core(nn.Module):
    """Layers ``start``.. as one module of tensors in, tensors out (what the tracer sees)."""

    def __init__(self, lean: InferenceExecutor, layers: nn.ModuleList, start: int, inputs: list[str],
                 outputs: list[str]) -> None:
        super().__init__()
        self.layers = layers
        self.lean, self.start, self.inputs, self.outputs = lean, start, inputs, outputs

    def forward(self, *xs: Tensor) -> tuple[Tensor, ...]:  # noqa: D102
        vals = dict(zip(self.inputs, xs))
        for op in self.lean.ops[self.start:]:
            out = op.fn(*[vals[b] for b in op.bottoms])
            tops = [out] if isinstance(out, Tensor) else list(out)
            vals.update(zip(op.tops, tops))
        return tuple(vals[o] for o in self.outputs)


class FrozenExecutor:
    """See the module docstring. ``lean``: the net's lean executor (data layers and fallbacks)."""

    def __init__(self, net: "Net", lean: InferenceExecutor) -> None:
        self.net, self.lean = net, lean
        self.cache: dict[tuple[Any, ...], Any] = {}
        self.wanted: tuple[str, ...] = ()
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

    def refreeze(self) -> None:
        """Forget every traced graph (the weights changed)."""
        self.cache.clear()

    def forward(self, lo: int, hi: int, wanted: tuple[str, ...] = ()) -> Tensor | None:
        """A full forward through the frozen graph for these shapes (partial ones run lean)."""
        net = self.net
        if self.failed or lo != 0 or hi != len(net.steps) - 1:
            return self.lean.forward(lo, hi)
        loss = self.lean.forward(0, self.start - 1) if self.start else None
        vals = net.state.values
        xs = [vals[b] for b in self.inputs]
        outputs = list(dict.fromkeys(list(net.outputs) + [t for st in net.steps for t, w in
                                                         zip(st.tops, st.loss_weights) if w] + list(wanted)))
        key = tuple((tuple(x.shape), x.dtype, x.device) for x in xs) + (tuple(outputs),)
        fn = self.cache.get(key)
        if fn is None:
            fn = self._trace(xs, outputs)
            if fn is None:
                return self.lean.forward(self.start, hi) if loss is None else loss
            self.cache[key] = fn
        with torch.no_grad():
            outs = fn(*xs)
        for name, t in zip(outputs, outs):
            vals[name] = t
        for st in net.steps[self.start:]:
            for name, w in zip(st.tops, st.loss_weights):
                if w:
                    term = vals[name].sum() * w
                    loss = term if loss is None else loss + term
        return loss

    def _trace(self, xs: list[Tensor], outputs: list[str]) -> Any:
        core = _Core(self.lean, self.net.layers, self.start, self.inputs, outputs).eval()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(core, tuple(xs), check_trace=False)
                return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        except Exception as e:  # noqa: BLE001 - an untraceable net runs the lean path
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log.warning("frozen mode: %s cannot be traced (%s); running the lean path", self.net.name, self.failed)
            return None


__all__ = ["FrozenExecutor"]
