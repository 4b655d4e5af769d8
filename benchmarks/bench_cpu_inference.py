"""CPU inference against OpenCV dnn, in one process, on the same input and weights (issue: CPU inference).

Every model of ``../shared/realdata/zoo_public_2026`` that builds, BVLC AlexNet (``models/bvlc_alexnet/
deploy.prototxt``), and the real LeNet and CIFAR-10 quick caffemodels: pycaffe's ``net.forward()`` (what a
user times) in each mode against ``cv2.dnn``'s ``forward()``, at batch 1 with one thread each and at batch
16 with every thread. OpenCV is fed the net as the zoo tests feed it (``zoo.opencv_net_text`` and
``zoo.bn_as_batchnorm_scale``: SE-ResNet's Axpy bottoms swapped, PSPNet's BN as BatchNorm + Scale,
py-faster-rcnn's Python proposal as OpenCV's Proposal); a Faster R-CNN net's outputs are compared with
the tests' reference (OpenCV on py-faster-rcnn's proposals, tests/zoo_rcnn.py: OpenCV's own Proposal
differs), its timing is OpenCV's whole net with its own Proposal. A batch OpenCV cannot run is
recorded with the reason (``skipped_b<batch>_<mode>``) and left out of the geometric means (so is a batch whose
blobs, ours and OpenCV's, would not fit in the memory available: PSPNet at 16 on 24 GiB), except SE-ResNet at
batch 16 (OpenCV fails in its SE blocks beyond batch 1): there OpenCV runs the 16 images one forward each
(``opencv_b16`` says so). Each figure is the median of ``--rounds`` rounds (ours and OpenCV alternate within
a round, so both see the same machine load) after a warm-up; a round times enough forwards to last
``--round-ms``. Writes ``benchmarks/results/cpu_inference_<cpu>.json`` with the per-model times, the
ratios neocaffe/OpenCV and their geometric means, and each mode's largest deviation from fp32.

    python benchmarks/bench_cpu_inference.py [--modes default,fold_bn+frozen] [--batches 1,16] [--models a,b]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "pycaffe_compat"))

from benchmarks import zoo  # noqa: E402
from benchmarks.machine import cpu_name  # noqa: E402
from tests import zoo_rcnn  # noqa: E402  (the zoo tests' Faster R-CNN reference)

SHARED = zoo.ZOO.parents[1]
EXTRA = {  # name -> (deploy prototxt, real weights or None)
    "bvlc_alexnet": (REPO / "models" / "bvlc_alexnet" / "deploy.prototxt", None),
    "lenet": (SHARED / "realdata" / "lenet_v2_2016" / "lenet.prototxt",
              SHARED / "realdata" / "lenet_v2_2016" / "lenet_iter_10000.caffemodel"),
    "cifar10_quick": (SHARED / "realdata" / "cifar10_quick_v1_2014" / "cifar10_quick.prototxt",
                      SHARED / "realdata" / "cifar10_quick_v1_2014" / "cifar10_quick_iter_5000.caffemodel"),
}


def models(wanted: set[str] | None) -> list[zoo.ZooModel]:
    out = list(zoo.zoo_models())
    out += [zoo.ZooModel(k, p, w if w is not None and w.exists() else None) for k, (p, w) in EXTRA.items()
            if p.exists()]
    return [m for m in out if not wanted or m.name in wanted]


def mode_kwargs(mode: str) -> dict[str, Any]:
    """``default`` (fp32 eager, Caffe-exact) or '+'-joined inference modes, e.g. ``fold_bn+frozen``."""
    if mode == "default":
        return {"fold_bn": False, "channels_last": False, "frozen": False}
    names = mode.split("+")
    unknown = set(names) - {"fold_bn", "channels_last", "frozen"}
    if unknown:
        raise SystemExit(f"unknown inference mode(s) {sorted(unknown)}; known: fold_bn, channels_last, frozen")
    return {n: n in names for n in ("fold_bn", "channels_last", "frozen")}


def timed(fn: Callable[[], Any], budget_ms: float) -> float:
    """ms per call of ``fn``, over as many calls as fill ``budget_ms`` (at least 3)."""
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    n = max(3, int(budget_ms / 1e3 / once))
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def paired(ours: Callable[[], Any], cv: Callable[[], Any], rounds: int, budget_ms: float) -> tuple[float, float]:
    for _ in range(2):
        ours()
        cv()
    a, b = [], []
    for _ in range(rounds):
        a.append(timed(ours, budget_ms))
        b.append(timed(cv, budget_ms))
    return statistics.median(a), statistics.median(b)


def batched(inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    out = {}
    for k, v in inputs.items():
        if k == "im_info":
            out[k] = v[:1].repeat(batch, 0) if v.shape[0] else v
        else:
            reps = (batch + v.shape[0] - 1) // v.shape[0]
            out[k] = np.concatenate([v] * reps)[:batch]
    return out


def cv_run(cvnet: Any, inputs: dict[str, np.ndarray], names: list[str]) -> Any:
    """OpenCV's forward of ``names`` on ``inputs``."""
    for name, arr in inputs.items():
        cvnet.setInput(arr, name)
    return cvnet.forward(names)


