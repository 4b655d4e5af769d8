"""benchmarks/run_all.py: the plain-PyTorch AlexNet it compares against has our CaffeNet's shapes, the
Data->Input rewrite builds, parts merge into one JSON, and modes that cannot run say why."""
from __future__ import annotations

import sys

import pytest
import torch

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
run_all = pytest.importorskip("run_all")


def test_torch_alexnet_has_caffenets_parameter_shapes():
    from neocaffe.graph.net import Net

    net = Net(run_all.net_with_input(run_all.MODELS / "train_val.prototxt", 1), 0, keep_blob_diffs=False)
    ours = [tuple(p.shape) for p in net.parameters()]
    theirs = [tuple(p.shape) for p in run_all.torch_alexnet().parameters()]
    assert ours == theirs and sum(p.numel() for p in net.parameters()) == 60965224
    assert [s.type for s in net.steps][:2] == ["Input", "Convolution"]
    with torch.no_grad():
        assert run_all.torch_alexnet()(torch.zeros(1, 3, 227, 227)).shape == (1, 1000)


def test_merge_and_skips_and_arguments():
    a = {"date": "d1", "settings": {"x": 1}, "total_s": 10, "train": {"batch": 2, "modes": {"fp32": {"a": 1}}},
         "deploy": {"old": 1}}
    b = {"date": "d2", "settings": {"x": 2}, "total_s": 5, "train": {"batch": 2, "modes": {"bf16": {"b": 2}}},
         "force": {"new": 1}}
    m = run_all.merged(a, b)
    assert set(m["train"]["modes"]) == {"fp32", "bf16"} and m["deploy"] == {"old": 1} and m["force"] == {"new": 1}
    assert len(m["parts"]) == 2 and m["total_s"] == 15 and m["date"] == "d2"
    cpu = torch.device("cpu")
    assert run_all.skip_reason("fp32", cpu, True) == ""
    assert "CPU" in run_all.skip_reason("tf32", cpu, False)
    assert "CUDA graphs" in run_all.skip_reason("compile+cuda_graphs", cpu, False)
    assert "--quick" in run_all.skip_reason("compile", cpu, True)
    q = run_all.parse(["--quick", "--device", "cpu", "--modes", "fp32,bf16"])
    assert (q.batch, q.iters, q.modes) == (2, 1, ["fp32", "bf16"])
    full = run_all.parse(["--device", "cuda"])
    assert (full.batch, full.time_batch, full.deploy_batch, full.iters) == (256, 128, 256, 20)
    with pytest.raises(SystemExit):
        run_all.parse(["--modes", "fp64"])


def test_device_cuda_without_an_index_gets_the_current_one(monkeypatch):
    """``--device cuda`` (what gpu_check.sh passes): torch.cuda.set_device refuses an index-less device."""
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.append(torch.device(d)))
    assert run_all.resolve_device("cuda") == torch.device("cuda:0")
    assert run_all.resolve_device("cuda:1") == torch.device("cuda:1")
    assert [d.index for d in seen] == [0, 1]
    assert run_all.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="CUDA is not available"):
        run_all.resolve_device("cuda")


def test_results_are_written_whole_and_a_broken_merge_base_is_replaced(tmp_path, capsys):
    path = tmp_path / "suite.json"
    run_all.write_json(path, {"a": 1})
    assert run_all.read_merge_base(path) == {"a": 1} and not list(tmp_path.glob("*.tmp"))
    path.write_text('{"a": ')  # what a kill in the middle of a plain write leaves
    assert run_all.read_merge_base(path) is None
    assert "not readable JSON" in capsys.readouterr().err
    assert run_all.read_merge_base(tmp_path / "absent.json") is None
