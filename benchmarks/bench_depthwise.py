"""Depthwise convolution (group == channels) at MobileNet v1/v2's shapes: neocaffe against PyTorch's own
``nn.Conv2d(groups=C)``.

The shapes are every depthwise layer of the zoo's ``mobilenet_v1`` and ``mobilenet_v2`` deploy nets
(``../shared/realdata/zoo_public_2026``, 224 x 224 input), each distinct (C, H, W, kernel, stride, pad)
once, weighted by how many layers have it for the per-net totals. Each is run at batch 1 and 16, forward
under ``torch.no_grad()`` (deploy) and forward+backward (training), by

* ``torch``: ``nn.Conv2d(C, C, k, stride, pad, groups=C, bias=...)``;
* ``Convolution``: neocaffe's Convolution layer with ``group: C`` (what the zoo prototxts use);
* ``DepthwiseConvolution`` and ``ConvolutionDepthwise``: the forks' types;
* ``torch_nhwc``, ``Convolution_nhwc``: torch's module and neocaffe's layer on a channels_last input
  (the net-wide ``channels_last`` inference mode); ``Convolution_nhwc`` is compared with ``torch_nhwc``.

The machine may be shared and loaded: the candidates are timed interleaved (a new random order every
round) in blocks of calls, each block after one untimed call; each figure is the median over rounds of the per-call time,
as wall time and as process CPU time (``time.process_time``: all threads of this process), and
``ratio`` is ours over torch's. Writes ``benchmarks/results/depthwise_<cpu name>.json``. Run:
``python benchmarks/bench_depthwise.py [--threads 1] [--rounds 7] [--min-block-ms 20] [--batches 1,16]``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from google.protobuf import text_format

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import zoo  # noqa: E402
from benchmarks.machine import cpu_name, load_average  # noqa: E402
from neocaffe.layers.registry import get_layer_class  # noqa: E402
from neocaffe.proto import caffe_pb2  # noqa: E402

NETS = ("mobilenet_v1", "mobilenet_v2")
KINDS = ("torch", "Convolution", "DepthwiseConvolution", "ConvolutionDepthwise")
#: the same two with the input in channels_last (what InferenceModes(channels_last=True) feeds a layer)
NHWC = ("torch_nhwc", "Convolution_nhwc")


def depthwise_shapes(name: str) -> dict[tuple[int, ...], int]:
    """(C, H, W, k, stride, pad, bias) of every depthwise layer of zoo net ``name`` -> layer count."""
    net = zoo.build(zoo.zoo_model(name))
    out: dict[tuple[int, ...], int] = {}
    for layer in net.layers:
        if layer.type_name == "Convolution" and layer.group == layer.channels == layer.num_output > 1:
            c, h, w = layer.in_shape[1:]
            key = (c, h, w, layer.kernel[0], layer.stride[0], layer.pad[0], int(layer.bias_term))
            out[key] = out.get(key, 0) + 1
    return out


def candidates(shape: tuple[int, ...], batch: int) -> dict[str, torch.nn.Module]:
    c, h, w, k, s, p, bias = shape
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(c, c, k, s, p, groups=c, bias=bool(bias))
    conv = (f'convolution_param {{ num_output: {c} group: {c} kernel_size: {k} stride: {s} pad: {p} '
            f'bias_term: {str(bool(bias)).lower()} }}')
    mods: dict[str, torch.nn.Module] = {"torch": ref}
    for kind in KINDS[1:]:
        param = text_format.Parse(f'name: "dw" type: "{kind}" bottom: "x" top: "y" {conv}', caffe_pb2.LayerParameter())
        layer = get_layer_class(kind)(param, [(batch, c, h, w)])
        with torch.no_grad():
            layer.blobs[0].copy_(ref.weight)
            if bias:
                layer.blobs[1].copy_(ref.bias)
        mods[kind] = layer
    return mods


def _block(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - w0) / n * 1e3, (time.process_time() - c0) / n * 1e3


def time_interleaved(fns: dict[str, Callable[[], Any]], rounds: int, min_block_ms: float) -> dict[str, dict[str, float]]:
    """Median per-call wall and CPU ms of each function, timed in blocks, the functions in a new random
    order every round. Each block starts with one untimed call, so no function pays for the one before
    it (oneDNN's primitive and weight-reorder caches, the CPU caches: an NHWC call right after NCHW calls
    ran ~2.5x slower in a block of one call)."""
    names = list(fns)
    calls = {}
    for k, f in fns.items():  # warm up; block length from each function's own time
        f()
        w, _ = _block(f, 2)
        calls[k] = max(1, int(min_block_ms / max(w, 1e-3)))
    walls: dict[str, list[float]] = {k: [] for k in names}
    cpus: dict[str, list[float]] = {k: [] for k in names}
    order = random.Random(0)
    for _ in range(rounds):
        for k in order.sample(names, len(names)):
            fns[k]()
            a, b = _block(fns[k], calls[k])
            walls[k].append(a)
            cpus[k].append(b)
    return {k: {"wall_ms": statistics.median(walls[k]), "cpu_ms": statistics.median(cpus[k]),
                "wall_spread_pct": 100 * (max(walls[k]) - min(walls[k])) / statistics.median(walls[k]),
                "cpu_spread_pct": 100 * (max(cpus[k]) - min(cpus[k])) / statistics.median(cpus[k]),
                "calls_per_block": calls[k]} for k in names}


def measure(shape: tuple[int, ...], batch: int, rounds: int, min_block_ms: float) -> dict[str, Any]:
    c, h, w = shape[:3]
    mods = candidates(shape, batch)
    x = torch.randn(batch, c, h, w)
    xg = x.clone().requires_grad_(True)
    xl = x.contiguous(memory_format=torch.channels_last)
    xlg = xl.clone().requires_grad_(True)

    def fwd(m: torch.nn.Module, inp: torch.Tensor) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return m(inp)
        return run

    def fwd_bwd(m: torch.nn.Module, inp: torch.Tensor) -> Callable[[], Any]:
        def run() -> None:
            m.zero_grad(set_to_none=True)
            inp.grad = None
            m(inp).sum().backward()
        return run

    with torch.no_grad():
        ys = [m(x) for m in mods.values()]
    max_diff = max(float((y - ys[0]).abs().max()) for y in ys[1:])
    out: dict[str, Any] = {"max_abs_diff_vs_torch": max_diff}
    for phase, make, inp, inp_l in (("forward", fwd, x, xl), ("forward_backward", fwd_bwd, xg, xlg)):
        fns = {k: make(m, inp) for k, m in mods.items()}
        fns.update({"torch_nhwc": make(mods["torch"], inp_l), "Convolution_nhwc": make(mods["Convolution"], inp_l)})
        t = time_interleaved(fns, rounds, min_block_ms)
        for k, ref in [(k, "torch") for k in KINDS[1:]] + [("Convolution_nhwc", "torch_nhwc")]:
            t[k]["ratio_wall"] = t[k]["wall_ms"] / t[ref]["wall_ms"]
            t[k]["ratio_cpu"] = t[k]["cpu_ms"] / t[ref]["cpu_ms"]
        out[phase] = t
    return out


def verdict(ratios: list[float], spread_pct: float) -> str:
    """'equal within noise' when the median of the per-shape CPU-time ratios is within the median
    CPU-time spread (max - min over rounds, of the median) of 1 (at least 3%)."""
    r = statistics.median(ratios)
    tol = max(0.03, spread_pct / 100)
    if abs(r - 1) <= tol:
        return f"equal within noise (median ratio {r:.3f}, noise ~{tol:.0%})"
    return f"{'slower' if r > 1 else 'faster'} (median ratio {r:.3f}, noise ~{tol:.0%})"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-block-ms", type=float, default=20.0)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "device": cpu_name(), "torch": torch.__version__, "date": datetime.datetime.now(datetime.timezone.utc)
        .isoformat(timespec="seconds"), "threads": args.threads, "rounds": args.rounds,
        "mkldnn": torch.backends.mkldnn.is_available(), "load_average_before": load_average(), "nets": {}}
    for net in args.nets.split(","):
        shapes = depthwise_shapes(net)
        per_batch: dict[str, Any] = {}
        for batch in (int(b) for b in args.batches.split(",")):
            rows = []
            totals = {ph: {k: {"wall_ms": 0.0, "cpu_ms": 0.0} for k in KINDS + NHWC}
                      for ph in ("forward", "forward_backward")}
            for shape, count in shapes.items():
                m = measure(shape, batch, args.rounds, args.min_block_ms)
                rows.append({"C_H_W_k_stride_pad_bias": list(shape), "layers": count, **m})
                for ph in totals:
                    for k in KINDS + NHWC:
                        for f in ("wall_ms", "cpu_ms"):
                            totals[ph][k][f] += count * m[ph][k][f]
                print(net, batch, shape, {ph: round(m[ph]["Convolution"]["ratio_wall"], 3) for ph in totals}, flush=True)
            summary = {}
            for ph in totals:
                spread = statistics.median(r[ph][k]["cpu_spread_pct"] for r in rows for k in KINDS)
                summary[ph] = {
                    "net_total_ms": totals[ph],
                    **{f"{k}_over_torch_net_total_wall": totals[ph][k]["wall_ms"] / totals[ph]["torch"]["wall_ms"]
                       for k in KINDS[1:]},
                    **{f"{k}_over_torch_net_total_cpu": totals[ph][k]["cpu_ms"] / totals[ph]["torch"]["cpu_ms"]
                       for k in KINDS[1:]},
                    **{f"Convolution_nhwc_over_torch_nhwc_net_total_{f}": totals[ph]["Convolution_nhwc"][f"{f}_ms"]
                       / totals[ph]["torch_nhwc"][f"{f}_ms"] for f in ("wall", "cpu")},
                    "nchw_over_nhwc_torch_net_total_cpu": totals[ph]["torch"]["cpu_ms"] / totals[ph]["torch_nhwc"]["cpu_ms"],
                    "median_cpu_spread_pct": spread,
                    "verdict_Convolution": verdict([r[ph]["Convolution"]["ratio_cpu"] for r in rows], spread),
                    "verdict_Convolution_nhwc": verdict([r[ph]["Convolution_nhwc"]["ratio_cpu"] for r in rows], statistics
                                                        .median(r[ph][k]["cpu_spread_pct"] for r in rows for k in NHWC)),
                }
            per_batch[f"batch_{batch}"] = {"shapes": rows, "summary": summary}
        result["nets"][net] = per_batch
    result["load_average_after"] = load_average()
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"depthwise_{cpu_slug()}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


def cpu_slug() -> str:
    """The CPU's name as a file-name part (``Intel(R) Xeon(R) Processor`` -> ``intel-r-xeon-r-processor``)."""
    return re.sub(r"[^a-z0-9]+", "-", cpu_name().lower()).strip("-")


if __name__ == "__main__":
    main()
