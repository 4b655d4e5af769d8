"""benchmarks/bench_layers.py's code path on a tiny net, one iteration (timing values are never tested)."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from neocaffe.graph.net import Net
from neocaffe.graph.timing import output_diffs, timed_pass
from neocaffe.io.prototxt import parse_text
from neocaffe.layers.base import TRAIN
from neocaffe.proto import caffe_pb2
from tests.conftest import REPO, shared_path

TINY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc1" type: "InnerProduct" bottom: "pool1" top: "fc1" inner_product_param { num_output: 5 } }
layer { name: "drop1" type: "Dropout" bottom: "fc1" top: "fc1" }
layer { name: "prob" type: "Softmax" bottom: "fc1" top: "prob" }
"""


def _bench():
    spec = importlib.util.spec_from_file_location("bench_layers", REPO / "benchmarks" / "bench_layers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny_param():
    return parse_text(TINY, caffe_pb2.NetParameter(), "tiny.prototxt")


def test_run_benchmark_on_a_tiny_net():
    bench = _bench()
    net = bench.build_net(_tiny_param(), "cpu", TRAIN)
    result = bench.run_benchmark(net, iterations=1, warmup=0, log=lambda *_: None)
    names = [lay["name"] for lay in result["layers"]]
    assert names == net.layer_names
    assert result["top_diffs"] == ["prob"]
    for lay in result["layers"]:
        for key in ("forward_ms", "backward_ms", "forward_ms_median", "backward_ms_median"):
            assert math.isfinite(lay[key]) and lay[key] >= 0
    by_name = {lay["name"]: lay for lay in result["layers"]}
    # every layer whose top needs a gradient got its own backward mark, in-place ones included
    for name in ("conv1", "relu1", "norm1", "pool1", "fc1", "drop1", "prob"):
        assert by_name[name]["backward_ms"] > 0, name
    assert by_name["data"]["backward_ms"] == 0
    for part in ("per_layer", "end_to_end"):
        assert all(math.isfinite(v) for k, v in result[part].items() if not k.endswith("_all"))


def test_timed_pass_reaches_every_parameter():
    net = Net(_tiny_param(), TRAIN, keep_blob_diffs=False)
    _bench().fill_net(net)
    net.forward()
    diffs = output_diffs(net, torch.Generator().manual_seed(0))
    net.clear_param_diffs()
    p = timed_pass(net, diffs)
    assert len(p.forward) == len(p.backward) == len(net.layers)
    assert p.forward_total >= 0 and p.backward_total >= 0
    for info in net.learnable:
        assert info.param.grad is not None and float(info.param.grad.abs().sum()) > 0


def test_main_writes_the_result_json(tmp_path, capsys):
    bench = _bench()
    model = tmp_path / "tiny.prototxt"
    model.write_text(TINY)
    out = tmp_path / "r.json"
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--device", "cpu", "--iterations", "1", "--warmup", "0", "--threads", "1",
                           "--no-allocator-variants", "--model", str(model), "--caffe-log", str(tmp_path / "none.log"), "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    info = json.loads(out.read_text())
    assert info["device_type"] == "cpu" and info["device"] and info["torch"] == torch.__version__
    assert info["threads"] == 1 and info["batch"] == 2 and info["phase"] == "TRAIN"
    assert info["caffe_reference"] is None and info["ratio"] == {}
    assert len(info["layers"]) == 8
    text = capsys.readouterr().out
    assert "     conv1\tforward: " in text and "Average Forward-Backward: " in text


def test_parse_the_real_caffe_time_log():
    log = shared_path("fixtures", "caffenet", "caffe_time_deploy_b2.log")
    ref = _bench().parse_caffe_time_log(Path(log))
    assert ref["forward_ms"] == pytest.approx(96.5804)
    assert ref["backward_ms"] == pytest.approx(106.479)
    assert ref["forward_backward_ms"] == pytest.approx(203.2)
    assert len(ref["iteration_ms"]) == 10
    assert ref["layers"]["fc6"] == {"forward_ms": pytest.approx(19.3245), "backward_ms": pytest.approx(31.5034)}
    assert len(ref["layers"]) == 24
