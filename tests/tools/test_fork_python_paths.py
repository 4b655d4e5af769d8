"""The fork's ``python/*.py`` tools at their paths, with the fork's arguments, as its train_script*.sh call
them (``python python/plot_train_info.py --traininfo ...``): each runs ours and writes what the fork writes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neocaffe.io.prototxt import read_net
from neocaffe.io.weights import LayerWeights, load_weights, save_weights
from neocaffe.tools import group_split
from tests.conftest import REPO
from tests.tools.test_group_split import MODELS, SPLIT, _grouped

NET = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "s1" type: "Sparsify" bottom: "conv1" top: "conv1" sparsify_param { coef: 0 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip" inner_product_param { num_output: 4 } }
"""


def _script(name: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, f"python/{name}.py", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


@pytest.fixture
def small(tmp_path) -> tuple[Path, Path, list[LayerWeights]]:
    rng = np.random.default_rng(0)
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    layers = [LayerWeights("conv1", "Convolution", [rng.standard_normal((6, 3, 3, 3)).astype(np.float32),
                                                    rng.standard_normal(6).astype(np.float32)]),
              LayerWeights("ip", "InnerProduct", [rng.standard_normal((4, 216)).astype(np.float32),
                                                  rng.standard_normal(4).astype(np.float32)])]
    weights = tmp_path / "w.caffemodel"
    save_weights(weights, layers)
    return net, weights, layers


def _same(a: list[LayerWeights], b: list[LayerWeights]) -> None:
    assert [lw.name for lw in a if lw.blobs] == [lw.name for lw in b if lw.blobs]
    for x, y in zip([lw for lw in a if lw.blobs], [lw for lw in b if lw.blobs]):
        for p, q in zip(x.blobs, y.blobs, strict=True):
            np.testing.assert_array_equal(p, q)


def test_caffemodel_convertor_fork_form(small):
    net, weights, layers = small
    _script("caffemodel_convertor", "--network", str(net), "--caffemodel", str(weights))
    h5 = Path(f"{weights}.h5")
    _same(load_weights(h5), layers)
    weights.unlink()
    _script("caffemodel_convertor", "--network", str(net), "--caffemodel", str(h5))   # back: W.caffemodel
    _same(load_weights(weights), layers)
    bad = subprocess.run([sys.executable, "python/caffemodel_convertor.py", "--network", str(net), "--caffemodel",
                          str(net)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "File with wrong suffix" in bad.stderr


def test_set_layer_param_and_nn_decomposer(small, tmp_path):
    net, weights, _ = small
    _script("set_layer_param", "--net_template", str(net), "--layer_type", "Sparsify", "--param_value", "0.002")
    generated = read_net(str(tmp_path / "generated.prototxt"), upgrade=False)
    assert [round(l.sparsify_param.coef, 9) for l in generated.layer if l.type == "Sparsify"] == [0.002]
    _script("nn_decomposer", "--prototxt", str(net), "--caffemodel", str(weights), "--ranks", "2")
    low = read_net(f"{net}.lowrank.prototxt", upgrade=False)
    assert [l.name for l in low.layer if l.type == "Convolution"] == ["conv1_lowrank", "conv1_linear"]
    got = {lw.name: lw for lw in load_weights(f"{weights}.lowrank.caffemodel.h5")}
    assert got["conv1_lowrank"].blobs[0].shape == (2, 3, 3, 3) and got["conv1_linear"].blobs[0].shape == (6, 2, 1, 1)


def test_plot_train_info(tmp_path):
    pytest.importorskip("matplotlib")
    info = tmp_path / "run" / "train.info"
    info.parent.mkdir()
    info.write_text("".join(f"I1206 00:00:0{i}.000000 1 solver.py:1]     Test net output #0: accuracy = {a}\n"
                            for i, a in enumerate((0.5, 0.9, 0.99))))
    run = _script("plot_train_info", "--traininfo", str(info))
    assert (info.parent / "accu.png").stat().st_size > 1000
    assert "0.5" in run.stdout


def test_group_spitter_and_merger_fork_forms(tmp_path, capsys):
    """In process (AlexNet's weights are large), then the scripts' wiring through --help."""
    grouped = _grouped(np.random.default_rng(0))
    weights = tmp_path / "alexnet.caffemodel"
    save_weights(weights, grouped)
    args = ["--original_alexnet", str(MODELS / "train_val.prototxt"),
            "--split_alexnet", str(MODELS / "train_val_split.prototxt")]
    assert group_split.main_fork_split([*args, "--caffemodel", str(weights)]) == 0
    split_path = Path(f"{weights}.split.caffemodel.h5")
    assert f"Saved as {split_path}" in capsys.readouterr().out
    split = {lw.name: lw for lw in load_weights(split_path)}
    assert all(split[n].blobs[0].shape == s for n, s in SPLIT.items())
    assert group_split.main_fork_merge([*args, "--caffemodel", str(split_path)]) == 0
    _same(load_weights(f"{split_path}.merge.caffemodel.h5"), grouped)
    for name in ("group_spitter", "group_merger"):
        assert "--original_alexnet" in _script(name, "--help").stdout
