"""AlexNet/CaffeNet, grouped (deploy) and split nets, end to end against real Caffe: every blob,
every blob diff and every parameter diff (../shared/fixtures/caffenet)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from tests.conftest import shared_path

TAGS = ["deploy_seed1_b2", "split_seed1_b2"]

# Max-pool near-ties. Where the two largest values of a MAX window differ by a few float32 ulps, Caffe's
# argmax depends on the rounding of its own forward (OpenBLAS's sgemm order, its running-sum LRN), which no
# reimplementation reproduces bit for bit. The split fixture has exactly one such window that matters:
# pool2_group1, image 0, channel 58, output (0, 5): norm2_group1 at rows 0..2, cols 10..12 holds 94.18332 at
# (0, 10) and 94.18339 at (1, 11) (9 ulps apart). Ours picks (1, 11), Caffe (0, 10); every diff below it
# (conv2_group1 bias 57/58, pool1_group1, conv1_group1) follows from that choice. The test asserts the window
# is such a near-tie, routes its gradient as Caffe did, and then holds every key to the strict bounds.
# (blob, image, channel, (row, col) we pick, (row, col) Caffe picked)
NEAR_TIES = {"split_seed1_b2": [("norm2_group1", 0, 58, (1, 11), (0, 10))]}
NEAR_TIE_RTOL = 2e-6  # relative gap that counts as a float-rounding tie (~16 ulps)


def _recipe_weights(net: Net, meta: dict) -> None:
    """The fixture's deterministic weights (README 'Weights: deterministic recipe')."""
    for item in meta["weight_recipe"]:
        rng = np.random.default_rng(item["rng_seed"])
        shape = tuple(item["shape"])
        value = (rng.standard_normal(shape) * item["std"]).astype(np.float32)
        with torch.no_grad():
            net.layer(item["layer"]).blobs[item["blob"]].copy_(torch.from_numpy(value))


def _check_summary(prefix: str, arr: np.ndarray, z, rtol_abs_sum: float, worst: list) -> None:
    arr = arr.astype(np.float32)
    assert tuple(arr.shape) == tuple(z[f"{prefix}/shape"]), f"{prefix}: shape {arr.shape}"
    a64 = arr.astype(np.float64)
    abs_sum_ref = float(z[f"{prefix}/abs_sum"])
    abs_sum = float(np.abs(a64).sum())
    scale = max(abs_sum_ref, 1e-30)
    assert abs(abs_sum - abs_sum_ref) <= rtol_abs_sum * scale, f"{prefix}: abs_sum {abs_sum} vs Caffe {abs_sum_ref}"
    assert abs(float(a64.sum()) - float(z[f"{prefix}/sum"])) <= 1e-4 * scale + 1e-6, f"{prefix}: sum"
    flat = arr.reshape(-1)
    big = float(np.max(np.abs(flat))) if flat.size else 0.0
    for key, mine in ((f"{prefix}/first64", flat[: len(z[f"{prefix}/first64"])]),
                      (f"{prefix}/at_idx", flat[z[f"{prefix}/idx"]] if f"{prefix}/idx" in z.files else None),
                      (f"{prefix}/full", arr if f"{prefix}/full" in z.files else None)):
        if mine is None or key not in z.files:
            continue
        ref = z[key]
        err = float(np.max(np.abs(mine.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
        worst.append((err / max(big, 1e-30), key))
        assert err <= 1e-5 * big + 1e-7, f"{key}: max |diff| {err:.3g} vs max|x| {big:.3g}"


def _route_near_ties(net: Net, tag: str) -> None:
    """Assert each listed window is a float-rounding near-tie, then send its gradient where Caffe did."""
    for blob, n, c, ours, caffes in NEAR_TIES.get(tag, []):
        x = net.blob_data[blob]
        a, b = float(x[n, c][ours]), float(x[n, c][caffes])
        assert abs(a - b) <= NEAR_TIE_RTOL * abs(a), f"{blob}[{n},{c}]: {a} vs {b} is no near-tie"
        if a < b or (a == b and caffes < ours):
            continue  # this machine's rounding already picks Caffe's element (first of equals, as Caffe)

        def hook(g: torch.Tensor, n=n, c=c, ours=ours, caffes=caffes) -> torch.Tensor:
            g = g.clone()
            g[n, c][caffes] += g[n, c][ours]
            g[n, c][ours] = 0
            return g

        recorded = net.recorded(blob)  # blob_data holds the published value; the hook goes on the graph's
        assert recorded is not None, f"{blob}: the forward recorded no autograd history to route"
        recorded.register_hook(hook)


@pytest.mark.parametrize("tag", TAGS)
def test_caffenet_matches_caffe(tag):
    folder = shared_path("fixtures", "caffenet")
    meta = json.loads((folder / f"{tag}.json").read_text())
    z = np.load(folder / f"{tag}.npz")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    net = Net(read_net(str(folder / f"{tag}.prototxt")), 1, source=f"{tag}.prototxt")
    assert net.layer_names == meta["layer_names"]
    _recipe_weights(net, meta)
    net.set_blob("data", torch.from_numpy(z["input/data"]))
    net.set_blob("label", torch.from_numpy(z["input/label"]))
    worst: list = []
    for layer, blobs in net.params_by_layer().items():
        for j, p in enumerate(blobs):
            _check_summary(f"param/{layer}/{j}", p.detach().numpy(), z, 1e-6, worst)
    loss = float(net.forward())
    assert math.isclose(loss, meta["loss"], rel_tol=1e-5), f"loss {loss} vs Caffe {meta['loss']}"
    for key in z.files:
        if key.startswith("fwd/") and key.endswith("/shape"):
            blob = key[4:-6]
            if blob in ("loss", "accuracy"):
                continue
            _check_summary(f"fwd/{blob}", net.blob_data[blob].detach().numpy(), z, 1e-4, worst)
    if "accuracy" in meta and meta["accuracy"] is not None:
        assert float(net.blob_data["accuracy"]) == pytest.approx(meta["accuracy"])
    _route_near_ties(net, tag)
    net.clear_param_diffs()
    net.backward()
    for key in z.files:
        if key.startswith("bwd/") and key.endswith("/shape"):
            blob = key[4:-6]
            if blob == "loss":
                continue
            _check_summary(f"bwd/{blob}", net.blob_diff(blob).detach().numpy(), z, 1e-4, worst)
    for layer, blobs in net.params_by_layer().items():
        for j, p in enumerate(blobs):
            _check_summary(f"param_diff/{layer}/{j}", p.grad.detach().numpy(), z, 1e-4, worst)
