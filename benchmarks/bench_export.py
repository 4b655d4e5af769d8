"""Export figures: AlexNet to ONNX and .pt2 (time, file size, error against neocaffe, onnxruntime latency),
and the exactness counts over every deploy-time layer case and every zoo model neocaffe builds.

* ``alexnet``: ``models/bvlc_alexnet/deploy.prototxt`` at batch 1 with deterministic random weights
  (``benchmarks/zoo.random_weights``): median of ``--repeat`` exports (``export_onnx`` with the checker,
  written to disk; ``export_pt2`` written to disk), file sizes, the scaled error of onnxruntime's and the
  program's output, and batch-1 forward latency of neocaffe, onnxruntime (CPU provider) and the program.
* ``layer_cases``: every deploy-time case of ``../shared/fixtures/layers`` exported and run by onnxruntime.
* ``zoo``: every model of ``../shared/realdata/zoo_public_2026`` (batch 1): built or not, exported or
  not, the scaled error, also with ``-fold_bn``; ``summary`` counts them.
Errors are max |ours - neocaffe| over the output's largest magnitude (the tests' bar: 1e-5).

Run: ``python benchmarks/bench_export.py [--repeat 3] [--threads 2]`` -> ``benchmarks/results/export_cpu.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import zoo  # noqa: E402
from benchmarks.machine import cpu_name  # noqa: E402


def _median_time(fn, repeat: int, cpu: list[float] | None = None) -> tuple[float, object]:
    """Median wall seconds of ``repeat`` calls (and, into ``cpu``, the median process CPU seconds: on a
    shared machine the wall time grows with the load, the CPU time much less)."""
    times, cpus, out = [], [], None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    if cpu is not None:
        cpu.append(statistics.median(cpus))
    return statistics.median(times), out


def alexnet(repeat: int, folder: Path) -> dict:
    import torch

    from neocaffe.export import export_pt2, load_deploy_net
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import neocaffe_outputs, onnxruntime_outputs, random_inputs, scaled_error

    net = load_deploy_net(str(REPO / "models" / "bvlc_alexnet" / "deploy.prototxt"), batch=1)
    zoo.random_weights(net, seed=3)
    onnx_path, pt2_path = folder / "alexnet.onnx", folder / "alexnet.pt2"
    cpu: list[float] = []
    t_onnx, _ = _median_time(lambda: export_onnx(net, onnx_path), repeat, cpu)
    t_pt2, program = _median_time(lambda: export_pt2(net, pt2_path), repeat, cpu)
    x = random_inputs(net)
    ref = neocaffe_outputs(net, x)["prob"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = onnxruntime_outputs(str(onnx_path), x, net.outputs)["prob"]
    module = torch.export.load(str(pt2_path)).module()
    with torch.no_grad():
        got_pt2 = module(torch.from_numpy(x["data"]))["prob"].numpy()
        lat_neo, _ = _median_time(lambda: neocaffe_outputs(net, x), 5 * repeat)
        lat_pt2, _ = _median_time(lambda: module(torch.from_numpy(x["data"])), 5 * repeat)
    lat_ort, _ = _median_time(lambda: sess.run(None, x), 5 * repeat)
    return {
        "model": "models/bvlc_alexnet/deploy.prototxt (batch 1, random weights)",
        "onnx_export_s": round(t_onnx, 3), "onnx_export_cpu_s": round(cpu[0], 3), "onnx_bytes": onnx_path.stat().st_size,
        "pt2_export_s": round(t_pt2, 3), "pt2_export_cpu_s": round(cpu[1], 3), "pt2_bytes": pt2_path.stat().st_size,
        "onnxruntime_error": scaled_error(got, ref), "pt2_error": scaled_error(got_pt2, ref),
        "latency_ms": {"neocaffe": round(lat_neo * 1e3, 2), "onnxruntime_cpu": round(lat_ort * 1e3, 2),
                       "pt2": round(lat_pt2 * 1e3, 2)},
    }


def layer_cases() -> dict:
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import check_onnx
    from tests.export.helpers import deploy_cases, fixture_net

    folder = zoo.ZOO.parents[1] / "fixtures" / "layers"
    out: dict = {"errors": {}, "failed": {}}
    for case in deploy_cases(folder):
        net, inputs = fixture_net(folder, case["name"])
        try:
            out["errors"][case["name"]] = max(check_onnx(export_onnx(net), net, inputs).values())
        except Exception as e:  # noqa: BLE001 - recorded, not raised
            out["failed"][case["name"]] = f"{type(e).__name__}: {e}"
    errs = out["errors"].values()
    out.update(cases=len(out["errors"]) + len(out["failed"]), exported=len(out["errors"]),
               matched=sum(e <= 1e-5 for e in errs), max_error=max(errs, default=None))
    return out


def zoo_models() -> dict:
    from neocaffe.export import fold_net, load_deploy_net
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import check_onnx, neocaffe_outputs, scaled_error

    out: dict = {}
    for model in zoo.zoo_models():
        row: dict = {}
        try:
            net = load_deploy_net(str(model.prototxt), batch=1)
        except Exception as e:  # noqa: BLE001
            out[model.name] = {"builds": False, "why": str(e)[:200]}
            continue
        if model.weights is not None:
            net.copy_from(str(model.weights))
        else:
            zoo.random_weights(net)
        inputs = zoo.model_inputs(net)
        try:
            t = time.perf_counter()
            onnx_model = export_onnx(net)
            row["export_s"] = round(time.perf_counter() - t, 3)
            row["error"] = max(check_onnx(onnx_model, net, inputs).values())
            folded, chains = fold_net(net)
            ref = zoo.neocaffe_forward(net, inputs)
            got = check_onnx(export_onnx(folded), folded, inputs)
            fold_out = neocaffe_outputs(folded, inputs)
            row["fold_bn"] = {"chains": len(chains), "onnx_vs_folded": max(got.values()),
                              "folded_vs_unfolded": max(scaled_error(fold_out[o], ref[o]) for o in ref)}
        except Exception as e:  # noqa: BLE001
            row["failed"] = f"{type(e).__name__}: {e}"[:300]
        out[model.name] = {"builds": True, **row}
    return {"summary": zoo_summary(out), "models": out}


def zoo_summary(rows: dict) -> dict:
    """Counts over the zoo rows: built, exported, matched (error <= 1e-5), the same with -fold_bn (the
    folded net's ONNX against the folded net, and the folded net against the unfolded one), max errors."""
    done = [r for r in rows.values() if "error" in r]
    fold = [r["fold_bn"] for r in done if "fold_bn" in r]
    return {"models": len(rows), "built": sum(r["builds"] for r in rows.values()), "exported": len(done),
            "matched": sum(r["error"] <= 1e-5 for r in done), "max_error": max((r["error"] for r in done), default=None),
            "fold_bn_exported": len(fold),
            "fold_bn_matched": sum(f["onnx_vs_folded"] <= 1e-5 and f["folded_vs_unfolded"] <= 1e-5 for f in fold),
            "fold_bn_max_error": max((max(f["onnx_vs_folded"], f["folded_vs_unfolded"]) for f in fold), default=None)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import onnx
    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "device": cpu_name(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "threads": args.threads,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "load_average": os.getloadavg(),
            "alexnet": alexnet(args.repeat, Path(tmp)), "layer_cases": layer_cases(), "zoo": zoo_models(),
        }
    out = Path(args.out or REPO / "benchmarks" / "results" / "export_cpu.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    lc = result["layer_cases"]
    print(json.dumps(result["alexnet"], indent=1))
    print(f"layer cases: {lc['exported']}/{lc['cases']} exported, {lc['matched']} matched, max error {lc['max_error']:.3g}")
    for name, row in result["zoo"]["models"].items():
        print(name, {k: v for k, v in row.items() if k != "why"})
    print("zoo:", result["zoo"]["summary"])
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
