"""The frozen mode's ``native`` candidate: a small net's layers after its sources as one C call
(:mod:`neocaffe.layers.small_net`), planned once per input shape.

``build`` lowers each layer to the C program's operations, or gives up (None, with the reason in
``why_not``) on anything else: Convolution (2-D, axis 1), InnerProduct (axis 1), Pooling (MAX, AVE, one
top), ReLU, PReLU, Softmax (axis 1), Split and TEST-phase Dropout (the same values under another name),
with every blob of 2 or 4 axes sharing the batch axis. A ReLU or PReLU working in place on a
convolution's top runs inside the convolution. Each blob gets a region of a per-thread arena (a blob
shown under several names keeps one region; a layer working in place on such a blob writes a region of
its own, as the lean path gives it a tensor of its own). Nets above ``MAX_MFLOP`` per image are left to
PyTorch (its convolutions win there, and timing a slow candidate would cost seconds).

The plan returns the same output tensors at every call (as Caffe's blobs keep their memory), filled
with the outputs of this call.
"""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers import small_net as sn
from neocaffe.layers.base import TRAIN
from neocaffe.layers.neuron import ReLULayer
from neocaffe.layers.pool_ops import AVE, MAX

if TYPE_CHECKING:
    from neocaffe.graph.net import Net

#: per image, the most arithmetic (2 x multiply-adds of convolutions and inner products) planned here
MAX_MFLOP = 100.0
#: arena regions start at multiples of this many floats (64 bytes)
ALIGN = 16


class Unsupported(Exception):
    """A layer or blob the C program does not run."""


class _Builder:
    """The operations, arena regions and packed weights of one plan being built."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.ops: list[sn.Op] = []
        self.keep: list[np.ndarray] = []  # packed weights the operations point into
        self.size = 0  # arena floats
        self.scratch = 0  # padding scratch floats
        self.region: dict[str, int] = {}  # blob -> arena offset
        self.chw: dict[str, tuple[int, int, int]] = {}  # blob -> per-image shape
        self.names: dict[int, set[str]] = {}  # region -> the blobs it holds
        self.mflop = 0.0

    def per_image(self, name: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
        if len(shape) not in (2, 4) or shape[0] != self.n:
            raise Unsupported(f"blob '{name}' has shape {shape}: expected N x K or N x C x H x W with N = {self.n}")
        return (int(shape[1]), int(shape[2]), int(shape[3])) if len(shape) == 4 else (int(shape[1]), 1, 1)

    def new(self, name: str, shape: tuple[int, ...]) -> int:
        """A fresh region for blob ``name``."""
        self.unbind(name)
        chw = self.per_image(name, shape)
        off = self.size
        self.size += -(-(chw[0] * chw[1] * chw[2]) // ALIGN) * ALIGN
        self.region[name], self.chw[name] = off, chw
        self.names[off] = {name}
        return off

    def alias(self, name: str, of: str) -> None:
        """Blob ``name`` shows blob ``of``'s values (the same region)."""
        if name == of:
            return
        self.unbind(name)
        off = self.region[of]
        self.region[name], self.chw[name] = off, self.chw[of]
        self.names[off].add(name)

    def unbind(self, name: str) -> None:
        off = self.region.pop(name, None)
        if off is not None:
            self.names[off].discard(name)

    def target(self, bottom: str, top: str, shape: tuple[int, ...]) -> int:
        """The region a layer writes ``top`` to: ``bottom``'s when it works in place on a region no
        other blob shows, else a new one."""
        if top == bottom and self.names[self.region[bottom]] == {bottom}:
            return self.region[bottom]
        return self.new(top, shape)

    def op(self, kind: int, src: int, dst: int, chw: tuple[int, int, int], **fields: Any) -> sn.Op:
        o = sn.Op(kind=kind, src=src, dst=dst, C=chw[0], H=chw[1], W=chw[2], **{"group": 1, **fields})
        self.ops.append(o)
        return o

    def array(self, a: np.ndarray | None) -> int | None:
        """The address of ``a`` as float32, kept alive with the plan."""
        if a is None:
            return None
        a = np.ascontiguousarray(a, np.float32)
        self.keep.append(a)
        return a.ctypes.data


def _weights(layer: Any, i: int) -> np.ndarray:
    return layer.blobs[i].detach().to("cpu", torch.float32).numpy()


