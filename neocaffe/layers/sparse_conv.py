"""The scnn branch's ``convolution_param.conv_mode``: a convolution computed from its weights' sparsity.

"Learning Structured Sparsity in Deep Neural Networks" (wenwei202/caffe, branch ``scnn``,
``src/caffe/layers/base_conv_layer.cpp``: ``WeightAlign``, ``forward_cpu_gemm``) lowers the input
(im2col) and multiplies it by the weight matrix ``(num_output/group) x (C/group * kernel_h * kernel_w)``
of each group in one of these ways:

* ``LOWERED_CCNMM``: the rows (filters) and columns (channel x kernel position) whose weights are all
  exactly 0 are dropped, the rest concatenated into a smaller dense matrix (``caffe_cpu_if_all_zero``,
  ``caffe_cpu_concatenate_rows_cols``), the lowering keeps only the remaining columns, one GEMM, and
  the outputs of the dropped filters are 0 (``caffe_cpu_dispatch_rows``); then the bias as always.
  This is what SSL's group lasso (filters, filter shapes) makes fast. Here the lowering gathers just
  the kept columns from the padded input (no full im2col; ``ROW_RUNS``; a 1x1 kernel takes whole
  channels) and the GEMM is ``torch.matmul``; where few filters are dropped (``MAX_PADDED_ROW_MACS``)
  their zero rows stay in the GEMM, which costs less than placing the rows (the same outputs: zero rows
  give exact zeros).
* ``LOWERED_CSRMM``: the weight matrix in compressed sparse row form times the full lowering
  (``caffe_cpu_sparse_mmcsr``): here ``torch.sparse.mm`` of a CSR tensor (MKL on the CPU, cuSPARSE on
  CUDA). It pays off only at very high elementwise sparsity, as the branch's README says.
* ``LOWERED_GEMM`` (the default) and the branch's own direct kernels (``DIRECT_SCONV``, ``DIRECT_DCONV``)
  are the dense convolution of :mod:`neocaffe.layers.conv`.

The results are the dense convolution's in another float32 summation order (dropped terms are exact
zeros). CCNMM computes densely where the squeezed GEMM cannot pay (``MAX_KEPT_FRACTION``,
``MIN_SPARSE_MACS``): the branch always squeezes, here the mode is a request for speed, not a kernel. As in the branch the sparsity is read from the weights, not from a file; the branch reads it
once, when weights are copied in (``Net::CopyTrainedLayersFrom`` -> ``WeightAlign``), so writes after
that go unseen there. Here it is read again for another weight tensor and after every write neocaffe
makes or hands out (``Layer.weights_changed``, through ``Net.weights_changed``): loading weights
(``Net.copy_from``), each solver update, a test net taking the trained weights (``Net.share_with``), and
pycaffe handing the weights out as NumPy arrays. Code that writes a weight tensor in place itself calls
``net.weights_changed()`` afterwards.

Only a forward that records nothing computes sparse (``torch.no_grad``, the lean inference path): the
branch stops on a backward through these modes ("Training in sparse format is not supported"), here a
recorded forward is the dense convolution and its usual backward. 4-D inputs (two spatial axes), as the
branch's ``WeightAlign`` requires; torch tracing, ``torch.compile`` and export see the dense convolution.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SparseConv", "sparse_conv", "MODE_NAMES"]

#: ConvolutionParameter.ConvMode numbers (proto/caffe.proto) -> the name this module computes by
MODE_NAMES = {1: "LOWERED_CSRMM", 2: "LOWERED_CCNMM"}
_PLAIN = (torch.Tensor, torch.nn.Parameter)
#: an ungrouped CCNMM keeps its dropped filters as zero rows of the GEMM while that costs at most this many
#: multiply-adds per call: two fewer PyTorch calls (zero-fill, row placement) than placing the kept rows
MAX_PADDED_ROW_MACS = 100_000
#: a batch-1 input with stride 1 across and at least this many output columns is lowered by copying runs
#: of output rows (one index per kept column and output row), not element by element: measured on one
#: core, 2.2x faster for LeNet's conv1 (24 columns), 1.7x for AlexNet's conv2 (27), slower for 13 columns
ROW_RUNS = 16
#: CCNMM computes densely (the layer's usual kernel, the same outputs) where it cannot pay: the squeezed
#: matrices keep more than this fraction of the weight matrix's multiply-adds, or ...
MAX_KEPT_FRACTION = 0.3
#: ... the whole convolution is under this many multiply-adds per call. Measured on one core (batch 1):
#: AlexNet's conv1 is 0.99x dense at 40% kept, 2.4x at 15%; conv3 1.75x at 40%; CIFAR-10's 5x5 conv2 0.8x
#: at 25%; LeNet's conv1 (0.29M) 2x slower than its im2col kernel at any sparsity
MIN_SPARSE_MACS = 500_000


@dataclass
class _Group:
    """One group's squeezed weight matrix: the kept filters (``rows``, indices into num_output) and
    either the kept columns (``cols``, into the group's C/group*kh*kw) with their dense weights ``w``
    (CCNMM) or the group's whole matrix as CSR ``w`` (CSRMM)."""

    rows: Tensor
    cols: Tensor | None
    w: Tensor
    full: Tensor | None = None  # CCNMM: the kept columns of every filter, dropped ones as zero rows


class SparseConv:
    """The ``conv_mode`` convolution of one Convolution layer (its owner): geometry fixed at setup, the
    squeezed weights derived per weight tensor (until ``forget``), the gather indices per input shape."""

    def __init__(self, mode: int, group: int, stride: tuple[int, ...], pad: tuple[int, ...],
                 dilation: tuple[int, ...]) -> None:
        self.mode = MODE_NAMES[mode]
        self.group, self.stride, self.pad, self.dilation = group, stride, pad, dilation
        self._weights_key: tuple[Any, ...] | None = None
        self._pays = False
        self._decided: tuple[Any, bool] = (None, False)  # (weights and input shape, sparse or not)
        self._groups: list[_Group] = []
        self._index: dict[tuple[int, ...], tuple[list[Tensor], tuple[int, int]]] = {}

    def forget(self) -> None:
        """The weights may have changed: derive everything again at the next call."""
        self._weights_key = None

    def applies(self, x: Tensor, w: Tensor, b: Tensor | None) -> bool:
        """True when this call computes sparse: a 4-D input, nothing recorded or traced, and (CCNMM) a
        squeezed GEMM small enough to pay (``MAX_KEPT_FRACTION``, ``MIN_SPARSE_MACS``). Decided once per
        weights (until ``forget``) and input shape."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return False
        if type(x) not in _PLAIN or type(w) not in _PLAIN or (b is not None and type(b) not in _PLAIN):
            return False  # fake, functional or other subclass tensors
        if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)):
            return False
        key = (w.data_ptr(), x.shape, self._weights_key is not None)
        if key == self._decided[0]:
            return self._decided[1]
        if x.dim() != 4:
            return False
        use = True
        if self.mode == "LOWERED_CCNMM":
            self._squeeze(w)
            ho, wo = self._out_hw(x, w)
            use = self._pays and w.numel() * x.shape[0] * ho * wo >= MIN_SPARSE_MACS
        self._decided = ((w.data_ptr(), x.shape, True), use)
        return use

    def __call__(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        """The convolution of ``x`` (N, C, H, W) by ``w`` (+ ``b``), computed from ``w``'s sparsity."""
        self._squeeze(w)
        if self.mode == "LOWERED_CCNMM":
            out, (ho, wo) = self._ccnmm(x, w, b)
        else:
            out, (ho, wo) = self._csrmm(x, w)
            if b is not None:
                out.add_(b.view(1, -1, 1))
        return out.view(x.shape[0], w.shape[0], ho, wo)

    # -- the squeezed weights (WeightAlign) -------------------------------------------------------------
    def _squeeze(self, w: Tensor) -> None:
        key = (w.data_ptr(), tuple(w.shape), w.dtype, w.device)
        if key == self._weights_key:
            return
        o_g = w.shape[0] // self.group
        groups = []
        for g in range(self.group):
            m = w.detach()[g * o_g:(g + 1) * o_g].reshape(o_g, -1)
            nz = m != 0
            rows = nz.any(1).nonzero().flatten()
            if self.mode == "LOWERED_CCNMM":
                cols = nz.any(0).nonzero().flatten()
                full = m.index_select(1, cols)
                groups.append(_Group(rows + g * o_g, cols, full.index_select(0, rows), full))
            else:
                with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
                    warnings.simplefilter("ignore", UserWarning)
                    groups.append(_Group(rows + g * o_g, None, m.to_sparse_csr()))
        self._groups, self._index, self._weights_key = groups, {}, key
        kept = sum(g.w.numel() for g in groups) if self.mode == "LOWERED_CCNMM" else w.numel()
        self._pays = kept <= MAX_KEPT_FRACTION * w.numel()

    def _out_hw(self, x: Tensor, w: Tensor) -> tuple[int, int]:
        return tuple((x.shape[2 + i] + 2 * self.pad[i] - self.dilation[i] * (w.shape[2 + i] - 1) - 1)  # type: ignore[return-value]
                     // self.stride[i] + 1 for i in range(2))

    # -- LOWERED_CCNMM ----------------------------------------------------------------------------------
    def _gather_index(self, x: Tensor, w: Tensor) -> tuple[list[Tensor], tuple[int, int], str]:
        """For inputs shaped like ``x``: per group, where each kept column's values lie in one (padded)
        input sample, the output size, and how they are gathered: ``"channels"`` (a 1x1 kernel, stride 1,
        no pad: a kept column is a whole input channel, the index holds channels), ``"runs"`` (``ROW_RUNS``:
        the index holds each (kept column, output row)'s first position) or ``"elements"`` (every position)."""
        key = tuple(x.shape)
        hit = self._index.get(key)
        if hit is not None:
            return hit
        (hp, wp), (kh, kw) = (x.shape[2] + 2 * self.pad[0], x.shape[3] + 2 * self.pad[1]), w.shape[2:]
        ho, wo = self._out_hw(x, w)
        c_g = x.shape[1] // self.group
        dev = x.device
        if (kh, kw) == (1, 1) and tuple(self.stride) == (1, 1) and not any(self.pad):
            index = [grp.cols.to(dev) + g * c_g for g, grp in enumerate(self._groups)]  # type: ignore[union-attr]
            self._index[key] = hit = (index, (ho, wo), "channels")
            return hit
        kind = "runs" if x.shape[0] == 1 and self.stride[1] == 1 and wo >= ROW_RUNS else "elements"
        oy = torch.arange(ho, device=dev) * self.stride[0] * wp
        where = oy if kind == "runs" else (oy[:, None] + torch.arange(wo, device=dev)[None, :] * self.stride[1]).flatten()
        index = []
        for g, grp in enumerate(self._groups):
            cols = grp.cols.to(dev)  # type: ignore[union-attr]
            c, i, j = cols // (kh * kw) + g * c_g, (cols // kw) % kh, cols % kw
            start = c * (hp * wp) + i * self.dilation[0] * wp + j * self.dilation[1]
            index.append((start[:, None] + where[None, :]).flatten())
        self._index[key] = hit = (index, (ho, wo), kind)
        return hit

    def _ccnmm(self, x: Tensor, w: Tensor, b: Tensor | None) -> tuple[Tensor, tuple[int, int]]:
        index, (ho, wo), kind = self._gather_index(x, w)
        n, o, hw = x.shape[0], w.shape[0], ho * wo
        xp = F.pad(x, (self.pad[1], self.pad[1], self.pad[0], self.pad[0])) if any(self.pad) else x
        flat = xp.reshape(n, -1) if kind != "channels" else x.reshape(n, x.shape[1], hw)
        if kind == "runs":  # every start position's next ``wo`` values: a row of the output per index (stride 1)
            flat = flat.as_strided((1, flat.shape[1] - wo + 1, wo), (flat.shape[1], 1, 1))
        grp = self._groups[0]
        if self.group == 1 and (o - grp.rows.numel()) * grp.w.shape[1] * hw * n <= MAX_PADDED_ROW_MACS:
            # few dropped filters: the GEMM with their zero rows (and the bias) costs less than placing rows
            cols = flat.index_select(1, index[0]).view(n, grp.w.shape[1], hw)
            if n == 1 and b is not None:
                return torch.addmm(b.view(-1, 1), grp.full, cols[0]).unsqueeze(0), (ho, wo)
            out = torch.matmul(grp.full, cols)
            return (out if b is None else out.add_(b.view(1, -1, 1))), (ho, wo)
        out = x.new_zeros(n, o, hw)
        for grp, idx in zip(self._groups, index):
            if grp.rows.numel() == 0:  # (then no column is kept either)
                continue  # the dropped filters' outputs stay 0
            out.index_copy_(1, grp.rows, torch.matmul(grp.w, flat.index_select(1, idx).view(n, grp.w.shape[1], hw)))
        return (out if b is None else out.add_(b.view(1, -1, 1))), (ho, wo)

    # -- LOWERED_CSRMM ----------------------------------------------------------------------------------
    def _csrmm(self, x: Tensor, w: Tensor) -> tuple[Tensor, tuple[int, int]]:
        ho, wo = self._out_hw(x, w)
        n, o, k_g = x.shape[0], w.shape[0], w[0].numel()
        cols = F.unfold(x, tuple(w.shape[2:]), self.dilation, self.pad, self.stride)  # (N, C*kh*kw, L)
        outs = []
        for g, grp in enumerate(self._groups):
            lowered = cols[:, g * k_g:(g + 1) * k_g].transpose(0, 1).reshape(k_g, n * ho * wo)
            outs.append(torch.sparse.mm(grp.w, lowered).view(-1, n, ho * wo))
        out = torch.cat(outs, 0) if len(outs) > 1 else outs[0]
        return out.transpose(0, 1).contiguous().view(n, o, ho * wo), (ho, wo)


def sparse_conv(conv_param: Any, group: int, stride: tuple[int, ...], pad: tuple[int, ...],
                dilation: tuple[int, ...], n_spatial: int) -> SparseConv | None:
    """The ``SparseConv`` that ``conv_param.conv_mode`` asks for, or None for the dense convolution
    (``LOWERED_GEMM``, the direct modes, or an input without two spatial axes)."""
    mode = int(conv_param.conv_mode)
    if mode not in MODE_NAMES or n_spatial != 2:
        return None
    return SparseConv(mode, group, stride, pad, dilation)

