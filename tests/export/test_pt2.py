"""``.pt2`` programs (torch.export) load and run in a Python process that cannot import neocaffe, and give
neocaffe's outputs: a deploy-time layer case of ../shared/fixtures/layers per combination of layer types
(and the pooling geometries that take other code paths), a real MTCNN net with its weights, and a net
with a dynamic batch axis run at two batch sizes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, SHARED
from tests.export.helpers import TOLERANCE, deploy_cases, fixture_net
from tests.export.test_onnx_models import SMALL

#: pooling cases beyond the first whose geometry takes another path through the layer (padding, mask top)
POOLING_PATHS = {"pool_ave_k3s2_pad1", "pool_max_k3s2_mask_top", "pool_max_k3s2_pad1"}

#: run in a fresh interpreter where ``import neocaffe`` fails: each program on its inputs, the largest
#: scaled error against the recorded neocaffe outputs per program (NaNs must sit where neocaffe's do)
LOADER = r"""
import json, sys
from pathlib import Path
sys.modules["neocaffe"] = None  # any import of neocaffe now raises ImportError
import numpy as np, torch
torch.set_grad_enabled(False)
out = {}
for pt2 in sorted(Path(sys.argv[1]).glob("*.pt2")):
    io = np.load(pt2.with_suffix(".npz"))
    program = torch.export.load(str(pt2)).module()
    names = json.loads(pt2.with_suffix(".json").read_text())
    for trial in sorted({k.split("/")[0] for k in io.files}):
        got = program(*[torch.from_numpy(io[f"{trial}/in/{n}"]) for n in names["inputs"]])
        worst = 0.0
        for name in names["outputs"]:
            g, r = got[name].numpy().astype(np.float64), io[f"{trial}/out/{name}"].astype(np.float64)
            if g.shape != r.shape or not np.array_equal(np.isnan(g), np.isnan(r)):
                worst = float("inf")
                continue
            ok = ~np.isnan(r)
            scale = max(float(np.abs(r[ok]).max()) if ok.any() else 0.0, 1e-30)
            worst = max(worst, float(np.abs(g[ok] - r[ok]).max()) / scale if ok.any() else 0.0)
        out[f"{pt2.stem}/{trial}"] = worst
print(json.dumps(out))
print("neocaffe imported:", any(k.startswith("neocaffe") and v is not None for k, v in sys.modules.items()))
"""


def _save(folder: Path, name: str, net, trials: list[dict], dynamic: bool = False) -> None:
    from neocaffe.export.pt2 import export_pt2
    from neocaffe.export.verify import neocaffe_outputs

    arrays = {}
    for k, inputs in enumerate(trials):
        out = neocaffe_outputs(net, inputs)
        arrays.update({f"t{k}/in/{n}": v for n, v in inputs.items()})
        arrays.update({f"t{k}/out/{n}": v for n, v in out.items()})
    net_inputs = {n: trials[0][n] for n in net.inputs}
    neocaffe_outputs(net, net_inputs)  # back to the first trial's shapes before exporting
    export_pt2(net, folder / f"{name}.pt2", dynamic_batch=dynamic)
    np.savez(folder / f"{name}.npz", **arrays)
    (folder / f"{name}.json").write_text(json.dumps({"inputs": net.inputs, "outputs": net.outputs}))


def _load_elsewhere(folder: Path) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", LOADER, str(folder)], capture_output=True, text=True, cwd=folder,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "neocaffe imported: False"
    return json.loads(lines[-2])


def test_layer_cases_round_trip_without_neocaffe(tmp_path):
    folder = SHARED / "fixtures" / "layers"
    if not (folder / "cases.json").exists():
        pytest.skip(f"reference data not present: {folder}")
    seen: set[tuple[str, ...]] = set()
    cases = []
    for c in deploy_cases(folder):
        kinds = tuple(c["layer_types"])
        if kinds not in seen or c["name"] in POOLING_PATHS:
            seen.add(kinds)
            cases.append(c)
    for c in cases:
        net, inputs = fixture_net(folder, c["name"])
        _save(tmp_path, c["name"], net, [inputs])
    errors = _load_elsewhere(tmp_path)
    assert len(errors) == len(cases)
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCE}
    assert not bad, bad


def test_real_model_and_dynamic_batch_round_trip(tmp_path):
    from benchmarks import zoo
    from neocaffe.export import load_deploy_net
    from neocaffe.export.verify import random_inputs

    trials = []
    model = zoo.zoo_model("mtcnn_det2") if zoo.zoo_models() else None
    if model is not None:
        net = load_deploy_net(str(model.prototxt), str(model.weights), batch=2)
        _save(tmp_path, "mtcnn_det2", net, [random_inputs(net, 0)])
        trials.append("mtcnn_det2/t0")
    (tmp_path / "small.prototxt").write_text(SMALL)
    net = load_deploy_net(str(tmp_path / "small.prototxt"))
    _save(tmp_path, "small", net, [random_inputs(net, 0), random_inputs(net, 1, batch=5)], dynamic=True)
    errors = _load_elsewhere(tmp_path)
    assert set(errors) == set(trials + ["small/t0", "small/t1"])
    assert max(errors.values()) <= TOLERANCE, errors
