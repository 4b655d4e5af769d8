"""The speed suite: CaffeNet training in every speed mode against plain PyTorch, end to end from an LMDB,
the cost of force regularization and Sparsify, ``caffe time``'s neon-style table, deploy inference.

One command; JSON to ``benchmarks/results/suite_<device>.json`` (device, torch/CUDA/cuDNN versions,
date, settings, every figure):

    python benchmarks/run_all.py --device cuda          # the real thing: batch 256 (time: 128), ~10-20 min
    python benchmarks/run_all.py --device cpu --quick   # a smoke run: batch 2, one timed iteration, ~2-3 min

Sections (``--sections``, comma-separated; default all):

* ``train``: CaffeNet (``models/bvlc_alexnet/train_val.prototxt``: grouped convolutions, LRN, ceil-mode
  pooling, dropout) trained by our Solver (SGD, momentum 0.9, weight decay 5e-4) on synthetic data that
  lives on the device (an Input layer), in each mode of ``--modes``: images/s and peak memory. In the
  same process, the same net written as a PyTorch user would (``nn.Sequential`` of ``Conv2d(groups=2)``,
  ``LocalResponseNorm``, ``MaxPool2d(ceil_mode=True)``, ``Dropout``, ``Linear``; ``CrossEntropyLoss``;
  ``torch.optim.SGD`` with momentum and weight decay) in the same modes, and torchvision's AlexNet when
  torchvision is installed (a different net: 64/192 filters, no LRN, no groups). ``ours_over_torch``:
  our images/s over theirs, per mode.
* ``e2e``: the same training fed by the Data layer from an LMDB of 256x256 raw Datums (crop 227, mirror,
  mean file; ``bench_data.make_lmdb``), worker processes reading and cropping, the float transform on
  the device: images/s.
* ``force``: ``train_val_split.prototxt`` (every conv carries ``force_mult: 1``) without and with force
  regularization (Degradation), batched by shape (what the solver does) and one weight at a time.
* ``sparsify``: ``template_train_val.prototxt`` (one Sparsify layer) against ``train_val.prototxt``.
* ``time``: ``neocaffe.cli.timing.summary`` (``caffe time``'s neon-style fprop/bprop/iteration table) at
  batch 128 (``--time-batch``).
* ``deploy``: ``deploy.prototxt``, TEST phase, no autograd: batch-1 latency (median) and batch-256
  (``--deploy-batch``) throughput.
* ``lrn``: CaffeNet's relu1+norm1 at ``--batch`` (96 x 55 x 55), forward+backward: the eager layers
  against the ``fused`` mode's Triton kernels (LRN alone, and ReLU+LRN as one kernel); CUDA only.

Method: warm-up iterations first (compilation, cuDNN autotuning and allocator growth stay out), the
device synchronised before every clock read, ``--repeats`` timed runs of ``--iters`` iterations and
their median (and spread). Peak memory: ``torch.cuda.max_memory_allocated`` per run on CUDA; on the CPU
only the process's peak RSS so far (ru_maxrss), which never goes down, is available. A section that
fails records its error and the suite goes on.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models" / "bvlc_alexnet"
sys.path.insert(0, str(Path(__file__).resolve().parent))

# name -> (precision, channels_last, cudnn_benchmark, compile, fused)
MODES: dict[str, tuple[str, bool, bool, str, bool]] = {
    "fp32": ("fp32", False, False, "", False),
    "tf32": ("tf32", False, False, "", False),
    "bf16": ("bf16", False, False, "", False),
    "channels_last": ("fp32", True, False, "", False),
    "cudnn_benchmark": ("fp32", False, True, "", False),
    "bf16+channels_last": ("bf16", True, False, "", False),
    "bf16+channels_last+cudnn_benchmark": ("bf16", True, True, "", False),
    "fused": ("fp32", False, False, "", True),
    "bf16+channels_last+cudnn_benchmark+fused": ("bf16", True, True, "", True),
    "compile": ("bf16", True, True, "default", False),
    "compile+cuda_graphs": ("bf16", True, True, "reduce-overhead", False),
}
SECTIONS = ("train", "e2e", "force", "sparsify", "time", "deploy", "lrn")


# -- measuring ------------------------------------------------------------------------------------
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def now(dev: torch.device) -> float:
    sync(dev)
    return time.perf_counter()


def reset_peak(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_mb(dev: torch.device) -> dict:
    if dev.type == "cuda":
        return {"peak_allocated_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1),
                "peak_reserved_mb": round(torch.cuda.max_memory_reserved(dev) / 2**20, 1)}
    import resource

    return {"process_peak_rss_mb_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def timed(dev: torch.device, run: Callable[[int], None], warmup: int, iters: int, repeats: int,
          batch: int) -> dict:
    """``run(n)`` does n iterations; images/s over ``repeats`` timed runs after ``warmup`` iterations."""
    t0 = now(dev)
    run(warmup)
    warm_s = now(dev) - t0
    rates = []
    for _ in range(repeats):
        t0 = now(dev)
        run(iters)
        rates.append(batch * iters / (now(dev) - t0))
    med = statistics.median(rates)
    return {"images_per_s": round(med, 2), "ms_per_iter": round(1000 * batch / med, 3),
            "spread_pct": round(100 * (max(rates) - min(rates)) / med, 1), "runs_images_per_s": [round(r, 2) for r in rates],
            "warmup_s": round(warm_s, 2)}


def guarded(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the suite records the failure and goes on
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}"}


def mode_kwargs(name: str) -> dict:
    p, cl, bench, comp, fused = MODES[name]
    return {"precision": p, "channels_last": cl, "cudnn_benchmark": bench, "compile": comp, "fused": fused}


def skip_reason(name: str, dev: torch.device, quick: bool) -> str:
    p, _, bench, comp, fused = MODES[name]
    if fused and dev.type != "cuda":
        return "the fused Triton kernels run on CUDA only (elsewhere the mode is the eager net)"
    if comp:
        from neocaffe.solver.speed import compile_supported

        if comp == "reduce-overhead" and dev.type != "cuda":
            return "CUDA graphs need CUDA"
        ok, why = compile_supported(dev)
        if not ok:
            return f"torch.compile cannot run here: {why}"
        if quick:
            return "skipped in --quick (inductor compiles AlexNet for minutes on a small CPU)"
        return ""
    if dev.type == "cpu" and (p == "tf32" or bench):
        return "no TF32 or cuDNN on the CPU: same as the mode without it"
    return ""


# -- nets ---------------------------------------------------------------------------------------------
def net_with_input(path: Path, batch: int) -> Any:
    """A train_val net whose Data layers are replaced by one Input layer (data, label) of ``batch``."""
    from google.protobuf import text_format

    from neocaffe.io.prototxt import read_net
    from neocaffe.proto import caffe_pb2

    src = read_net(str(path))
    out = caffe_pb2.NetParameter()
    out.CopyFrom(src)
    del out.layer[:]
    out.layer.append(text_format.Parse(
        f'name: "data" type: "Input" top: "data" top: "label" input_param {{ shape {{ dim: {batch} dim: 3 '
        f'dim: 227 dim: 227 }} shape {{ dim: {batch} }} }}', caffe_pb2.LayerParameter()))
    out.layer.extend(lp for lp in src.layer if lp.type not in ("Data", "ImageData", "HDF5Data"))
    return out


def solver_param(net_param: Any, dev: torch.device, extra: str = "") -> Any:
    from google.protobuf import text_format

    from neocaffe.proto import caffe_pb2

    sp = text_format.Parse(f'base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.0005 max_iter: 1000000000 '
                           f'display: 0 random_seed: 1 snapshot_after_train: false '
                           f'solver_mode: {"GPU" if dev.type == "cuda" else "CPU"} {extra}', caffe_pb2.SolverParameter())
    sp.net_param.CopyFrom(net_param)
    return sp


def our_solver(net_param: Any, dev: torch.device, batch: int, mode: str = "fp32", extra: str = "") -> Any:
    from neocaffe.solver.solver import Solver

    s = Solver(solver_param(net_param, dev, extra), device=dev, **mode_kwargs(mode))
    if "data" in s.net.blob_shapes and any(lp.param.type == "Input" for lp in s.net.plan.layers):
        g = torch.Generator(device=dev).manual_seed(0)
        s.net.set_blob("data", torch.randn(batch, 3, 227, 227, device=dev, generator=g))
        s.net.set_blob("label", torch.randint(0, 1000, (batch,), device=dev, generator=g).float())
    return s


def torch_alexnet() -> nn.Module:
    """CaffeNet/AlexNet as a PyTorch user writes it (the shapes of models/bvlc_alexnet)."""
    def lrn() -> nn.Module:
        return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

    def pool() -> nn.Module:
        return nn.MaxPool2d(3, 2, ceil_mode=True)

    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(inplace=True), lrn(), pool(),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(inplace=True), lrn(), pool(),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(inplace=True), pool(),
        nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(4096, 1000),
    )


def torch_trainer(model: nn.Module, dev: torch.device, batch: int, mode: str) -> Callable[[int], None]:
    """The usual PyTorch loop for ``model`` in ``mode`` (autocast, NHWC, cudnn.benchmark, torch.compile)."""
    from neocaffe.solver.speed import SpeedModes, apply_backend_flags, autocast

    m = SpeedModes(**mode_kwargs(mode))
    apply_backend_flags(m, dev)
    fmt = torch.channels_last if m.channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    fwd = torch.compile(model, **({} if m.compile == "default" else {"mode": m.compile})) if m.compile else model
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(batch, 3, 227, 227, device=dev, generator=g).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=dev, generator=g)

    def run(n: int) -> None:
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            with autocast(m, dev):
                loss = loss_fn(fwd(x), y)
            loss.backward()
            opt.step()

    return run


# -- sections -----------------------------------------------------------------------------------------
def section_train(a: argparse.Namespace, dev: torch.device) -> dict:
    net = net_with_input(MODELS / "train_val.prototxt", a.batch)
    out: dict = {"net": "models/bvlc_alexnet/train_val.prototxt (Data -> Input, synthetic data on the device)",
                 "batch": a.batch, "modes": {}}
    frameworks: dict[str, Callable[[], nn.Module]] = {"torch_nn": torch_alexnet}
    if "torchvision_alexnet" in a.frameworks:
        try:
            import torchvision

            frameworks["torchvision_alexnet"] = lambda: torchvision.models.alexnet(num_classes=1000)
            out["torchvision"] = torchvision.__version__
        except ImportError:
            out["torchvision"] = "not installed"
    else:
        out["torchvision"] = "not asked for (--frameworks)"
    for mode in a.modes:
        why = skip_reason(mode, dev, a.quick)
        if why:
            out["modes"][mode] = {"skipped": why}
            continue
        row: dict = {}
        warm = max(a.warmup, 3) if MODES[mode][3] else a.warmup

        def ours() -> dict:
            reset_peak(dev)
            s = our_solver(net, dev, a.batch, mode)
            params = sum(i.param.numel() for i in s.net.learnable)
            r = timed(dev, s.step, warm, a.iters, a.repeats, a.batch)
            r.update(peak_mb(dev), parameters=params)
            s.net.close()
            return r

        row["neocaffe"] = guarded(ours)
        for name, make in frameworks.items():
            def theirs(make: Callable[[], nn.Module] = make) -> dict:
                reset_peak(dev)
                torch.manual_seed(0)
                model = make()
                r = timed(dev, torch_trainer(model, dev, a.batch, mode), warm, a.iters, a.repeats, a.batch)
                r.update(peak_mb(dev), parameters=sum(p.numel() for p in model.parameters()))
                return r

            row[name] = guarded(theirs)
        if "images_per_s" in row["neocaffe"] and "images_per_s" in row["torch_nn"]:
            row["ours_over_torch"] = round(row["neocaffe"]["images_per_s"] / row["torch_nn"]["images_per_s"], 3)
        out["modes"][mode] = row
        print(f"train {mode}: {json.dumps(row)}", flush=True)
        a.save_partial("train", out)
        gc.collect()
    return out


def e2e_workers(a: argparse.Namespace) -> int:
    """Data-layer workers for the e2e section: ``--data-workers``, else none for --quick, else what a
    large LMDB gets automatically (``neocaffe.data.prefetch.default_workers``): the suite's LMDB is
    small enough (<= 16 batches) to get none, which would time single-threaded reading, not the pipeline."""
    from neocaffe.data.prefetch import default_workers

    if a.data_workers is not None:
        return max(0, a.data_workers)
    return 0 if a.quick else default_workers(None, None)


@contextlib.contextmanager
def env_set(name: str, value: str) -> Any:
    """The environment variable ``name`` set to ``value`` inside, as it was outside."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def section_e2e(a: argparse.Namespace, dev: torch.device) -> dict:
    from bench_data import make_lmdb

    from neocaffe.io.binaryproto import write_blobproto
    from neocaffe.io.prototxt import read_net
    from neocaffe.tools.compute_image_mean import compute_mean

    tmp = tempfile.mkdtemp(prefix="suite_lmdb_")
    src, mean = os.path.join(tmp, "lmdb"), os.path.join(tmp, "mean.binaryproto")
    t0 = time.perf_counter()
    make_lmdb(src, a.lmdb_images)
    write_blobproto(mean, compute_mean(src), legacy=True)
    net = read_net(str(MODELS / "train_val.prototxt"))
    for lp in net.layer:
        if lp.type == "Data":
            lp.data_param.source, lp.data_param.batch_size = src, a.batch
            lp.transform_param.mean_file = mean
    workers = e2e_workers(a)
    out: dict = {"lmdb_images": a.lmdb_images, "batch": a.batch, "make_lmdb_s": round(time.perf_counter() - t0, 1),
                 "transform": "crop 227, mirror, mean file", "data_workers": workers, "modes": {}}
    for mode in ("fp32", "bf16+channels_last+cudnn_benchmark"):
        if mode not in a.modes or skip_reason(mode, dev, a.quick):
            continue

        def run() -> dict:
            reset_peak(dev)
            s = our_solver(net, dev, a.batch, mode)
            try:
                r = timed(dev, s.step, a.warmup + 2, a.iters, a.repeats, a.batch)
            finally:
                s.net.close()
            r.update(peak_mb(dev))
            return r

        with env_set("NEOCAFFE_DATA_WORKERS", str(workers)):  # what the Data layers read when they start
            out["modes"][mode] = guarded(run)
        print(f"e2e {mode}: {json.dumps(out['modes'][mode])}", flush=True)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return out