def skip(res: dict[str, Any], model: str, batch: int, modes: list[str], reason: str) -> None:
    """Record that ``batch`` is not timed, and why (left out of the geometric means)."""
    reason = " ".join(reason.split())[:300]
    for mode in modes:
        res[f"skipped_b{batch}_{mode}"] = reason
    print(f"{model:20s} b{batch:<3d} skipped: {reason[:140]}", flush=True)


def memory_available() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_model(m: zoo.ZooModel, folder: Path, modes: list[str], batches: list[int], rounds: int,
              budget_ms: float, threads: int) -> dict[str, Any]:
    import cv2
    import torch

    import caffe

    core = zoo.build(m)
    weights = zoo.model_weights(m, core, folder)
    base_inputs = zoo.model_inputs(core)
    outs = zoo.output_layers(core)
    # the net as OpenCV runs it: py-faster-rcnn's proposal as OpenCV's, Axpy's bottoms, BN as BatchNorm + Scale
    cv_text, cv_model = zoo.bn_as_batchnorm_scale(zoo.opencv_net_text(m.prototxt), weights)
    rcnn = zoo_rcnn.has_proposal(m)
    res: dict[str, Any] = {"weights": "real" if m.weights is not None else "random"}
    if rcnn:
        res["reference"] = ("outputs: OpenCV on py-faster-rcnn's proposals (tests/zoo_rcnn.py); time: OpenCV's "
                            "own Proposal, which pads its RoIs to post_nms_topn (its head runs on more RoIs)")
    for batch in batches:
        nthreads = 1 if batch == 1 else threads
        torch.set_num_threads(nthreads)
        cv2.setNumThreads(nthreads)
        inputs = batched(base_inputs, batch)

        def our_net(mode: str) -> Any:
            net = caffe.Net(str(m.prototxt), str(weights), caffe.TEST, **mode_kwargs(mode))
            for name, arr in inputs.items():
                net.blobs[name].reshape(*arr.shape)
            net.reshape()
            return net

        try:
            first: Any = our_net(modes[0])
        except Exception as e:  # e.g. py-faster-rcnn's proposal layer takes one image per forward
            skip(res, m.name, batch, modes, f"neocaffe cannot run batch {batch}: {type(e).__name__}: {e}")
            continue
        need = 4 * sum(b.count for b in first.blobs.values())  # our blobs, float32
        free = memory_available()
        if free is not None and 2.5 * need > free:  # ours, OpenCV's and the outputs' copies in one process
            skip(res, m.name, batch, modes, f"memory: neocaffe's blobs alone take {need / 2**30:.1f} GiB at batch "
                 f"{batch}, OpenCV's as many again in the same process; {free / 2**30:.1f} GiB available")
            continue
        cvnet = cv2.dnn.readNetFromCaffe(np.frombuffer(cv_text.encode(), np.uint8), np.frombuffer(cv_model, np.uint8))
        cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        cv_names = list(outs.values())
        feeds = [inputs]  # what one timed OpenCV call runs: the batch, or each of its images
        try:
            ref = cv_run(cvnet, inputs, cv_names)
            if rcnn:
                rr = zoo_rcnn.opencv_reference(m, weights, inputs, list(outs))
                ref = [rr[b] for b in outs]
        except cv2.error as e:
            reason = " ".join(str(e).split())[:300]
            if batch == 1 or rcnn:
                skip(res, m.name, batch, modes, f"OpenCV cannot run batch {batch}: {reason}")
                continue
            # SE-ResNet's SE blocks at batch > 1: OpenCV runs the same images one forward each
            feeds = [{k: v[i:i + 1] for k, v in inputs.items()} for i in range(batch)]
            per_image = [cv_run(cvnet, f, cv_names) for f in feeds]
            ref = [np.concatenate([r[j] for r in per_image]) for j in range(len(cv_names))]
            res[f"opencv_b{batch}"] = f"{batch} forwards of batch 1 (OpenCV cannot run batch {batch}: {reason})"
            print(f"{m.name:20s} b{batch:<3d} OpenCV: {batch} forwards of batch 1: {reason[:100]}", flush=True)

        def cv_forward() -> Any:
            return [cv_run(cvnet, f, cv_names) for f in feeds]

        fp32_out: dict[str, np.ndarray] | None = None
        for mode in modes:
            net, first = (first, None) if first is not None else (our_net(mode), None)

            def ours() -> Any:
                return net.forward(**inputs)

            got = {k: np.asarray(v).copy() for k, v in ours().items()}
            err_cv = max(zoo.output_error(core, b, got[b], r) for b, r in zip(outs, ref))
            if fp32_out is None:
                fp32_out = got
            dev = max(zoo.output_error(core, b, got[b], fp32_out[b]) for b in outs)
            t_ours, t_cv = paired(ours, cv_forward, rounds, budget_ms)
            res[f"b{batch}_{mode}"] = {"ms": round(t_ours, 4), "opencv_ms": round(t_cv, 4),
                                       "ratio": round(t_ours / t_cv, 3), "max_rel_err_vs_opencv": err_cv,
                                       "max_rel_dev_vs_fp32": dev, "threads": nthreads}
            print(f"{m.name:20s} b{batch:<3d} {mode:8s} ours {t_ours:9.3f} ms  opencv {t_cv:9.3f} ms  "
                  f"ratio {t_ours / t_cv:6.3f}  err {err_cv:.1e}", flush=True)
            del net
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="default")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--models", default="")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-ms", type=float, default=200.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    import cv2
    import torch

    import caffe

    caffe.set_mode_cpu()
    modes = [s for s in args.modes.split(",") if s]
    batches = [int(s) for s in args.batches.split(",") if s]
    report: dict[str, Any] = {
        "device": cpu_name(), "threads_available": os.cpu_count(), "torch": torch.__version__,
        "opencv": cv2.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "load_average": os.getloadavg(),
        "method": f"median of {args.rounds} rounds of >= {args.round_ms} ms each, ours and OpenCV alternating; "
                  "batch 1 on 1 thread each, larger batches on every thread",
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for m in models(set(filter(None, args.models.split(","))) or None):
            try:
                report["models"][m.name] = run_model(m, Path(tmp), modes, batches, args.rounds, args.round_ms,
                                                     args.threads)
            except Exception as e:  # a model that does not build yet is reported, not fatal
                report["models"][m.name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                print(f"{m.name:20s} ERROR {type(e).__name__}: {str(e)[:150]}", flush=True)
    summary = {}
    for key in sorted({k for r in report["models"].values() for k in r if k.startswith("b")}):
        ratios = [r[key]["ratio"] for r in report["models"].values() if key in r]
        if ratios:
            summary[key] = {"geomean_ratio": round(math.exp(sum(map(math.log, ratios)) / len(ratios)), 3),
                            "max_ratio": max(ratios), "models": len(ratios),
                            "left_out": sorted(n for n, r in report["models"].items() if key not in r)}
    report["summary"] = summary
    for k, v in summary.items():
        print(f"{k:14s} geomean {v['geomean_ratio']:.3f}  worst {v['max_ratio']:.3f}  ({v['models']} models; "
              f"left out: {', '.join(v['left_out']) or 'none'})")
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / \
        f"cpu_inference_{cpu_name().split()[0].lower()}-{cpu_name().split()[1].lower() if len(cpu_name().split()) > 1 else 'cpu'}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
