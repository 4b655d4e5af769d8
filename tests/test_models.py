"""models/: every model folder's readme front matter (download_model_binary's), and its prototxts: nets
and solvers parse, and each deploy net builds and runs a forward at batch 1 with random weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net, read_solver
from neocaffe.layers.base import TEST
from neocaffe.tools.download_model_binary import front_matter
from tests.conftest import REPO

MODELS = sorted(p for p in (REPO / "models").iterdir() if (p / "readme.md").exists())


def test_the_model_folders():
    assert {p.name for p in MODELS} >= {"bvlc_alexnet", "bvlc_reference_caffenet", "bvlc_googlenet",
                                         "bvlc_reference_rcnn_ilsvrc13", "finetune_flickr_style"}


@pytest.mark.parametrize("folder", MODELS, ids=lambda p: p.name)
def test_front_matter_and_prototxts(folder: Path):
    meta = front_matter(str(folder))
    assert meta["caffemodel"].endswith(".caffemodel") and len(meta["sha1"]) == 40
    assert meta["caffemodel_url"].startswith("http://dl.caffe.berkeleyvision.org/")
    for path in sorted(folder.glob("*.prototxt")):
        if "solver" in path.name:
            assert read_solver(str(path)).max_iter > 0, path      # templates get base_lr from their scripts
        else:
            assert len(read_net(str(path)).layer) > 5, path


@pytest.mark.parametrize("folder", MODELS, ids=lambda p: p.name)
def test_deploy_net_runs(folder: Path):
    net = Net(read_net(str(folder / "deploy.prototxt")), TEST)
    name = net.inputs[0]
    shape = (1, *net.blob_shapes[name][1:])
    torch.manual_seed(0)
    with torch.no_grad():
        net.set_blob(name, torch.zeros(shape))
        net.reshape()
        net.forward({name: torch.rand(shape) * 255})
    prob = net.blob(net.outputs[0]).numpy().reshape(1, -1)
    assert np.isfinite(prob).all() and prob.shape[1] in (20, 200, 1000)
    if "rcnn" not in folder.name:                                       # R-CNN's fc-rcnn has no softmax
        assert prob.sum() == pytest.approx(1.0, abs=1e-4)