def section_force(a: argparse.Namespace, dev: torch.device) -> dict:
    net = net_with_input(MODELS / "train_val_split.prototxt", a.batch)
    out: dict = {"net": "models/bvlc_alexnet/train_val_split.prototxt (force_mult 1 on every conv)", "batch": a.batch,
                 "force": "force_decay 0.001, Degradation, fixed, all"}
    force = 'force_decay: 0.001 force_type: "Degradation"'
    for name, extra, per_weight in (("no_force", "", False), ("force_batched", force, False),
                                    ("force_per_weight", force, True)):
        def run(extra: str = extra, per_weight: bool = per_weight) -> dict:
            s = our_solver(net, dev, a.batch, "fp32", extra)
            if per_weight:
                for reg in s.regularizers.regularizers:
                    if reg.name == "force":  # the batched pass given one weight at a time
                        reg.apply_all = lambda infos, it, rate, penalty=True, one=reg.apply_all: [
                            p for i in infos for p in one([i], it, rate, penalty)]
            return timed(dev, s.step, a.warmup, a.iters, a.repeats, a.batch)

        out[name] = guarded(run)
    base = out["no_force"].get("ms_per_iter")
    for name in ("force_batched", "force_per_weight"):
        if base and "ms_per_iter" in out[name]:
            out[name]["overhead_pct"] = round(100 * (out[name]["ms_per_iter"] / base - 1), 1)
    print(f"force: {json.dumps(out)}", flush=True)
    return out


