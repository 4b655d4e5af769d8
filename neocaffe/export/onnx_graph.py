"""The ONNX graph under construction: nodes, initializers, unique names, and the few idioms every
emitter needs (constants, reshapes that keep a dynamic batch, reductions across opsets)."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np

try:
    import onnx
    from onnx import helper, numpy_helper
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("ONNX export needs the 'onnx' package: pip install neocaffe[onnx]") from e

from neocaffe.export.registry import DEFAULT_OPSET, ExportError

#: the oldest opset we build for (Split/ReduceSum/Unsqueeze/Squeeze take their sizes and axes as inputs)
MIN_OPSET = 13

__all__ = ["OnnxGraph", "DEFAULT_OPSET", "MIN_OPSET", "onnx", "helper", "numpy_helper"]


class OnnxGraph:
    """Nodes and initializers of one graph; every name unique; ``scope`` prefixes node names."""

    def __init__(self, opset: int = DEFAULT_OPSET) -> None:
        max_opset = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= opset <= max_opset:
            raise ExportError(f"opset {opset} is not supported: expected {MIN_OPSET} to {max_opset}")
        self.opset = opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.producer: dict[str, int] = {}  # tensor name -> index of the node that writes it
        self._taken: set[str] = set()
        self._consts: dict[tuple[Any, ...], str] = {}
        self._scope = ""

    # -- names ---------------------------------------------------------------------------------
    def reserve(self, name: str) -> None:
        """Mark ``name`` (a graph input, say) as taken."""
        self._taken.add(name)

    def is_taken(self, name: str) -> bool:
        return name in self._taken

    def fresh(self, hint: str) -> str:
        """A new tensor name ``<scope>/<hint>`` (suffixed with a number when taken)."""
        base = f"{self._scope}/{hint}" if self._scope else hint
        name, k = base, 1
        while name in self._taken:
            name, k = f"{base}_{k}", k + 1
        self._taken.add(name)
        return name

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        prev, self._scope = self._scope, name
        try:
            yield
        finally:
            self._scope = prev

    def rename(self, old: str, new: str, first_node: int = 0) -> None:
        """Rename tensor ``old`` to ``new`` in the nodes from ``first_node`` on."""
        for node in self.nodes[first_node:]:
            for seq in (node.input, node.output):
                for i, n in enumerate(seq):
                    if n == old:
                        seq[i] = new
        if old in self.producer:
            self.producer[new] = self.producer.pop(old)
        self._taken.add(new)

    # -- nodes and constants ---------------------------------------------------------------------
    def op(self, op_type: str, *inputs: str, outputs: int = 1, hint: str | None = None, **attrs: Any) -> Any:
        """Add one node; returns its output name (or a list of names when ``outputs`` > 1)."""
        hint = hint or op_type.lower()
        outs = [self.fresh(hint if outputs == 1 else f"{hint}_{i}") for i in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        node = helper.make_node(op_type, list(inputs), outs, name=self.fresh(f"{hint}_node"), **attrs)
        for o in outs:
            self.producer[o] = len(self.nodes)
        self.nodes.append(node)
        return outs[0] if outputs == 1 else outs

    def const(self, value: Any, hint: str = "const", dtype: Any = np.float32) -> str:
        """An initializer holding ``value`` (small constants are shared by value)."""
        arr = np.asarray(value, dtype=dtype)
        key = None
        if arr.size <= 16:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._consts:
                return self._consts[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(arr.copy(order="C"), name))
        if key is not None:
            self._consts[key] = name
        return name

    def ints(self, values: Sequence[int], hint: str = "ints") -> str:
        """An int64 1-D initializer (shapes, axes, pads, slice bounds)."""
        return self.const([int(v) for v in values], hint, np.int64)

    # -- idioms ------------------------------------------------------------------------------------
    def reshape(self, x: str, shape: Sequence[int], batch: Sequence[bool] = (), hint: str = "reshape") -> str:
        """Reshape ``x`` to the static ``shape``; an axis that follows a dynamic batch (``batch``)
        becomes -1 (one such axis at most)."""
        dims = [int(d) for d in shape]
        scaled = [i for i, b in enumerate(batch) if b]
        if len(scaled) > 1:
            raise ExportError(f"cannot reshape to {tuple(dims)} with a dynamic batch: axes {scaled} all follow "
                              "the batch size (export with a fixed -batch)")
        for i in scaled:
            dims[i] = -1
        return self.op("Reshape", x, self.ints(dims, "shape"), hint=hint)

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool = True, hint: str | None = None) -> str:
        """``Reduce*`` over ``axes``: axes as an input from opset 18 (13 for ReduceSum), else an attribute."""
        since = 13 if op_type == "ReduceSum" else 18
        if self.opset >= since:
            return self.op(op_type, x, self.ints(axes, "axes"), keepdims=int(keepdims), hint=hint)
        return self.op(op_type, x, axes=[int(a) for a in axes], keepdims=int(keepdims), hint=hint)

    def scalar(self, value: float) -> str:
        """A float32 scalar constant (shape ()), for element-wise arithmetic."""
        return self.const(np.float32(value), "scalar")
