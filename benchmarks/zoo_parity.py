"""Real-model parity across devices: every model of ``../shared/realdata/zoo_public_2026`` gives on CUDA
(fp32) what it gives on the CPU, within 1e-5 of the output's scale.

For each model folder (``benchmarks/zoo.py``): the deploy net built on the CPU (``neocaffe.graph.net.Net``,
TEST phase), the shipped caffemodel or deterministic random weights (written to a caffemodel), one
deterministic input; the same prototxt built again on ``--device`` with TF32 switched off (real fp32),
the same caffemodel and the same input; every net output compared as max|dev - cpu| / max|cpu|.

A model whose net does not build or run on the CPU (a layer type or field not supported yet) is
reported ``unsupported: <error>``: no failure of this script. One that runs on the CPU but fails or
differs on the device is a failure (exit status 1). ``--device cpu`` builds the second net on the CPU
too: it checks the plumbing where no GPU is (the errors are then 0).

    python benchmarks/zoo_parity.py [--device cuda] [--models a,b] [--tol 1e-5] [--out PATH]

Writes ``benchmarks/results/zoo_parity_<device>.json`` (or ``--out``): device, torch version, date, and
per model its status, weights, input shapes, per-output shape and error, and forward times.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import zoo  # noqa: E402
from benchmarks.run_all import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]


def _forward(net: Any, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """The net's outputs on ``inputs`` and the seconds of the (synchronised) forward."""
    dev = torch.device(net.device) if hasattr(net, "device") else torch.device("cpu")
    t0 = time.perf_counter()
    out = zoo.neocaffe_forward(net, inputs)  # copies the outputs to the host: the device is synchronised
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return out, time.perf_counter() - t0


def parity(model: zoo.ZooModel, device: str, folder: Path, tol: float) -> dict:
    """One model: CPU reference, then ``device``; status ``ok``, ``differs``, ``error: ...`` or
    ``unsupported: ...``."""
    row: dict = {"weights": "shipped" if model.weights is not None else "random (seed 0)"}
    try:  # the CPU side is the reference: what fails here is a model we do not support yet
        cpu_net = zoo.build(model, "cpu")
        weights = zoo.model_weights(model, cpu_net, folder)
        inputs = zoo.model_inputs(cpu_net)
        ref, cpu_s = _forward(cpu_net, inputs)
    except Exception as e:  # noqa: BLE001 - reported per model
        row["status"] = f"unsupported: {_short(e)}"
        return row
    row["inputs"] = {k: list(v.shape) for k, v in inputs.items()}
    row["cpu_forward_ms"] = round(1000 * cpu_s, 1)
    try:
        net = zoo.build(model, device)
        net.copy_from(str(weights))
        _forward(net, inputs)  # warm-up: cuDNN handles, allocator
        got, dev_s = _forward(net, inputs)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        row["status"] = f"error: {_short(e)}"
        return row
    row["device_forward_ms"] = round(1000 * dev_s, 1)
    row["outputs"] = {}
    worst, reordered = 0.0, []
    for blob, r in ref.items():
        err = zoo.output_error(net, blob, got[blob], r)  # DetectionOutput rows compared in any order
        entry = {"shape": list(r.shape), "max_rel_error": float(f"{err:.3e}"),
                 "scale": float(f"{float(np.abs(r).max()) if r.size else 0.0:.4e}")}
        if err > tol:
            matched = row_matched_error(got[blob], r)
            if matched is not None and matched <= tol:  # e.g. RoIs whose near-equal scores swapped places
                entry["row_matched_error"] = float(f"{matched:.3e}")
                reordered.append(blob)
                err = matched
        row["outputs"][blob] = entry
        worst = max(worst, err)
    row["max_rel_error"] = float(f"{worst:.3e}")
    row["status"] = "ok" if worst <= tol else "differs"
    if reordered:
        row["note"] = (f"rows of {', '.join(reordered)} come in another order on {device} (each matched to its "
                       "nearest CPU row); the values agree")
    return row


def row_matched_error(got: np.ndarray, ref: np.ndarray, limit: int = 50_000_000) -> float | None:
    """``max_rel_error`` after pairing each row (first axis) of ``got`` with its nearest row of ``ref``, each
    used once; None when the shapes differ, there is one row, or the pairing would be too large to compute."""
    if got.shape != ref.shape or got.ndim < 2 or got.shape[0] < 2:
        return None
    a = np.asarray(got, np.float64).reshape(got.shape[0], -1)
    if a.shape[0] ** 2 * a.shape[1] > limit:
        return None
    return zoo.paired_rows_error(a, np.asarray(ref, np.float64).reshape(ref.shape[0], -1))


def summary(rows: dict) -> dict:
    """How many models are ok, differ, failed on the device, or do not build on the CPU."""
    statuses = [r["status"].split(":")[0] for r in rows.values()]
    return {s: statuses.count(s) for s in ("ok", "differs", "error", "unsupported")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="", help="comma-separated folder names (default: every model)")
    ap.add_argument("--tol", type=float, default=1e-5, help="max |dev - cpu| over max |cpu|, per output")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available here (use --device cpu for a plumbing check)")
        from neocaffe.solver.speed import SpeedModes, apply_backend_flags

        apply_backend_flags(SpeedModes(precision="fp32"), dev)  # TF32 off, no autotuning: real fp32
    models = zoo.zoo_models()
    if a.models:
        wanted = [m for m in a.models.split(",") if m]
        missing = sorted(set(wanted) - {m.name for m in models})
        if missing:
            raise SystemExit(f"--models: no such model under {zoo.ZOO}: {', '.join(missing)}")
        models = [m for m in models if m.name in wanted]
    result: dict = {
        "benchmark": "real-model parity, CPU against --device (benchmarks/zoo_parity.py)",
        "zoo": str(zoo.ZOO), "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tolerance": a.tol, "precision": "fp32 (TF32 off)", "models": {}}
    if dev.type == "cpu":
        result["note"] = "--device cpu: both nets on the CPU, a check of the plumbing, not of CUDA"
    if not models:
        result["note"] = f"no model found under {zoo.ZOO}"
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"zoo_parity_{dev.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zoo_parity_") as tmp:
        for m in models:
            t = time.perf_counter()
            row = parity(m, a.device, Path(tmp), a.tol)
            row["seconds"] = round(time.perf_counter() - t, 1)
            result["models"][m.name] = row
            print(f"{m.name:20s} {row['status'][:100]:100s} {row.get('max_rel_error', '')}", flush=True)
            result["summary"] = summary(result["models"])
            result["incomplete"] = f"{len(result['models'])} of {len(models)} models done when written"
            write_json(out, result)  # as it goes, whole: a time limit keeps what is done, summary included
    result.pop("incomplete", None)
    result["summary"] = summary(result["models"])
    result["total_s"] = round(time.perf_counter() - t0, 1)
    write_json(out, result)
    print(f"zoo parity on {result['device']}: {json.dumps(result['summary'])} -> {out}")
    return 1 if result["summary"]["differs"] or result["summary"]["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