def section_sparsify(a: argparse.Namespace, dev: torch.device) -> dict:
    out: dict = {"batch": a.batch, "with": "models/bvlc_alexnet/template_train_val.prototxt (Sparsify sp_conv5)",
                 "without": "models/bvlc_alexnet/train_val.prototxt"}
    for name, path in (("without", "train_val.prototxt"), ("with_sparsify", "template_train_val.prototxt")):
        net = net_with_input(MODELS / path, a.batch)
        out[name + "_timing"] = guarded(lambda net=net: timed(dev, our_solver(net, dev, a.batch).step, a.warmup,
                                                              a.iters, a.repeats, a.batch))
    b, w = out["without_timing"].get("ms_per_iter"), out["with_sparsify_timing"].get("ms_per_iter")
    if b and w:
        out["overhead_pct"] = round(100 * (w / b - 1), 1)
    print(f"sparsify: {json.dumps(out)}", flush=True)
    return out


def section_time(a: argparse.Namespace, dev: torch.device) -> dict:
    import logging

    from neocaffe.cli.timing import summary
    from neocaffe.graph.net import Net
    from neocaffe.solver.speed import SpeedModes, apply_backend_flags

    out: dict = {"what": "neocaffe.cli.timing.summary (caffe time's neon-style table), TRAIN net",
                 "batch": a.time_batch, "modes": {}}
    for mode in ("fp32", "bf16+channels_last", "fused"):
        if mode not in a.modes or (MODES[mode][4] and skip_reason(mode, dev, a.quick)):
            continue

        def run(mode: str = mode) -> dict:
            m = SpeedModes(**mode_kwargs(mode))
            apply_backend_flags(m, dev)
            net = Net(net_with_input(MODELS / "train_val.prototxt", a.time_batch), 0, device=dev, keep_blob_diffs=False)
            net.tf32 = m.precision == "tf32"
            if m.channels_last:
                net.set_memory_format(torch.channels_last)
            net.set_fused_kernels(m.fused)
            net.set_blob("data", torch.randn(a.time_batch, 3, 227, 227, device=dev))
            net.set_blob("label", torch.randint(0, 1000, (a.time_batch,), device=dev).float())
            stats = summary(net, m.precision, logging.getLogger("neocaffe.bench"), runs=a.time_runs,
                            warmup=max(1, a.warmup))
            return {k: {"median_ms": round(statistics.median(v), 3), "mean_ms": round(statistics.fmean(v), 3),
                        "min_ms": round(min(v), 3), "max_ms": round(max(v), 3)} for k, v in stats.items()}

        out["modes"][mode] = guarded(run)
    print(f"time: {json.dumps(out)}", flush=True)
    return out


