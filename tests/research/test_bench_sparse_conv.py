"""Smoke test of benchmarks/bench_sparse_conv.py (not its figures): AlexNet's conv1 at each structured
sparsity through the three conv_modes, and the real Caffe LeNet -> SSL on a slice of real MNIST -> dense,
CCNMM, pruned, pruned + CCNMM -> accuracy and timing -> json."""
from __future__ import annotations


from tests.conftest import shared_path
from tests.research.scripts import smoke_run



def test_smoke_run_measures_layers_and_lenet(tmp_path):
    shared_path("realdata", "mnist_idx_pypi")
    shared_path("realdata", "lenet_v2_2016")
    bench, res = smoke_run("bench_sparse_conv", tmp_path / "work", "sparse_conv.json")
    layers = res["layers"]
    assert [(r["rows_kept"], r["columns_kept"]) for r in layers] == bench.KEEP
    for r in layers:
        assert set(r["ms"]) == set(bench.MODES) and all(v > 0 for v in r["ms"].values())
        assert max(r["max_rel_err"].values()) < 1e-5  # every mode computes AlexNet's conv1
    lenet = res["lenet"]
    assert lenet["sparsity"]["conv1"]["filters"] == 20 and lenet["sparsity"]["conv2"]["columns"] == 500
    v = lenet["variants"]
    assert len(v) == 5
    # conv_mode and pruning change no prediction of the SSL-trained weights
    accs = {k: x["accuracy"] for k, x in v.items() if k.startswith("SSL")}
    assert len(set(accs.values())) == 1, accs
    assert all(x["forward_b1"]["median_ms"] > 0 and x["forward_b64"]["median_ms"] > 0 for x in v.values())
