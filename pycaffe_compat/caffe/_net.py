"""``caffe.Net``: pycaffe's Net over a neocaffe ``Net``."""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from itertools import zip_longest
from typing import Any, Iterator

import numpy as np
import torch

from neocaffe.export.modes import InferenceModes
from neocaffe.graph.net import Net as CoreNet
from neocaffe.io.prototxt import read_net_with_source
from neocaffe.solver.speed import SpeedModes

from caffe import _mode
from caffe._blob import Blob, HostMirrors, param_blob, write_array


class LayerView:
    """What pycaffe's ``net.layers[i]`` offers: ``type``, ``blobs``, and the module itself."""

    def __init__(self, layer: Any, mirrors: HostMirrors, exposed: Any = None) -> None:
        self.module = layer
        self.type = layer.type_name
        self.name = layer.name
        self.blobs = [param_blob(p, mirrors, exposed) for p in layer.blobs]

    def __repr__(self) -> str:
        return f"<caffe.Layer {self.name!r} ({self.type})>"


class Net:
    """pycaffe's Net: ``Net(prototxt, phase)``, ``Net(prototxt, weights, phase)`` or
    ``Net(prototxt, phase, weights=..., level=..., stages=...)``.

    neocaffe's opt-in inference modes (``neocaffe.export.modes``; off unless given here or set in the
    environment): ``fold_bn``, ``channels_last``, ``frozen``, ``threads``. They apply once the
    weights are loaded; with ``fold_bn`` the folded BatchNorm/Scale layers are not in the net. On CUDA
    the net computes in IEEE float32 (TF32 off) unless ``NEOCAFFE_PRECISION=tf32``."""

    def __init__(self, network_file: str, *args: Any, weights: str | None = None, level: int = 0,
                 stages: Any = (), phase: int | None = None, fold_bn: bool | None = None,
                 channels_last: bool | None = None, frozen: bool | None = None,
                 threads: int | None = None) -> None:
        rest = list(args)
        if rest and isinstance(rest[0], str):
            weights = rest.pop(0)
        if rest:
            phase = rest.pop(0)
        if phase is None:
            raise TypeError("caffe.Net(network_file, [weights,] phase): phase (caffe.TRAIN or caffe.TEST) is required")
        if rest:
            raise TypeError(f"caffe.Net: unexpected extra arguments {rest!r}")
        param, source = read_net_with_source(str(network_file))
        self._net = CoreNet(param, int(phase), level, list(stages), source=source,
                            device=_mode.current_device())
        if weights:
            self._net.copy_from(str(weights))
        modes = InferenceModes.resolve(fold_bn, channels_last, frozen, threads)
        if modes.any:
            self._net = modes.apply(self._net)
        if self._net.device.type == "cuda":  # IEEE float32 as Caffe unless NEOCAFFE_PRECISION=tf32 opts in
            self._net.tf32 = SpeedModes.resolve().precision == "tf32"
        self._init_views()

    @classmethod
    def from_core(cls, core: CoreNet, mirrors: HostMirrors | None = None) -> "Net":
        """A pycaffe Net over an existing core net (the solver's train and test nets). Nets that
        share weights must share ``mirrors``, so a write through one net's view is what the
        others read and compute with."""
        self = cls.__new__(cls)
        self._net = core
        self._init_views(mirrors)
        return self

    def _init_views(self, mirrors: HostMirrors | None = None) -> None:
        self._mirrors = mirrors if mirrors is not None else HostMirrors()
        core = self._net
        self._blob_index = {name: k for k, name in enumerate(core.blob_names)}  # _top_ids, _bottom_ids
        self.blobs: "OrderedDict[str, Blob]" = OrderedDict(
            (name, Blob(partial(core.state.hold_data, name), partial(core.state.hold_diff, name), self._mirrors,
                        self._reshaper(name) if name in core.inputs else None, partial(core.state.shape, name)))
            for name in core.blob_names
        )
        self.layers = [LayerView(l, self._mirrors, core.weights_changed) for l in core.layers]
        self.params: "OrderedDict[str, list[Blob]]" = OrderedDict(
            (lv.name, lv.blobs) for lv in self.layers if lv.blobs
        )
        self.layer_dict = OrderedDict((lv.name, lv) for lv in self.layers)
        self.top_names = OrderedDict((lp.param.name, list(lp.tops)) for lp in core.plan.layers)
        self.bottom_names = OrderedDict((lp.param.name, list(lp.bottoms)) for lp in core.plan.layers)
        self.blob_loss_weights = OrderedDict((n, core.blob_loss_weights.get(n, 0.0)) for n in core.blob_names)

    # -- blob access ----------------------------------------------------------------------------
    def _reshaper(self, name: str):
        def reshape(shape: tuple[int, ...]) -> None:
            self._mirrors.clear()
            core = self._net
            core.set_blob(name, torch.zeros(shape, device=core.device))

        return reshape

    @property
    def inputs(self) -> list[str]:
        return self._net.inputs

    @property
    def outputs(self) -> list[str]:
        return self._net.outputs

    @property
    def _layer_names(self) -> list[str]:
        return self._net.layer_names

    @property
    def _blob_names(self) -> list[str]:
        return self._net.blob_names

    def _top_ids(self, i: int) -> list[int]:
        """Indices (into ``_blob_names``) of layer ``i``'s tops (pycaffe's ``_top_ids``)."""
        return [self._blob_index[t] for t in self._net.plan.layers[i].tops]

    def _bottom_ids(self, i: int) -> list[int]:
        """Indices (into ``_blob_names``) of layer ``i``'s bottoms (pycaffe's ``_bottom_ids``)."""
        return [self._blob_index[b] for b in self._net.plan.layers[i].bottoms]

    # -- running --------------------------------------------------------------------------------
    def clear_param_diffs(self) -> None:
        """Zero every parameter diff (Caffe's Net::ClearParamDiffs)."""
        self._mirrors.push()
        self._net.clear_param_diffs()
        self._mirrors.device_wrote()

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Give the first layer, a MemoryData layer, the arrays to serve (pycaffe's
        set_input_arrays): float32 C-contiguous ``data`` N x C x H x W and ``labels`` (N,) or
        N x 1 x 1 x 1, N a multiple of its batch_size."""
        if not self.layers or self.layers[0].type != "MemoryData":
            raise TypeError("set_input_arrays may only be called if the first layer is a MemoryDataLayer")
        for what, arr in (("data", data), ("labels", labels)):
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or not arr.flags.c_contiguous:
                raise ValueError(f"{what} must be a C-contiguous float32 NumPy array; received "
                                 f"{type(arr).__name__} {getattr(arr, 'dtype', '')}")
        if labels.ndim == 1:
            labels = labels[:, np.newaxis, np.newaxis, np.newaxis]
        if data.shape[0] != labels.shape[0]:
            raise ValueError(f"data has {data.shape[0]} rows and labels {labels.shape[0]}; they must match")
        self._mirrors.push()
        self.layers[0].module.reset(data, labels)

    def reshape(self) -> None:
        """Propagate input shapes through the net (Caffe's Net::Reshape)."""
        self._mirrors.clear()
        self._net.reshape()

    def _batch_sized(self, name: str, value: Any, what: str) -> np.ndarray:
        """``value`` as an array, checked as pycaffe checks forward/backward keyword arrays."""
        if name not in self.blobs:
            raise KeyError(f"blob '{name}' is not in this net; blobs: {', '.join(self.blobs)}")
        arr = np.asarray(value)
        if not arr.ndim:
            return arr
        shape = self._net.state.shape(name)
        if shape and arr.shape[0] != shape[0]:
            raise ValueError(f"{what} is not batch sized: blob '{name}' has shape {shape}, received {arr.shape}")
        return arr

    def forward(self, blobs: list[str] | None = None, start: str | None = None, end: str | None = None,
                **kwargs: Any) -> dict[str, np.ndarray]:
        """Run the net (or layers ``start``..``end``); inputs may be given as keyword arrays.
        Returns the output blobs (the ``end`` layer's tops if given) plus ``blobs``."""
        self._mirrors.push()  # first: a host copy of an input read earlier must not overwrite it
        for name, value in kwargs.items():
            view = self.blobs[name].cpu_array() if name in self.blobs else None
            if (view is not None and type(value) is np.ndarray and value.shape == view.shape
                    and value.dtype == view.dtype):
                np.copyto(view, value)  # the usual case on the CPU: an input of the blob's shape
                continue
            arr = self._batch_sized(name, value, "Input")
            write_array(self._net.state.hold_data(name), arr)
        try:
            self._net.forward(start=start, end=end)
        finally:
            self._mirrors.device_wrote()
        outs = self.top_names[end] if end is not None else self.outputs
        got = self.blobs
        return {name: got[name].data for name in (list(outs) + list(blobs) if blobs else outs)}

    def backward(self, diffs: list[str] | None = None, start: str | None = None, end: str | None = None,
                 **kwargs: Any) -> dict[str, np.ndarray]:
        """Backpropagate from the output diffs (or ``start`` layer's tops); keyword arrays set
        output diffs. Returns the inputs' diffs (the ``end`` layer's bottoms if given) plus ``diffs``."""
        self._mirrors.push()  # first: a host copy of a diff read earlier must not overwrite the new one
        core = self._net
        for name, value in kwargs.items():
            write_array(core.state.hold_diff(name), self._batch_sized(name, value, "Diff"))
        try:
            if not core.backward_ready(start, end):
                # Caffe's Backward reads what the last Forward left; autograd needs that forward's
                # graph, so a backward with no forward before it runs one first
                core.forward()
            core.backward(start=start, end=end)
        finally:
            self._mirrors.device_wrote()
        ins = self.bottom_names[end] if end is not None else self.inputs
        return {name: self.blobs[name].diff for name in list(ins) + list(diffs or [])}

    def _batches(self, arrays: dict[str, Any]) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """Split keyword arrays into net-sized batches (pycaffe's _batch): (chunk, padding), the
        last chunk padded with zeros to the batch size."""
        if not arrays:
            return
        n = len(next(iter(arrays.values())))
        batch = self.blobs[next(iter(arrays))].shape[0]
        for i in range(0, n, batch):
            chunk = {k: np.asarray(v[i:i + batch]) for k, v in arrays.items()}
            pad = batch - len(next(iter(chunk.values())))
            if pad:
                chunk = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in chunk.items()}
            yield chunk, pad

    def forward_all(self, blobs: list[str] | None = None, **kwargs: Any) -> dict[str, np.ndarray]:
        """Forward over inputs of any length, batch by batch (pycaffe's forward_all)."""
        if not kwargs:  # BVLC's forward_all sizes its result by the first input array (and fails without one)
            raise ValueError("forward_all needs the inputs as keyword arrays (forward_all(data=...)); "
                             "for one batch from the net's own data layers call forward()")
        outs: dict[str, list[np.ndarray]] = {o: [] for o in list(self.outputs) + list(blobs or [])}
        for chunk, pad in self._batches(kwargs):
            self._collect(outs, self.forward(blobs=blobs, **chunk), pad)
        return self._joined(outs)

    def forward_backward_all(self, blobs: list[str] | None = None, diffs: list[str] | None = None,
                             **kwargs: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Forward and backward over inputs (and output diffs) of any length, batch by batch
        (pycaffe's forward_backward_all): returns (outputs plus ``blobs``, input diffs plus ``diffs``)."""
        if not kwargs:  # as forward_all
            raise ValueError("forward_backward_all needs input and/or output diff keyword arrays; "
                             "for one batch from the net's own data layers call forward() and backward()")
        fwd = {k: v for k, v in kwargs.items() if k in self.inputs}
        bwd = {k: v for k, v in kwargs.items() if k in self.outputs}
        unknown = set(kwargs) - set(fwd) - set(bwd)
        if unknown:
            raise KeyError(f"{sorted(unknown)} are neither inputs {self.inputs} nor outputs {self.outputs}")
        outs: dict[str, list[np.ndarray]] = {o: [] for o in list(self.outputs) + list(blobs or [])}
        grads: dict[str, list[np.ndarray]] = {d: [] for d in list(self.inputs) + list(diffs or [])}
        # one batch of each at a time; without inputs (or diffs) the net's own are used (pycaffe's fillvalue)
        for (fchunk, fpad), (bchunk, bpad) in zip_longest(self._batches(fwd), self._batches(bwd), fillvalue=({}, 0)):
            pad = max(fpad, bpad)
            self._collect(outs, self.forward(blobs=blobs, **fchunk), pad)
            self._collect(grads, self.backward(diffs=diffs, **bchunk), pad)
        return self._joined(outs), self._joined(grads)

    @staticmethod
    def _collect(parts: dict[str, list[np.ndarray]], got: dict[str, np.ndarray], pad: int) -> None:
        """Keep one batch's rows (its padding dropped) of each array in ``got``; a copy, as the next
        batch may write the same blob memory."""
        for name, v in got.items():
            parts[name].append(v[: len(v) - pad].copy())

    @staticmethod
    def _joined(parts: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
        """The batches of each array as one array (pycaffe's ``np.asarray`` of the rows)."""
        return {k: (v[0] if len(v) == 1 else np.concatenate(v)) if v else np.asarray(v) for k, v in parts.items()}

    # -- weights --------------------------------------------------------------------------------
    def copy_from(self, path: str) -> None:
        """Load weights by layer name from a .caffemodel or .caffemodel.h5 (Caffe's CopyTrainedLayersFrom)."""
        self._mirrors.push()
        try:
            self._net.copy_from(str(path))
        finally:  # written on the device: host copies taken before refresh at their next access
            self._mirrors.device_wrote()

    def share_with(self, other: "Net") -> None:
        """Use ``other``'s parameter blobs for layers of the same name (Caffe's ShareTrainedLayersWith)."""
        self._mirrors.push()  # the views are rebuilt below: pending NumPy writes reach the device first
        self._net.share_with(other._net)
        self._init_views(other._mirrors)  # nets sharing weights share host copies (see from_core)

    def save(self, path: str) -> None:
        """Write the weights as a binary .caffemodel."""
        self._mirrors.push()
        self._save(str(path), hdf5=False)

    def save_hdf5(self, path: str) -> None:
        """Write the weights in Caffe's HDF5 layout."""
        self._mirrors.push()
        self._save(str(path), hdf5=True)

    def _save(self, path: str, hdf5: bool) -> None:
        """Caffe's Net::ToProto / ToHDF5 without diffs: the net's layers with their blobs."""
        from neocaffe.io.weights import save_weights
        from neocaffe.proto import caffe_pb2

        net_param = None
        if not hdf5:
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(self._net.net_param)
        save_weights(path, self._net.to_weights(), hdf5=hdf5, net_param=net_param)

    def load_hdf5(self, path: str) -> None:
        """Load weights from a .caffemodel.h5."""
        self.copy_from(path)