def section_deploy(a: argparse.Namespace, dev: torch.device) -> dict:
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net
    from neocaffe.solver.speed import SpeedModes, apply_backend_flags, autocast

    out: dict = {"net": "models/bvlc_alexnet/deploy.prototxt (TEST, no autograd)", "modes": {}}
    for mode in ("fp32", "tf32", "bf16", "bf16+channels_last", "bf16+channels_last+cudnn_benchmark+fused"):
        if mode not in a.modes or skip_reason(mode, dev, a.quick):
            continue

        def run(mode: str = mode) -> dict:
            m = SpeedModes(**mode_kwargs(mode))
            apply_backend_flags(m, dev)
            net = Net(read_net(str(MODELS / "deploy.prototxt")), 1, device=dev, keep_blob_diffs=False)
            net.tf32 = m.precision == "tf32"
            if m.channels_last:
                net.set_memory_format(torch.channels_last)
            net.set_fused_kernels(m.fused)
            res = {}
            for batch, runs in ((1, a.latency_runs), (a.deploy_batch, a.iters)):
                net.set_blob("data", torch.randn(batch, 3, 227, 227, device=dev))
                times = []
                with torch.inference_mode(), autocast(m, dev):
                    for k in range(a.warmup + runs):
                        t0 = now(dev)
                        net.forward()
                        if k >= a.warmup:
                            times.append(now(dev) - t0)
                med = statistics.median(times)
                if batch == 1:
                    res["batch1_latency_ms_median"] = round(1000 * med, 3)
                    res["batch1_latency_ms_p90"] = round(1000 * sorted(times)[int(0.9 * (len(times) - 1))], 3)
                else:
                    res[f"batch{batch}_images_per_s"] = round(batch / med, 1)
            return res

        out["modes"][mode] = guarded(run)
    print(f"deploy: {json.dumps(out)}", flush=True)
    return out


