"""Shared by the export tests: fixture nets with their Caffe parameters, and the ONNX comparison."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

TOLERANCE = 1e-5  # of each output's largest magnitude (the bar)
#: layer types that exist only for training: a case holding one is not a deploy-time case
TRAINING = {"SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "EuclideanLoss", "HingeLoss", "InfogainLoss",
            "MultinomialLogisticLoss", "ContrastiveLoss", "Accuracy"}


def deploy_cases(folder: Path) -> list[dict]:
    """The fixture cases a deployed net could hold: built by Caffe, TEST phase, no loss or accuracy."""
    cases = json.loads((folder / "cases.json").read_text())
    return [c for c in cases if c["status"] == "ok" and c["phase"] == "TEST" and not set(c["layer_types"]) & TRAINING]


def fixture_net(folder: Path, name: str) -> tuple[Any, dict[str, np.ndarray]]:
    """The case's net (TEST phase) with Caffe's parameter blobs, and its recorded inputs."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    z = np.load(folder / f"{name}.npz")
    net = Net(read_net(str(folder / f"{name}.prototxt")), 1, source=f"{name}.prototxt")
    with torch.no_grad():
        for key in z.files:
            if key.startswith("param/"):
                _, layer, idx = key.split("/")
                net.layer(layer).blobs[int(idx)].copy_(torch.from_numpy(z[key]))
    return net, {k[len("input/"):]: z[k] for k in z.files if k.startswith("input/")}


def onnx_errors(net: Any, inputs: dict[str, np.ndarray], **export_kw: Any) -> dict[str, float]:
    """Export ``net`` to ONNX, run it on onnxruntime and neocaffe: scaled error per output."""
    pytest.importorskip("onnxruntime")
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import check_onnx

    model = export_onnx(net, **export_kw)
    return check_onnx(model, net, inputs)


def cuda_forward(net: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``net`` moved to CUDA and run on ``inputs``: its outputs as float32 host arrays (the CUDA checks compare
    them with the ONNX model exported from the CPU net, run by onnxruntime on the CPU)."""
    net.to(torch.device("cuda"))
    for k, v in inputs.items():
        net.set_blob(k, torch.from_numpy(v).cuda())
    net.reshape()
    with torch.no_grad():
        net.forward()
    return {k: net.blob_data[k].float().cpu().numpy() for k in net.outputs}
