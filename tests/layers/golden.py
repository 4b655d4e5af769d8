"""Run one real-Caffe layer case (../shared/fixtures/layers) through our Net."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net

# Multiply-accumulate layers sum in another order than OpenBLAS: compare relative to the array's
# largest magnitude (fixtures/layers/README.md).
MAC_TYPES = {"Convolution", "Deconvolution", "InnerProduct", "Embed", "LSTM", "RNN", "SPP", "Im2col"}


# Caffe's HingeLoss keeps its margins in bottom 0's diff between Forward and Backward; the fixture
# generator zeroed every blob diff in between, so its recorded bwd/x is all zeros, which no real
# training run (ForwardBackward never clears blob diffs) sees. Our layer gives the margin gradient,
# checked against NumPy in tests/layers/test_loss_metrics_utility.py.
GENERATOR_ARTIFACTS = {"x_hinge_l1": {"x"}, "x_hinge_l2": {"x"}}


def load_cases(folder: Path) -> list[dict]:
    return json.loads((folder / "cases.json").read_text())


def _close(name: str, mine: np.ndarray, ref: np.ndarray, rel: float) -> None:
    assert mine.shape == ref.shape, f"{name}: shape {mine.shape} != Caffe's {ref.shape}"
    nan_ref, nan_mine = np.isnan(ref), np.isnan(mine)
    assert np.array_equal(nan_ref, nan_mine), f"{name}: NaN at {np.argwhere(nan_ref != nan_mine)[:5].tolist()}"
    finite = ~nan_ref
    scale = float(np.max(np.abs(ref[finite]))) if finite.any() else 0.0
    err = np.where(nan_ref, 0.0, np.abs(np.where(nan_mine, 0.0, mine).astype(np.float64) - np.where(nan_ref, 0.0, ref).astype(np.float64)))
    worst = float(np.max(err)) if err.size else 0.0
    assert worst <= rel * max(scale, 1e-30) + 1e-7, (
        f"{name}: max |diff| {worst:.3g} > {rel:g} x max|Caffe| {scale:.3g}"
    )


def run_case(folder: Path, case: dict, device: str = "cpu") -> None:
    name = case["name"]
    z = np.load(folder / f"{name}.npz")
    phase = 0 if case["phase"] == "TRAIN" else 1
    param = read_net(str(folder / f"{name}.prototxt"))
    net = Net(param, phase, source=f"{name}.prototxt", device=device)
    for key in z.files:
        if key.startswith("param/"):
            _, layer, idx = key.split("/")
            with torch.no_grad():
                net.layer(layer).blobs[int(idx)].copy_(torch.from_numpy(z[key]))
    for key in z.files:
        if key.startswith("input/"):
            net.set_blob(key[6:], torch.from_numpy(z[key]))
    types = set(case["layer_types"])
    rel = 1e-5 if types & MAC_TYPES else 2e-6
    net.forward()
    dropout = case.get("dropout_check")
    for key in z.files:
        if key.startswith("fwd/"):
            blob = key[4:]
            mine = net.blob_data[blob].detach().cpu().numpy()
            if dropout and blob in case["outputs"]:
                continue
            _close(f"{name} fwd/{blob}", mine, z[key], rel)
    for key in z.files:
        if key.startswith("param_fwd/"):
            _, layer, idx = key.split("/")
            _close(f"{name} {key}", net.layer(layer).blobs[int(idx)].detach().cpu().numpy(), z[key], rel)
    if not case.get("backward", True):
        return
    diffs = {k[9:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("top_diff/")}
    loss_tops = {t for lp, lws in zip(net.plan.layers, net.loss_weights) for t, w in zip(lp.tops, lws) if w}
    net.clear_param_diffs()
    net.backward({k: v for k, v in diffs.items() if k not in loss_tops})
    if dropout:
        check_dropout(net, case, z)
        return
    for key in z.files:
        if key.startswith("bwd/"):
            blob = key[4:]
            if blob in loss_tops or blob in GENERATOR_ARTIFACTS.get(name, ()):
                continue
            _close(f"{name} bwd/{blob}", net.blob_diff(blob).detach().cpu().numpy(), z[key], rel)
    for key in z.files:
        if key.startswith("param_diff/"):
            _, layer, idx = key.split("/")
            g = net.layer(layer).blobs[int(idx)].grad
            mine = np.zeros_like(z[key]) if g is None else g.detach().cpu().numpy()
            _close(f"{name} {key}", mine, z[key], rel)


def check_dropout(net: Net, case: dict, z) -> None:
    """Caffe's Dropout mask cannot be reproduced; check what does not depend on it."""
    x = z["input/x"]
    out = case["outputs"][0]
    y = net.blob_data[out].detach().cpu().numpy()
    p = np.float32(net.layer(net.layer_names[-1]).param.dropout_param.dropout_ratio)
    scale = np.float32(1.0 / (1.0 - np.float64(p)))
    assert scale == np.float32(case["dropout_check"]["scale"])
    kept = y != 0
    np.testing.assert_array_equal(y[kept], (x * scale)[kept])
    frac = kept.mean()
    assert abs(frac - (1 - float(p))) < 0.1, f"keep fraction {frac} far from {1 - float(p)}"
    dx = net.blob_diff("x").detach().cpu().numpy()
    td = z[f"top_diff/{out}"]
    np.testing.assert_array_equal(dx[kept], (td * scale)[kept])
    assert np.all(dx[~kept] == 0)