# -- main ---------------------------------------------------------------------------------------------
def device_info(dev: torch.device) -> dict:
    from bench_data import cpu_name, cpus

    info = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU: {cpu_name()}, {cpus()} logical cores",
            "cpu": f"{cpu_name()}, {cpus()} logical cores", "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "torch_threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(gpu_memory_gb=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count,
                    capability=f"{p.major}.{p.minor}")
    return info


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny batches and few iterations (a CPU smoke run)")
    ap.add_argument("--batch", type=int, help="training batch (default 256; --quick 2)")
    ap.add_argument("--time-batch", type=int, help="caffe time batch (default 128; --quick 2)")
    ap.add_argument("--deploy-batch", type=int, help="deploy throughput batch (default 256; --quick 4)")
    ap.add_argument("--iters", type=int, help="timed iterations per run (default 20; --quick 1)")
    ap.add_argument("--warmup", type=int, help="warm-up iterations (default 5; --quick 1)")
    ap.add_argument("--repeats", type=int, help="timed runs, median reported (default 3; --quick 1)")
    ap.add_argument("--lmdb-images", type=int, help="images in the end-to-end LMDB (default 2560; --quick 16)")
    ap.add_argument("--data-workers", type=int,
                    help="e2e: Data-layer worker processes (default: 0 with --quick, else min(8, CPUs - 2), as "
                         "a large LMDB gets; the suite's small LMDB would get none)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of: {', '.join(MODES)}")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--frameworks", default="torch_nn,torchvision_alexnet",
                    help="train's plain-PyTorch comparisons: torch_nn (always), torchvision_alexnet (if installed)")
    ap.add_argument("--out", default="")
    ap.add_argument("--merge", action="store_true",
                    help="update the output file's sections (and train modes) instead of replacing the file: "
                         "run the suite in parts, e.g. under a per-command time limit")
    a = ap.parse_args(argv)
    q = a.quick
    for name, full, quick in (("batch", 256, 2), ("time_batch", 128, 2), ("deploy_batch", 256, 4), ("iters", 20, 1),
                              ("warmup", 5, 1), ("repeats", 3, 1), ("lmdb_images", 2560, 16)):
        if getattr(a, name) is None:
            setattr(a, name, quick if q else full)
    a.time_runs = 2 if q else 10
    a.latency_runs = 3 if q else 50
    a.modes = [m for m in a.modes.split(",") if m]
    a.sections = [s for s in a.sections.split(",") if s]
    a.frameworks = [f for f in a.frameworks.split(",") if f]
    a.save_partial = lambda section, value: None
    bad = [m for m in a.modes if m not in MODES] + [s for s in a.sections if s not in SECTIONS]
    bad += [f for f in a.frameworks if f not in ("torch_nn", "torchvision_alexnet")]
    if bad:
        ap.error(f"unknown mode/section: {', '.join(bad)}")
    return a


