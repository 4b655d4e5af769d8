"""The Net: a NetParameter built into layers, run by executors over one runtime state.

The Net keeps the plan, the layers, their parameters and the backward flags (``needs``: Caffe's
``layer_need_backward_`` and friends). Each blob's value and diff live in ``state``
(:class:`~neocaffe.graph.blobs.BlobState`; ``state.hold_data``/``hold_diff`` give live tensors).
Executors run it: :class:`~neocaffe.graph.exact.CaffeExecutor` (``keep_blob_diffs=True``, pycaffe's:
Caffe's layer-by-layer Backward, ranged too), :class:`~neocaffe.graph.eager.GraphExecutor` (the
solver's: one autograd graph, parameter diffs only) or its compiled form, and for forwards no backward
can follow :class:`~neocaffe.graph.inference.InferenceExecutor` (or the opt-in ``frozen`` one). The
speed modes are set through :mod:`neocaffe.graph.modes`.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from neocaffe.graph import weights as weight_io
from neocaffe.graph.blobs import BlobState
from neocaffe.graph.build import build
from neocaffe.graph import modes
from neocaffe.graph.compiled import CompiledExecutor
from neocaffe.graph.cuda_math import cuda_math
from neocaffe.graph.eager import GraphExecutor
from neocaffe.graph.errors import NetError
from neocaffe.graph.exact import CaffeExecutor
from neocaffe.graph.frozen import FrozenExecutor
from neocaffe.graph.inference import InferenceExecutor
from neocaffe.graph.memory import reported
from neocaffe.graph.intelcaffe import warn_layers as warn_intel_layers
from neocaffe.graph.jacinto_quant import JacintoQuant, attach as attach_quant
from neocaffe.graph.nvcaffe import warn_layers, warn_precision
from neocaffe.graph.rules import make_state
from neocaffe.layers.base import TEST, BuildContext, Layer, Shape

__all__ = ["Net", "NetError"]


class Net(nn.Module):
    """A Caffe net for one NetState (phase, level, stages).

    ``net_param``: an upgraded NetParameter. ``source``: where it came from, a
    :class:`~neocaffe.io.prototxt.NetSource` (errors then name the layer's line) or a file name.
    ``keep_blob_diffs``: run Caffe's layer-by-layer backward so every blob's diff can be read
    (pycaffe's ``blob.diff``); the training loop turns it off. ``context``: data-parallel facts
    passed to every layer. ``tf32`` (attribute, default False): whether float32 products on CUDA may
    use TF32 (:mod:`neocaffe.graph.cuda_math`); the ``tf32`` speed mode sets it.
    """

    def __init__(self, net_param: Any, phase: int = TEST, level: int = 0, stages: Iterable[str] = (), *,
                 source: Any = None, device: torch.device | str | None = None, keep_blob_diffs: bool = True,
                 context: BuildContext | None = None) -> None:
        super().__init__()
        source = source if source is not None else "<net>"
        self.source: str = getattr(source, "filename", source)
        self.net_state = make_state(phase, level, stages,
                                      base=net_param.state if net_param.HasField("state") else None)
        self.phase = phase
        warn_precision(net_param, self.source)  # NVCaffe's type fields: parsed, computed in float32 (one warning)
        warn_layers(net_param, self.source)  # NVCaffe's layer fields that neocaffe does not apply (one warning)
        warn_intel_layers(net_param, self.source)  # Intel Caffe's (int8 scales, fusions, ...): one warning
        b = build(net_param, self.net_state, phase, source, context or BuildContext())
        self.net_param, self.plan, self.steps, self.needs, self.learnable = b.net_param, b.plan, b.steps, b.needs, b.learnable
        self.name: str = net_param.name
        self.force_backward: bool = net_param.force_backward
        self.layers = nn.ModuleList(b.layers)
        self.blob_shapes: dict[str, Shape] = b.blob_shapes
        self.loss_weights: list[list[float]] = b.loss_weights
        self.blob_loss_weights: dict[str, float] = b.blob_loss_weights
        self.where: list[str] = b.where
        self._inputs = {t: (i, j) for i, st in enumerate(self.steps) if st.input for j, t in enumerate(st.tops)}
        # tops a layer holds from setup on (DummyData's constant ones): their blobs start as that tensor
        self._held = {t: (i, j) for i, st in enumerate(self.steps) if hasattr(self.layers[i], "held_value")
                      for j, t in enumerate(st.tops) if self.layers[i].held_value(j) is not None}  # type: ignore[operator]
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.state = BlobState(lambda n: self.blob_shapes[n], lambda n: self.blob_loss_weights.get(n, 0.0),
                               self.device)
        self.memory_format = torch.contiguous_format
        # float32 products on CUDA may use TF32 (the `tf32` speed mode); False is Caffe's IEEE float32
        self.tf32 = False
        # layers with a BatchNorm/Scale folded into their weights (export.fold.fold_net): a weight file's
        # unfolded blobs would load into them silently wrong, so copy_from refuses
        self.folded_layers: frozenset[str] = frozenset()
        self.fused_pairs: dict[int, int] = {}
        self.compile_options: tuple[str, str, bool] | None = None
        self.keep_blob_diffs = keep_blob_diffs
        self.executor: Any = None
        self.update_executor()
        self.lean = InferenceExecutor(self)
        self.frozen: FrozenExecutor | None = None
        # caffe-jacinto's quantize: true (graph.jacinto_quant): its forwards run there; None for every other net
        self.quant: JacintoQuant | None = attach_quant(self, net_param)
        if device is not None:
            self.to(self.device)
        self._sync_inputs()

    def update_executor(self) -> None:
        """The executor for ``keep_blob_diffs``, ``fused_pairs`` and ``compile_options`` as they are now."""
        if self.keep_blob_diffs:
            self.executor = CaffeExecutor(self)
            return
        eager = GraphExecutor(self, self.fused_pairs)
        self.executor = CompiledExecutor(eager, *self.compile_options) if self.compile_options else eager

    def _sync_inputs(self) -> None:
        for name, (i, j) in self._inputs.items():
            self.state.values[name] = self.layers[i].value(j)  # type: ignore[operator]
        for name, (i, j) in self._held.items():
            self.state.values[name] = self.layers[i].held_value(j)  # type: ignore[operator]

    def to(self, *args: Any, **kwargs: Any) -> "Net":  # type: ignore[override]
        super().to(*args, **kwargs)
        self.device = weight_io.after_move(self, args[0] if args else kwargs.get("device"))
        self.state.device = self.device
        self.lean.reset()
        self._sync_inputs()
        return self

    # -- names ----------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return [st.name for st in self.steps]

    @property
    def blob_names(self) -> list[str]:
        return list(self.plan.blob_names)

    @property
    def inputs(self) -> list[str]:
        return list(self.plan.inputs)

    @property
    def outputs(self) -> list[str]:
        return list(self.plan.outputs)

    def layer_index(self, name: str | int | None, default: int = 0) -> int:
        """The index of layer ``name`` (an index passes through; None gives ``default``)."""
        if name is None:
            return default
        if isinstance(name, int):
            return name
        names = self.layer_names
        if name in names:
            return names.index(name)
        raise KeyError(f"no layer named '{name}' in net '{self.name}'; layers: {', '.join(self.layer_names)}")

    def layer(self, name: str) -> Layer:
        return self.layers[self.layer_index(name)]  # type: ignore[return-value]

    # -- blobs ----------------------------------------------------------------------------------
    @property
    def blob_data(self) -> Mapping[str, Tensor]:
        """Blob name -> its value after the last forward (blobs computed so far)."""
        return self.state.values

    def blob(self, name: str) -> Tensor:
        """Blob ``name``'s data (zeros of its planned shape before a forward wrote it)."""
        return self.state.value(name)

    def blob_diff(self, name: str) -> Tensor:
        """Blob ``name``'s diff, as Caffe's Blob holds it after the last backward (see ``graph.exact``)."""
        if not self.executor.records_blob_diffs:
            raise NetError(f"{self.source}: net '{self.name}' keeps no blob diffs (built with "
                           "keep_blob_diffs=False, as the solver's nets are); call set_keep_blob_diffs(True)")
        return self.state.diff(name)

    def recorded(self, name: str) -> Tensor | None:
        """The tensor of blob ``name``'s last value with its autograd history (None if not recorded)."""
        return self.executor.recorded(name)

    def set_blob(self, name: str, value: Tensor) -> None:
        """Write ``value`` into blob ``name``: an Input top keeps it for every later forward."""
        value = value.to(self.device)
        owner = self._inputs.get(name)
        if owner is not None:
            layer = self.layers[owner[0]]
            layer.set_value(owner[1], value)  # type: ignore[operator]
            value = layer.value(owner[1])  # type: ignore[operator]
            self.blob_shapes[name] = tuple(value.shape)
        self.state.values[name] = value

    def reshape(self) -> None:
        """Recompute every blob shape from the current input shapes (Caffe's Net::Reshape)."""
        shapes = self.blob_shapes
        for lp, layer in zip(self.plan.layers, self.layers):
            for name, shape in zip(lp.tops, layer.reshape([shapes[b] for b in lp.bottoms])):
                shapes[name] = tuple(int(d) for d in shape)
        self.state.reset_values(keep=set(self._inputs))

    def set_keep_blob_diffs(self, on: bool) -> None:
        """Switch between Caffe's layer-by-layer backward (every blob's diff kept) and the training
        executor (see the module docstring)."""
        if on != self.keep_blob_diffs:
            self.keep_blob_diffs = on
            self.update_executor()

    # -- running --------------------------------------------------------------------------------
    def forward(self, inputs: Mapping[str, Tensor] | None = None,  # type: ignore[override]
                start: int | str | None = None, end: int | str | None = None) -> Tensor:
        """Run layers ``start``..``end`` (inclusive; names or indices) and return the loss (the
        sum of loss-weighted tops). ``inputs`` overwrite blobs before the first layer runs."""
        lo, hi = self.layer_index(start, 0), self.layer_index(end, len(self.steps) - 1)  # steps: no Module lookup
        for k, v in (inputs or {}).items():
            self.set_blob(k, v)
        track = torch.is_grad_enabled() and (self.needs.any or not self.keep_blob_diffs)
        with reported(self, "forward"), cuda_math(self):
            if self.quant is not None:  # caffe-jacinto's quantized forward (graph.jacinto_quant): no graph kept
                self.executor.forget(lo, hi)
                loss = self.quant.forward(lo, hi)
            elif track or self.compile_options:
                loss = self.executor.forward(lo, hi, track)
            else:  # nothing can follow that needs a graph: the lean path (graph.inference, graph.frozen)
                self.executor.forget(lo, hi)
                loss = self.frozen.forward(lo, hi) if self.frozen else self.lean.forward(lo, hi)
        self.state.publish()
        # straight into the instance dict: nn.Module.__setattr__'s registry checks cost more than a
        # small net's layer (a plain tensor attribute ends up there anyway)
        self.__dict__["loss"] = loss if loss is not None else torch.zeros((), device=self.device)
        return self.loss

    def backward(self, top_diffs: Mapping[str, Tensor] | None = None, retain_graph: bool = False,
                 start: int | str | None = None, end: int | str | None = None) -> None:
        """Backpropagate; parameter diffs accumulate (as in Caffe). ``top_diffs``: diffs for blobs
        (outputs) that carry no loss weight. ``start``/``end`` (layer names or indices) run only
        layers ``start`` down to ``end`` (Caffe's BackwardFromTo; nets that keep blob diffs)."""
        if self.quant is not None:
            raise NetError(f"{self.source}: net '{self.name}' sets quantize: true (caffe-jacinto's dynamic fixed "
                           "point, graph.jacinto_quant): its forwards keep no graph; received a backward, expected "
                           "forwards only (drop quantize: true to backpropagate)")
        if self.keep_blob_diffs:
            hi, lo = self.layer_index(start, len(self.layers) - 1), self.layer_index(end, 0)
            if not 0 <= lo <= hi < len(self.layers):
                raise NetError(f"{self.source}: backward from layer {hi} down to layer {lo}: "
                               f"expected end <= start within 0..{len(self.layers) - 1}")
            with reported(self, "backward"), cuda_math(self):
                self.executor.backward(top_diffs or {}, hi, lo)
        elif start is not None or end is not None:
            raise NetError(f"{self.source}: a backward over a range of layers needs a net that keeps blob "
                           "diffs (keep_blob_diffs=True)")
        else:
            with reported(self, "backward"), cuda_math(self):
                self.executor.backward(top_diffs or {}, retain_graph)

    def backward_ready(self, start: int | str | None = None, end: int | str | None = None) -> bool:
        """Whether the last forward recorded what a backward over ``start`` down to ``end`` needs."""
        return self.executor.ready(self.layer_index(end, 0), self.layer_index(start, len(self.layers) - 1))

    def clear_param_diffs(self) -> None:
        """Zero every parameter diff in place (Caffe's ClearParamDiffs)."""
        grads = [info.param.grad for info in self.learnable if info.param.grad is not None]
        if grads:
            torch._foreach_zero_(grads)

    def set_iteration(self, iteration: int, stop: int) -> None:
        """The solver is at ``iteration`` of a step that runs to ``stop`` (MobileNet-YOLO's
        ``Net::set_iter``): passed to the layers that read it (those with a ``set_iteration`` method)."""
        for layer in self.layers:
            setter = getattr(layer, "set_iteration", None)
            if callable(setter):
                setter(iteration, stop)

    def close(self) -> None:
        """Stop background work (data-layer worker processes) now rather than at garbage collection."""
        for layer in self.layers:
            closer = getattr(layer, "close", None)
            if callable(closer):
                closer()

    # -- speed modes (neocaffe.graph.modes) -----------------------------------------------------
    def set_memory_format(self, memory_format: torch.memory_format) -> None:
        modes.set_memory_format(self, memory_format)

    def set_fused_kernels(self, on: bool = True) -> list[str]:
        return modes.set_fused_kernels(self, on)

    def enable_compile(self, mode: str = "default", backend: str = "inductor", fullgraph: bool = False) -> None:
        modes.set_compile(self, (mode, backend, fullgraph))

    def disable_compile(self) -> None:
        modes.set_compile(self, None)

    def set_frozen(self, on: bool = True) -> None:
        modes.set_frozen(self, on)

    def weights_changed(self) -> None:
        """Parameter values were (or may have been) written in place: each layer drops what it derived
        from them (``Layer.weights_changed``). Called by loading, every solver update, test nets taking
        the trained weights and pycaffe's NumPy handouts; code that writes weights in place itself calls
        it afterwards."""
        for layer in self.layers:
            layer.weights_changed()

    def refreeze(self) -> None:
        """The weights changed: the ``frozen`` mode traces its graphs again, the layers derive anew."""
        self.weights_changed()
        modes.set_frozen(self, self.frozen is not None)

    # -- parameters and weights (neocaffe.graph.weights) ------------------------------------------
    def params_by_layer(self) -> dict[str, Sequence[nn.Parameter]]:
        """Layer name -> its parameter blobs (shared ones included), for layers that have any."""
        return {n: list(l.blobs) for n, l in zip(self.layer_names, self.layers) if len(l.blobs)}

    def copy_from(self, weights: Any, source: str | None = None, *, ignore_shape_mismatch: bool = False) -> list[str]:
        """Caffe's CopyTrainedLayersFrom: blobs from a weight file (path) or ``LayerWeights`` into the
        layers of the same name, in place; returns the layers copied (see ``graph.weights.copy_from``;
        ``ignore_shape_mismatch``: caffe-jacinto's solver field)."""
        if self.folded_layers:
            raise NetError(f"{self.source}: net '{self.name}' has BatchNorm/Scale folded into layers "
                           f"{', '.join(sorted(self.folded_layers))} (fold_bn); received weights to copy in, but "
                           "a weight file's blobs are the unfolded ones: expected them loaded before folding "
                           "(caffe.Net(prototxt, weights, phase, fold_bn=True), or copy_from, then fold_net)")
        self.refreeze()
        return weight_io.copy_from(self, weights, source, ignore_shape_mismatch=ignore_shape_mismatch)

    def share_with(self, other: "Net") -> None:
        """Caffe's ShareTrainedLayersWith: use ``other``'s parameter storage for layers of the same name."""
        self.refreeze()
        weight_io.share_with(self, other)

    def to_weights(self, with_diffs: bool = False) -> list[Any]:
        """Every layer's blobs as ``LayerWeights`` (host float32), for writing a ``.caffemodel[.h5]``."""
        return weight_io.to_weights(self, with_diffs)