def _conv(b: _Builder, layer: Any, st: Any, shapes: dict[str, tuple[int, ...]]) -> None:
    if st.type != "Convolution" or len(st.bottoms) != 1 or layer.axis != 1 or layer.n_sp != 2 or layer.transposed:
        raise Unsupported("a Convolution of one 4-D bottom on axis 1")
    bottom, top = st.bottoms[0], st.tops[0]
    chw, out = b.chw[bottom], b.per_image(top, shapes[top])
    w, bias = sn.pack_conv(_weights(layer, 0), _weights(layer, 1) if layer.bias_term else None, layer.group)
    b.mflop += 2e-6 * out[0] * out[1] * out[2] * (chw[0] // layer.group) * layer.kernel[0] * layer.kernel[1]
    b.scratch = max(b.scratch, (chw[1] + 2 * layer.pad[0]) * (chw[2] + 2 * layer.pad[1]) * chw[0])
    src = b.region[bottom]
    b.op(sn.CONV, src, b.new(top, shapes[top]), chw, OC=out[0], OH=out[1], OW=out[2], kh=layer.kernel[0],
         kw=layer.kernel[1], sh=layer.stride[0], sw=layer.stride[1], ph=layer.pad[0], pw=layer.pad[1],
         dh=layer.dilation[0], dw=layer.dilation[1], group=layer.group, w=b.array(w), b=b.array(bias))


def _inner_product(b: _Builder, layer: Any, st: Any, shapes: dict[str, tuple[int, ...]]) -> None:
    if len(st.bottoms) != 1:
        raise Unsupported("InnerProduct with its weights from a bottom (happynear's form): expected one bottom")
    if layer.axis != 1:
        raise Unsupported(f"InnerProduct on axis {layer.axis}: expected axis 1")
    if layer.normalize:
        raise Unsupported("InnerProduct with normalize (each forward rewrites its weight)")
    bottom, top = st.bottoms[0], st.tops[0]
    chw = b.chw[bottom]
    w, bias = sn.pack_inner_product(_weights(layer, 0), _weights(layer, 1) if layer.bias_term else None,
                                    layer.transpose, chw)
    b.mflop += 2e-6 * layer.num_output * layer.K
    src = b.region[bottom]
    b.op(sn.CONV, src, b.new(top, shapes[top]), chw, OC=layer.num_output, OH=1, OW=1, kh=chw[1], kw=chw[2],
         sh=1, sw=1, dh=1, dw=1, w=b.array(w), b=b.array(bias))


def _pooling(b: _Builder, layer: Any, st: Any, shapes: dict[str, tuple[int, ...]]) -> None:
    if layer.method not in (MAX, AVE) or len(st.tops) != 1:
        raise Unsupported("MAX or AVE pooling with one top")
    bottom, top = st.bottoms[0], st.tops[0]
    k, out = layer.window(shapes[bottom])
    src = b.region[bottom]
    b.op(sn.POOL_MAX if layer.method == MAX else sn.POOL_AVE, src, b.new(top, shapes[top]), b.chw[bottom],
         OC=b.chw[bottom][0], OH=out[0], OW=out[1], kh=k[0], kw=k[1], sh=layer.stride[0], sw=layer.stride[1],
         ph=layer.pad[0], pw=layer.pad[1])


def _activation(b: _Builder, st: Any, fields: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    """ReLU/PReLU: inside the convolution that wrote the bottom when in place on its fresh region."""
    bottom, top = st.bottoms[0], st.tops[0]
    last = b.ops[-1] if b.ops else None
    if (top == bottom and last is not None and last.kind == sn.CONV and last.act == sn.NO_ACT
            and last.dst == b.region[bottom] and b.names[last.dst] == {bottom}):
        for k, v in fields.items():
            setattr(last, k, v)
        return
    src = b.region[bottom]
    b.op(sn.ACT, src, b.target(bottom, top, shapes[top]), b.chw[bottom], **fields)


def _relu(b: _Builder, layer: Any, st: Any, shapes: dict[str, tuple[int, ...]]) -> None:
    if type(layer).fwd is not ReLULayer.fwd:
        raise Unsupported("a ReLU of its own formula")
    _activation(b, st, {"act": sn.RELU, "slope": layer.slope}, shapes)


def _prelu(b: _Builder, layer: Any, st: Any, shapes: dict[str, tuple[int, ...]]) -> None:
    slopes = _weights(layer, 0).reshape(-1)
    padded = np.zeros(len(slopes) + sn.BLOCK, np.float32)  # CONV reads 16 from any channel
    padded[:len(slopes)] = slopes
    _activation(b, st, {"act": sn.PRELU, "alpha": b.array(padded), "shared": int(bool(layer.shared))}, shapes)


def _softmax(b: _Builder, layer: Any, st: Any, shapes: dict[str, tuple[int, ...]]) -> None:
    if layer.axis != 1:
        raise Unsupported(f"Softmax on axis {layer.axis}: expected axis 1")
    bottom, top = st.bottoms[0], st.tops[0]
    src = b.region[bottom]
    b.op(sn.SOFTMAX, src, b.target(bottom, top, shapes[top]), b.chw[bottom])


def _same(b: _Builder, layer: Any, st: Any, shapes: dict[str, tuple[int, ...]]) -> None:
    """Split, and Dropout at TEST (the identity): every top shows the bottom's values."""
    if st.type == "Dropout" and (layer.phase == TRAIN or not layer.scale_train):
        raise Unsupported("Dropout at TEST with scale_train (the identity)")
    for top in st.tops:
        b.alias(top, st.bottoms[0])


_LOWER: dict[str, Callable[[_Builder, Any, Any, dict[str, tuple[int, ...]]], None]] = {
    "Convolution": _conv, "InnerProduct": _inner_product, "Pooling": _pooling, "ReLU": _relu, "PReLU": _prelu,
    "Softmax": _softmax, "Split": _same, "Dropout": _same}


class NativePlan:
    """``plan(*xs)``: the outputs (the same tensors every call) for inputs shaped as at ``build``."""

    def __init__(self, b: _Builder, run: Any, outputs: list[Tensor]) -> None:
        self.n, self.outs = b.n, tuple(outputs)
        self.ops = (sn.Op * len(b.ops))(*b.ops)
        self.keep = b.keep
        self.run = run
        self.arena_floats = b.size + b.scratch
        self.arenas: list[np.ndarray] = []
        self.in_ptrs = (ctypes.c_void_p * max(1, sum(o.kind == sn.TO_HWC for o in b.ops)))()
        self.out_ptrs = (ctypes.c_void_p * max(1, len(outputs)))(*[t.data_ptr() for t in outputs])
        self.arena_ptrs = (ctypes.c_void_p * 64)()
        self._threads()  # the first arena
        self.args = sn.Plan(ctypes.addressof(self.ops), len(b.ops), ctypes.addressof(self.in_ptrs),
                            ctypes.addressof(self.out_ptrs), ctypes.addressof(self.arena_ptrs), b.size, self.n, 1)
        self.ref = ctypes.byref(self.args)

    def _threads(self) -> int:
        t = max(1, min(torch.get_num_threads(), self.n, 64))
        while len(self.arenas) < t:
            a = np.zeros(self.arena_floats + ALIGN, np.float32)
            self.arena_ptrs[len(self.arenas)] = a.ctypes.data + (-a.ctypes.data % 64)
            self.arenas.append(a)
        return t

    def __call__(self, *xs: Tensor) -> tuple[Tensor, ...]:
        ptrs, held = self.in_ptrs, []
        for i, x in enumerate(xs):
            if not x.is_contiguous():
                x = x.contiguous()
                held.append(x)  # alive until the call returns
            ptrs[i] = x.data_ptr()
        t = torch.get_num_threads()
        self.args.nthreads = 1 if t == 1 or self.n == 1 else self._threads()
        self.run(self.ref)
        return self.outs


def build(net: "Net", start: int, inputs: list[str], xs: list[Tensor], outputs: list[str]
          ) -> tuple[NativePlan | None, str]:
    """The plan of layers ``start``.. of ``net`` for inputs ``xs`` (the blobs ``inputs``) giving the
    blobs ``outputs``; or (None, why not)."""
    if any(x.device.type != "cpu" or x.dtype != torch.float32 for x in xs):
        return None, "inputs must be float32 CPU tensors"
    run = sn.function()
    if run is None:
        return None, "no native kernel can be built here"
    n = int(xs[0].shape[0]) if xs and xs[0].dim() else 0
    b = _Builder(n)
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        for i, (name, x) in enumerate(zip(inputs, xs)):
            shapes[name] = tuple(x.shape)
            b.op(sn.TO_HWC, i, b.new(name, shapes[name]), b.chw[name])
        for st, layer in zip(net.steps[start:], net.layers[start:]):
            lower = _LOWER.get(st.type)
            if lower is None:
                raise Unsupported(f"layer '{st.name}' ({st.type})")
            for name, shape in zip(st.tops, layer.reshape([shapes[bt] for bt in st.bottoms])):
                shapes[name] = tuple(int(d) for d in shape)
            try:
                lower(b, layer, st, shapes)
            except Unsupported as e:
                raise Unsupported(f"layer '{st.name}' ({st.type}): {e}") from None
            if b.mflop > MAX_MFLOP:
                raise Unsupported(f"more than {MAX_MFLOP:g} MFLOP per image")
        outs = []
        for j, name in enumerate(outputs):
            outs.append(torch.empty(shapes[name], dtype=torch.float32, device="cpu"))  # written by the C program
            b.op(sn.TO_CHW, b.region[name], j, b.chw[name])
    except Unsupported as e:
        return None, str(e)
    return NativePlan(b, run, outs), ""


__all__ = ["build", "NativePlan", "MAX_MFLOP"]