def section_lrn(a: argparse.Namespace, dev: torch.device) -> dict:
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    if dev.type != "cuda":
        return {"skipped": "the fused Triton kernels run on CUDA only"}
    text = (f"force_backward: true layer {{ name: 'data' type: 'Input' top: 'data' input_param {{ shape {{ dim: {a.batch} dim: 96 dim: 55 "
            f"dim: 55 }} }} }} layer {{ name: 'relu1' type: 'ReLU' bottom: 'data' top: 'data' }} "
            "layer { name: 'norm1' type: 'LRN' bottom: 'data' top: 'norm1' "
            "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }")
    out: dict = {"what": f"ReLU (in place) + LRN ACROSS_CHANNELS 5, input ({a.batch}, 96, 55, 55), forward+backward",
                 "variants": {}}
    for variant in ("eager", "fused"):
        def run(variant: str = variant) -> dict:
            net = Net(read_net(text), 0, device=dev, keep_blob_diffs=False)
            out["pairs"] = net.set_fused_kernels(variant == "fused")
            x = torch.randn(a.batch, 96, 55, 55, device=dev).requires_grad_(True)
            g = torch.randn(a.batch, 96, 55, 55, device=dev)

            def step(n: int) -> None:
                for _ in range(n):
                    net.forward({"data": x})
                    net.backward({"norm1": g})

            reset_peak(dev)
            r = timed(dev, step, a.warmup, a.iters, a.repeats, a.batch)
            r.update(peak_mb(dev))
            return r

        out["variants"][variant] = guarded(run)
    e, f = out["variants"]["eager"], out["variants"]["fused"]
    if "ms_per_iter" in e and "ms_per_iter" in f:
        out["fused_speedup"] = round(e["ms_per_iter"] / f["ms_per_iter"], 2)
    print(f"lrn: {json.dumps(out)}", flush=True)
    return out


