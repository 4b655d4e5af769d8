"""Check an export against neocaffe: the same random inputs through both, the error of every output
as a fraction of its largest magnitude (the bar of the export tests: 1e-5)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

TOLERANCE = 1e-5


def random_inputs(net: Any, seed: int = 0, batch: int | None = None) -> dict[str, np.ndarray]:
    """One float32 array per net input, uniform in [-1, 1), of the blob's shape (axis 0 ``batch``)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in net.inputs:
        shape = tuple(net.blob_shapes[name])
        if batch is not None and shape:
            shape = (batch,) + shape[1:]
        out[name] = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    return out


def neocaffe_outputs(net: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``net``'s forward on ``inputs`` (reshaped to their shapes): output blob -> host float32 array."""
    import torch

    for name, arr in inputs.items():
        net.set_blob(name, torch.from_numpy(np.ascontiguousarray(arr)))
    net.reshape()
    with torch.no_grad():
        net.forward()
    return {o: net.blob_data[o].detach().cpu().float().numpy() for o in net.outputs}


def scaled_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref| over the finite reference values; inf when shapes differ or a NaN
    (or infinity) is not matched by the same value at the same place."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return float("inf")
    finite = np.isfinite(ref)
    same_special = np.array_equal(np.isnan(got), np.isnan(ref)) and np.array_equal(got[np.isinf(ref)], ref[np.isinf(ref)])
    if not same_special or not np.isfinite(got[finite]).all():
        return float("inf")
    if not finite.any():
        return 0.0
    scale = float(np.abs(ref[finite]).max())
    return float(np.abs(got[finite] - ref[finite]).max()) / (scale if scale > 0 else 1.0)


def onnxruntime_outputs(model: Any, inputs: Mapping[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """Run an ONNX model (ModelProto or path) on onnxruntime's CPU provider; outputs in graph order
    are matched to ``names`` (the net's output blobs)."""
    import onnxruntime as ort

    source = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    feed = {i.name: np.ascontiguousarray(inputs[i.name]) for i in sess.get_inputs()}
    return dict(zip(names, sess.run(None, feed)))


def check_onnx(model: Any, net: Any, inputs: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    """Scaled error of every output of ``model`` (run by onnxruntime) against ``net``'s forward."""
    inputs = dict(inputs) if inputs is not None else random_inputs(net)
    ref = neocaffe_outputs(net, inputs)
    got = onnxruntime_outputs(model, inputs, list(net.outputs))
    return {o: scaled_error(got[o], ref[o]) for o in ref}
