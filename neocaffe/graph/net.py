"""The Net: a NetParameter built into layers and run forward and backward with Caffe's blob semantics.

Blobs are tensors keyed by Caffe's blob names. A blob rewritten in place (``relu1`` on ``conv1``)
shows its last value as data and, as in Caffe, the diff of its first value (the diff after every
in-place layer's backward). Gradients come from autograd; ``net.backward`` seeds loss tops with
their loss weights and other outputs with the diffs given.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from neocaffe.graph.fusion import run_relu_lrn
from neocaffe.graph.params import ParamInfo, collect_params
from neocaffe.graph.plan import NetPlan, insert_splits, make_plan
from neocaffe.graph.rules import filter_net, make_state
from neocaffe.layers.base import TEST, Layer, LayerSetupError, Shape, net_backward
from neocaffe.layers.registry import get_layer_class


AUTOMATIC = "(automatic)"


def _add_automatic_tops(net: Any, source: str) -> None:
    """Caffe's AutoTopBlobs: a loss layer written without tops still gets its loss top, an anonymous
    blob (named "(automatic)") whose loss counts but which is no net output."""
    n = 0
    for lp in net.layer:
        cls = get_layer_class(lp.type, lp.name, source)
        if not getattr(cls, "auto_top_blobs", False):
            continue
        needed = max(cls.min_tops or 0, cls.exact_tops or 0)
        while len(lp.top) < needed:
            lp.top.append(AUTOMATIC if n == 0 else f"{AUTOMATIC}_{n}")
            n += 1


class _Step(NamedTuple):
    """What the forward loop needs of one layer, as plain Python data."""

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    in_place: tuple[bool, ...]
    propagate_down: tuple[bool, ...]
    host: bool  # produces_host_data: tops move to the net's device
    input: bool  # an Input layer


class NetError(ValueError):
    """The net cannot be built or run as configured."""


def _as_list(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    return list(out)


class Net(nn.Module):
    """A Caffe net for one NetState (phase, level, stages).

    ``net_param``: an upgraded NetParameter. ``source``: the file it came from (for errors).
    ``keep_blob_diffs``: retain every blob's diff for inspection (pycaffe's ``blob.diff``); the
    training loop turns it off to save memory.
    """

    def __init__(
        self,
        net_param: Any,
        phase: int = TEST,
        level: int = 0,
        stages: Iterable[str] = (),
        *,
        source: str | None = None,
        device: torch.device | str | None = None,
        keep_blob_diffs: bool = True,
    ) -> None:
        super().__init__()
        self.source = source or "<net>"
        base = net_param.state if net_param.HasField("state") else None
        self.state = make_state(phase, level, stages, base=base)
        self.phase = phase
        filtered = filter_net(net_param, self.state)
        for lp in filtered.layer:
            if not lp.HasField("phase"):
                lp.phase = phase
        _add_automatic_tops(filtered, self.source)
        self.net_param = insert_splits(filtered)
        self.name: str = net_param.name
        self.force_backward: bool = net_param.force_backward
        self.plan: NetPlan = make_plan(self.net_param)
        self.plan.outputs = [o for o in self.plan.outputs if not o.startswith(AUTOMATIC)]
        self.keep_blob_diffs = keep_blob_diffs
        self.layers = nn.ModuleList()
        self.blob_shapes: dict[str, Shape] = {}
        self.loss_weights: list[list[float]] = []
        self._build()
        self._steps = [
            _Step(lp.param.name, lp.param.type, tuple(lp.bottoms), tuple(lp.tops), tuple(lp.in_place),
                  tuple(bool(k) for k in lp.param.propagate_down), layer.produces_host_data,
                  lp.param.type == "Input")
            for lp, layer in zip(self.plan.layers, self.layers)
        ]
        self.learnable: list[ParamInfo] = collect_params(list(self.layers))
        # tops that a later layer rewrites in place: their layer's backward reads the blob's final value
        # (Caffe's top data), which the forward stores in the TopRef; every other ref keeps its own
        self._rewritten_tops = [
            (layer.top_refs[j], name)
            for i, (lp, layer) in enumerate(zip(self.plan.layers, self.layers)) for j, name in enumerate(lp.tops)
            if any(name in later.tops and later.in_place[later.tops.index(name)] for later in self.plan.layers[i + 1:])
        ]
        self._set_requires_grad()
        self.blob_data: dict[str, Tensor] = {}
        self._first: dict[str, Tensor] = {}
        self._loss_terms: list[tuple[Tensor, float]] = []
        # each layer's (bottoms, tops) tensors of the last forward, kept only for nets that keep blob
        # diffs (pycaffe's), so a backward may run a range of layers (Caffe's BackwardFromTo)
        self._layer_io: dict[int, tuple[list[Tensor], list[Tensor]]] = {}
        self._range_diffs: dict[str, Tensor] = {}  # blob diffs written by the last ranged backward
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if device is not None:
            self.to(self.device)
        self.memory_format = torch.contiguous_format
        self._compiled: Any = None
        self._fused_pairs: dict[int, int] = {}  # ReLU layer -> the LRN it runs with (graph.fusion)
        self._core_start = 0
        self._core_inputs: list[str] = []

    # -- construction ---------------------------------------------------------------------------
    def _where(self, layer_param: Any) -> str:
        return f"{self.source}, layer '{layer_param.name}'"

    def _build(self) -> None:
        shapes = self.blob_shapes
        for lp in self.plan.layers:
            p = lp.param
            cls = get_layer_class(p.type, p.name, self.source)
            try:
                layer: Layer = cls(p, [shapes[b] for b in lp.bottoms], p.phase)
                top_shapes = layer.reshape([shapes[b] for b in lp.bottoms])
            except (LayerSetupError, ValueError) as e:
                msg = str(e)
                if p.name not in msg:
                    msg = f"layer '{p.name}' ({p.type}): {msg}"
                raise NetError(f"{self.source}: {msg}") from e
            if any(lp.in_place) and not layer.allow_in_place:
                raise NetError(f"{self.source}: layer '{p.name}' ({p.type}) cannot work in place")
            for name, shape in zip(lp.tops, top_shapes):
                shapes[name] = tuple(int(d) for d in shape)
            if len(p.loss_weight):
                if len(p.loss_weight) != len(p.top):
                    raise NetError(
                        f"{self.source}: layer '{p.name}': loss_weight must be unspecified or specified "
                        f"once per top blob; received {len(p.loss_weight)} for {len(p.top)} tops"
                    )
                lws = [float(w) for w in p.loss_weight]
            else:
                lws = layer.default_loss_weights()
            self.loss_weights.append(lws)
            self.layers.append(layer)

    def _set_requires_grad(self) -> None:
        for info in self.learnable:
            # Caffe: param_need_backward = lr_mult != 0, whatever force_backward says
            info.param.requires_grad_(info.lr_mult != 0)
            if info.param.grad is None:
                info.param.grad = torch.zeros_like(info.param)

    def to(self, *args: Any, **kwargs: Any) -> "Net":  # type: ignore[override]
        super().to(*args, **kwargs)
        for info in self.learnable:
            if info.param.grad is not None and info.param.grad.device != info.param.device:
                info.param.grad = torch.zeros_like(info.param)
        try:
            self.device = next(t.device for t in list(self.parameters()) + list(self.buffers()))
        except StopIteration:
            dev = args[0] if args else kwargs.get("device")
            if isinstance(dev, (str, torch.device)):
                self.device = torch.device(dev)
        return self

    # -- names ----------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return [lp.param.name for lp in self.plan.layers]

    @property
    def blob_names(self) -> list[str]:
        return list(self.plan.blob_names)

    @property
    def inputs(self) -> list[str]:
        return list(self.plan.inputs)

    @property
    def outputs(self) -> list[str]:
        return list(self.plan.outputs)

    def layer_index(self, name: str) -> int:
        for i, n in enumerate(self.layer_names):
            if n == name:
                return i
        raise KeyError(f"no layer named '{name}' in net '{self.name}'; layers: {', '.join(self.layer_names)}")

    def layer(self, name: str) -> Layer:
        return self.layers[self.layer_index(name)]  # type: ignore[return-value]

    # -- running --------------------------------------------------------------------------------
    def forward(  # type: ignore[override]
        self,
        inputs: Mapping[str, Tensor] | None = None,
        start: int | str | None = None,
        end: int | str | None = None,
    ) -> Tensor:
        """Run layers ``start``..``end`` (inclusive; names or indices) and return the loss
        (sum of loss-weighted tops). ``inputs`` overwrite blobs before the first layer runs."""
        lo = 0 if start is None else (self.layer_index(start) if isinstance(start, str) else start)
        hi = len(self.layers) - 1 if end is None else (self.layer_index(end) if isinstance(end, str) else end)
        vals = self.blob_data
        for k, v in (inputs or {}).items():
            self.set_blob(k, v)
        if lo == 0:
            self._first = {}
            self._loss_terms = []
            self._range_diffs = {}
            self._layer_io = {}
        track = torch.is_grad_enabled()
        if self._compiled is not None and lo == 0 and hi == len(self.layers) - 1 and not (track and self.keep_blob_diffs):
            loss = self._forward_compiled(track)
        else:
            loss = self._run_layers(lo, hi, vals, self._first, self._loss_terms, track)
            for ref, name in self._rewritten_tops:
                ref.value = vals[name].detach() if name in vals else None
        if loss is None:
            loss = torch.zeros((), device=self.device)
        self.loss = loss
        return loss

    def _run_layers(self, lo: int, hi: int, vals: dict[str, Tensor], first: dict[str, Tensor],
                    terms: list[tuple[Tensor, float]], track: bool) -> Tensor | None:
        """Run layers ``lo``..``hi`` on the blobs in ``vals`` (updated in place); the loss of their
        loss-weighted tops (None when they have none)."""
        loss: Tensor | None = None
        nhwc = self.memory_format is torch.channels_last
        keep = track and self.keep_blob_diffs  # every blob's diff and each layer's tensors kept (pycaffe)
        # fused pairs run as one autograd node, so a ranged backward could not stop between them: nets
        # that keep blob diffs run the pair's layers one by one
        pairs = {} if keep else self._fused_pairs
        fused_tops: dict[int, Tensor] = {}  # the second layer of a fused pair: its top, already computed
        for i in range(lo, hi + 1):
            st = self._steps[i]  # plain data (no protobuf): torch.compile traces this loop
            layer = self.layers[i]
            bottoms = [vals[b] for b in st.bottoms]
            pd = st.propagate_down
            if pd:
                if len(pd) != len(bottoms):
                    raise NetError(
                        f"{self.source}: layer '{st.name}': propagate_down has {len(pd)} entries "
                        f"for {len(bottoms)} bottoms"
                    )
                bottoms = [b if keep else b.detach() for b, keep in zip(bottoms, pd)]
            if i in fused_tops:
                tops = [fused_tops.pop(i)]
            elif i in pairs and i < hi and (pair := run_relu_lrn(self, i, bottoms[0])) is not None:
                tops, fused_tops[i + 1] = [pair[0]], pair[1]
            else:
                tops = _as_list(layer(*bottoms))
            if keep:
                self._layer_io[i] = (bottoms, tops)
            else:
                self._layer_io.pop(i, None)  # no stale graph for a later ranged backward
            if len(tops) != len(st.tops):
                raise NetError(
                    f"layer '{st.name}' ({st.type}) returned {len(tops)} tops; "
                    f"the prototxt names {len(st.tops)}"
                )
            for j, (name, t) in enumerate(zip(st.tops, tops)):
                if st.host and t.device != self.device:
                    t = t.to(self.device, non_blocking=True)
                if nhwc and (st.host or st.input) and t.dim() == 4 and t.is_floating_point():
                    t = t.contiguous(memory_format=torch.channels_last)
                if track and self.force_backward and not t.requires_grad and t.is_floating_point() and (st.input or st.host):
                    t = t.detach().requires_grad_(True)  # Caffe's force_backward: data tops get diffs too
                prev = first.get(name)
                if not st.in_place[j] or prev is None or not (keep or prev.is_leaf):
                    # the blob's diff lives on its first tensor; without kept diffs only a leaf's
                    # (.grad) is readable, and holding the value from before in-place layers (a conv
                    # output under its ReLU) would only cost memory
                    first[name] = t
                if keep and t.requires_grad and not t.is_leaf and first[name] is t:
                    t.retain_grad()
                vals[name] = t
                w = self.loss_weights[i][j]
                if w:
                    terms.append((t, w))
                    term = t.sum() * w
                    loss = term if loss is None else loss + term
        return loss

    # -- speed modes (neocaffe.graph.compiled) -------------------------------------------------------
    def set_memory_format(self, memory_format: torch.memory_format) -> None:
        """4-D parameters, their diffs and 4-D data/Input tops in ``memory_format`` (values unchanged)."""
        from neocaffe.graph.compiled import set_memory_format

        set_memory_format(self, memory_format)

    def set_fused_kernels(self, on: bool = True) -> list[str]:
        """The ``fused`` speed mode: Triton LRN kernels, ReLU+LRN pairs as one kernel (see
        ``neocaffe.graph.fusion``); returns the fused pairs."""
        from neocaffe.graph.fusion import set_fused_kernels

        return set_fused_kernels(self, on)

    def enable_compile(self, mode: str = "default", backend: str = "inductor", fullgraph: bool = False) -> None:
        """Run full forwards through ``torch.compile`` (see :mod:`neocaffe.graph.compiled`)."""
        from neocaffe.graph.compiled import enable_compile

        enable_compile(self, mode, backend, fullgraph)

    def disable_compile(self) -> None:
        self._compiled = None

    def _forward_compiled(self, track: bool) -> Tensor | None:
        from neocaffe.graph.compiled import forward_compiled

        return forward_compiled(self, track)

    def _input_owner(self, name: str) -> tuple[Layer, int] | None:
        for lp, layer in zip(self.plan.layers, self.layers):
            if lp.param.type == "Input" and name in lp.tops:
                return layer, lp.tops.index(name)
        return None

    def set_blob(self, name: str, value: Tensor) -> None:
        """Write ``value`` into blob ``name``: an Input top keeps it for every later forward."""
        owner = self._input_owner(name)
        value = value.to(self.device)
        if owner is not None:
            layer, j = owner
            layer.set_value(j, value)  # type: ignore[attr-defined]
            self.blob_shapes[name] = tuple(value.shape)
        self.blob_data[name] = value

    def reshape(self) -> None:
        """Recompute every blob shape from the current input shapes (Caffe's Net::Reshape)."""
        shapes = self.blob_shapes
        for lp, layer in zip(self.plan.layers, self.layers):
            tops = layer.reshape([shapes[b] for b in lp.bottoms])
            for name, shape in zip(lp.tops, tops):
                shapes[name] = tuple(int(d) for d in shape)

    def backward(self, top_diffs: Mapping[str, Tensor] | None = None, retain_graph: bool = False,
                 start: int | str | None = None, end: int | str | None = None) -> None:
        """Backpropagate: loss tops get their loss weight as diff, other outputs the diffs given.
        Parameter diffs accumulate (as in Caffe); blob diffs are replaced.

        ``start``/``end`` (layer names or indices) run only layers ``start`` down to ``end``, as
        Caffe's BackwardFromTo: ``start``'s tops take ``top_diffs``, loss layers in the range their
        loss weight, and nothing below ``end`` runs (its bottoms get their diffs, lower parameters
        keep theirs)."""
        if start is not None or end is not None:
            from neocaffe.graph.ranged import backward_range

            backward_range(self, top_diffs or {}, retain_graph, start, end)
            return
        self._range_diffs = {}
        tensors: list[Tensor] = []
        grads: list[Tensor] = []
        for t, w in self._loss_terms:
            if t.requires_grad:
                tensors.append(t)
                grads.append(torch.full_like(t, w))
        for name, diff in (top_diffs or {}).items():
            t = self.blob_data[name]
            if t.requires_grad:
                tensors.append(t)
                grads.append(diff.to(t.device, t.dtype).reshape(t.shape))
        for t in self._first.values():  # blob diffs are replaced, not accumulated (leaf inputs included)
            t.grad = None
        if tensors:
            with net_backward():  # layers may add parameter diffs into .grad in place (Caffe's gemm, beta 1)
                torch.autograd.backward(tensors, grads, retain_graph=retain_graph)

    def blob_diff(self, name: str) -> Tensor:
        """The diff of blob ``name`` after the last backward (zeros where no gradient reached)."""
        if name in self._range_diffs:
            return self._range_diffs[name]
        t = self._first.get(name)
        if t is not None and t.grad is not None:
            return t.grad
        ref = self.blob_data.get(name)
        shape = tuple(ref.shape) if ref is not None else self.blob_shapes[name]
        return torch.zeros(shape, device=self.device)

    def clear_param_diffs(self) -> None:
        """Zero every parameter diff in place (Caffe's ClearParamDiffs)."""
        grads = [info.param.grad for info in self.learnable if info.param.grad is not None]
        if grads:
            torch._foreach_zero_(grads)

    def close(self) -> None:
        """Stop background work (data-layer worker processes) now rather than at garbage collection."""
        for layer in self.layers:
            closer = getattr(layer, "close", None)
            if callable(closer):
                closer()

    # -- parameters by layer --------------------------------------------------------------------
    def params_by_layer(self) -> dict[str, Sequence[nn.Parameter]]:
        """Layer name -> its parameter blobs (shared ones included), for layers that have any."""
        return {n: list(l.blobs) for n, l in zip(self.layer_names, self.layers) if len(l.blobs)}

    # -- weights: load, share, export (neocaffe.graph.weights) ---------------------------------------
    def copy_from(self, weights: Any, source: str | None = None) -> list[str]:
        """Caffe's CopyTrainedLayersFrom: blobs from a weight file (path) or ``LayerWeights`` into the
        layers of the same name, in place; returns the layers copied (see ``graph.weights.copy_from``)."""
        from neocaffe.graph.weights import copy_from

        return copy_from(self, weights, source)

    def share_with(self, other: "Net") -> None:
        """Caffe's ShareTrainedLayersWith: use ``other``'s parameter storage for layers of the same name."""
        from neocaffe.graph.weights import share_with

        share_with(self, other)

    def to_weights(self, with_diffs: bool = False) -> list[Any]:
        """Every layer's blobs as ``LayerWeights`` (host float32), for writing a ``.caffemodel[.h5]``."""
        from neocaffe.graph.weights import to_weights

        return to_weights(self, with_diffs)