def resolve_device(name: str) -> torch.device:
    """``--device``: ``cpu``, ``cuda`` (the current CUDA device, made explicit: ``torch.cuda.set_device``
    wants an index) or ``cuda:N``."""
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {name}: CUDA is not available here")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    return dev


def write_json(path: Path, value: dict) -> None:
    """``value`` as JSON at ``path``, whole or not at all (a time limit may kill the run mid-write)."""
    from neocaffe.io.files import atomic_output

    with atomic_output(path, fsync=False) as f:
        f.write((json.dumps(value, indent=2) + "\n").encode())


def read_merge_base(path: Path) -> dict | None:
    """The results already at ``path`` for ``--merge``; None (with a warning) when it is not readable JSON."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"run_all: --merge: {path} is not readable JSON ({e}); writing a fresh file", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    from neocaffe.cli.log import setup

    setup(level=30)  # warnings and errors only: the suite prints its own lines
    t0 = time.perf_counter()
    result: dict = {"benchmark": "neocaffe speed suite (benchmarks/run_all.py)", **device_info(dev),
                    "quick": a.quick, "settings": {k: v for k, v in vars(a).items() if k not in ("out", "save_partial")}}
    slug = "cpu" if dev.type == "cpu" else re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(dev).lower()).strip("-")
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"suite_{slug}{'_quick' if a.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    old = read_merge_base(out) if a.merge else None

    def write(res: dict) -> None:
        write_json(out, merged(old, res) if old is not None else res)

    def save_partial(section: str, value: dict) -> None:
        # after every train mode: a run stopped by a time limit keeps what it measured
        write({**result, section: value, "incomplete": f"written during section '{section}': the run stopped there "
                                                        "or went on"})

    a.save_partial = save_partial
    if a.quick:
        result["note"] = ("--quick smoke run: tiny batches and one timed iteration per figure; it shows the suite "
                          "works. Its figures are NOT the batch-256 GPU targets and, on a small shared CPU "
                          "(see load_average_at_start), single timings move by tens of percent between runs")
    # The process's first iterations pay for its allocator's growth (page faults of fresh memory; on the CPU
    # they ran 2-6x slower for about four iterations): a throwaway run first, so every timed run starts warm.
    t = time.perf_counter()
    guarded(lambda: our_solver(net_with_input(MODELS / "train_val.prototxt", a.batch), dev, a.batch).step(4))
    result["process_warmup_s"] = round(time.perf_counter() - t, 1)
    gc.collect()
    fns = {"train": section_train, "e2e": section_e2e, "force": section_force, "sparsify": section_sparsify,
           "time": section_time, "deploy": section_deploy, "lrn": section_lrn}
    for name in a.sections:
        t = time.perf_counter()
        result[name] = guarded(lambda name=name: fns[name](a, dev))
        if isinstance(result[name], dict):
            result[name]["section_s"] = round(time.perf_counter() - t, 1)
        result["total_s"] = round(time.perf_counter() - t0, 1)
        if name != a.sections[-1]:
            write({**result, "incomplete": f"written after section '{name}': the run stopped there or went on"})
        gc.collect()
    result["total_s"] = round(time.perf_counter() - t0, 1)
    write(result)
    if old is not None:
        result = merged(old, result)
    print_table(result)
    print(f"wrote {out} ({result['total_s']} s)")
    return 0


def merged(old: dict, new: dict) -> dict:
    """``old`` with ``new``'s header, sections and train modes laid over it; the settings of each part
    are kept under ``parts``."""
    out = dict(old)
    def part(r: dict) -> dict:
        return {"date": r.get("date"), "settings": r.get("settings"),
                **({"incomplete": r["incomplete"]} if "incomplete" in r else {})}

    parts = list(old.get("parts", [part(old)]))
    parts.append(part(new))
    out.pop("incomplete", None)  # only the newest part says whether it is still running or was stopped
    for k, v in new.items():
        if k == "train" and isinstance(v, dict) and isinstance(old.get("train"), dict) and "modes" in old["train"]:
            out["train"] = {**old["train"], **{kk: vv for kk, vv in v.items() if kk != "modes"},
                            "modes": {**old["train"]["modes"], **v.get("modes", {})}}
        else:
            out[k] = v
    out["parts"] = parts
    out["total_s"] = round(sum(p.get("total_s", 0) for p in [old, new]), 1)
    return out


def print_table(r: dict) -> None:
    print(f"\n{r['device']} | torch {r['torch']} | CUDA {r['cuda']} | {'QUICK (smoke)' if r['quick'] else 'full'}")
    train = r.get("train", {})
    if "modes" in train:
        print(f"{'train mode':38s}{'ours img/s':>12s}{'torch img/s':>12s}{'ours/torch':>11s}{'peak MB':>10s}")
        for mode, row in train["modes"].items():
            if "skipped" in row:
                print(f"{mode:38s}  skipped: {row['skipped']}")
                continue
            o, t = row.get("neocaffe", {}), row.get("torch_nn", {})
            mem = o.get("peak_allocated_mb", o.get("process_peak_rss_mb_so_far", ""))
            print(f"{mode:38s}{o.get('images_per_s', 'err')!s:>12s}{t.get('images_per_s', 'err')!s:>12s}"
                  f"{row.get('ours_over_torch', '')!s:>11s}{mem!s:>10s}")
    for name in ("e2e", "force", "sparsify", "time", "deploy"):
        if name in r:
            print(f"{name}: {json.dumps({k: v for k, v in r[name].items() if k not in ('net', 'with', 'without', 'what')})}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
