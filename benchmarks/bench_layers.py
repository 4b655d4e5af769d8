"""Layer-wise forward/backward timing of the AlexNet deploy net, against real Caffe's ``caffe time``.

What it runs is what ``caffe time -model caffe_time_deploy_b2.prototxt`` ran (BVLC tools/caffe.cpp
``time()``): models/bvlc_alexnet/deploy.prototxt with the Input batch set to ``--batch`` (2), phase
TRAIN (``time``'s default: Dropout is on), no loss layer. Caffe times ``--iterations`` passes of every
layer's Forward, then every layer's Backward in reverse, and prints the per-layer averages. Here:

* per layer: ``neocaffe.graph.timing.timed_pass`` (the code behind our ``caffe time``): forward layer
  by layer, backward as one autograd pass from a standard-normal diff on ``prob``, split per layer
  by gradient hooks; the device is synchronized at every mark (CUDA);
* end to end: ``net.forward()`` + ``net.backward({prob: diff})`` with no marks, the figure compared
  with Caffe's ``Average Forward-Backward`` (per-layer marks add overhead).

Weights are Gaussian (std 1/sqrt(fan-in), biases 0.1), data integer "pixels minus 128" (Caffe timed
its zero-filled blobs; dense kernels do not care). Parameter diffs accumulate across iterations
as in Caffe's loop (no clearing inside the timed region). Our backward is a real backward: every
bottom diff of conv2..fc8 is computed; Caffe's ``time`` on this loss-less net computes only
parameter diffs (and LRN/Softmax diffs): Net::Init sets ``bottom_need_backward`` false for layers
that do not contribute to a loss, which its per-layer lines show (ReLU/Pooling backward ~0 ms,
conv backward about equal to its forward).

Prints Caffe-style per-layer lines and a side-by-side table, writes
benchmarks/results/layers_alexnet_deploy_<device>.json (device name, torch version, date, threads,
per-layer ms, totals, Caffe's figures parsed from ../shared/fixtures/caffenet/caffe_time_deploy_b2.log
and the ratios ours/Caffe). Timing is noisy on a shared machine: medians over iterations, and
the system load is recorded before and after.

Run: ``python benchmarks/bench_layers.py [--device cpu|cuda|all] [--iterations 20] [--threads 2]``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import device_name, load_average  # noqa: E402
from neocaffe.graph.net import Net  # noqa: E402
from neocaffe.graph.timing import end_to_end, now, output_diffs, timed_pass  # noqa: E402
from neocaffe.io.prototxt import read_net  # noqa: E402
from neocaffe.layers.base import TEST, TRAIN  # noqa: E402

MODEL = ROOT / "models" / "bvlc_alexnet" / "deploy.prototxt"
CAFFE_LOG = ROOT.parent / "shared" / "fixtures" / "caffenet" / "caffe_time_deploy_b2.log"


# -- Caffe's reference figures --------------------------------------------------------------------
def parse_caffe_time_log(path: Path) -> dict[str, Any] | None:
    """Caffe's ``time`` figures: per-layer averages, the three averages, every iteration's time."""
    if not path.exists():
        return None
    text = path.read_text()
    layers: dict[str, dict[str, float]] = {}
    for name, what, ms in re.findall(r"\]\s+(\S+)\t(forward|backward): ([0-9.e+-]+) ms\.", text):
        layers.setdefault(name, {})[f"{what}_ms"] = float(ms)

    def avg(label: str) -> float | None:
        m = re.search(rf"Average {label}: ([0-9.e+-]+) ms\.", text)
        return float(m.group(1)) if m else None

    iters = [float(x) for x in re.findall(r"Iteration: \d+ forward-backward time: ([0-9.]+) ms\.", text)]
    machine = re.search(r"^# machine: (.*)$", text, re.M)
    try:
        shown = os.path.relpath(path, ROOT)
    except ValueError:
        shown = str(path)
    return {
        "log": shown,
        "machine": machine.group(1).strip() if machine else None,
        "forward_ms": avg("Forward pass"),
        "backward_ms": avg("Backward pass"),
        "forward_backward_ms": avg("Forward-Backward"),
        "iteration_ms": iters,
        # Caffe's average includes its first (cold) iteration; the steady state is the rest
        "forward_backward_ms_median_after_first": statistics.median(iters[1:]) if len(iters) > 1 else None,
        "layers": layers,
    }


# -- the net ----------------------------------------------------------------------------------------
def alexnet_param(batch: int, model: Path = MODEL) -> Any:
    """The deploy net with its Input batch set to ``batch`` (caffe_time_deploy_b2.prototxt for 2)."""
    param = read_net(str(model))
    for lp in param.layer:
        if lp.type == "Input":
            for shape in lp.input_param.shape:
                shape.dim[0] = batch
    return param


def fill_net(net: Net, seed: int = 0) -> None:
    """Gaussian weights (std 1/sqrt(fan-in)), biases 0.1, integer data in [-128, 127]."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layers:
            for j, p in enumerate(layer.blobs):
                if j == 0 and p.dim() >= 2:
                    fan_in = p[0].numel()
                    p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
                else:
                    p.fill_(0.1)
    for lp in net.plan.layers:
        if lp.param.type == "Input":
            for name in lp.tops:
                shape = net.blob_shapes[name]
                net.set_blob(name, torch.randint(-128, 128, shape, generator=g).to(torch.float32))


def build_net(param: Any, device: str, phase: int = TRAIN, keep_blob_diffs: bool = False) -> Net:
    # keep_blob_diffs=False: what `caffe time` and the solver use (no retained blob diffs)
    net = Net(param, phase, source=getattr(param, "name", "net"), device=device, keep_blob_diffs=keep_blob_diffs)
    fill_net(net)
    return net


# -- measuring --------------------------------------------------------------------------------------
def run_end_to_end(net: Net, diffs: dict[str, Tensor], iterations: int) -> dict[str, Any]:
    """``iterations`` whole ``net.forward()`` + ``net.backward(diffs)`` passes, no per-layer marks."""
    e_f, e_b, e_fb = [], [], []
    for _ in range(iterations):
        f, b = end_to_end(net, diffs)
        e_f.append(f)
        e_b.append(b)
        e_fb.append(f + b)
    med = statistics.median
    return {
        "forward_ms_median": med(e_f), "backward_ms_median": med(e_b),
        "forward_backward_ms_median": med(e_fb), "forward_backward_ms_min": min(e_fb),
        "forward_backward_ms_mean": statistics.fmean(e_fb),
        "forward_backward_ms_all": [round(x, 3) for x in e_fb],
    }


def prepare(net: Net, warmup: int) -> dict[str, Tensor]:
    """A first forward, the output diffs, and ``warmup`` untimed forward+backward passes."""
    net.forward()
    diffs = output_diffs(net, torch.Generator().manual_seed(1))
    for _ in range(warmup):
        net.forward()
        net.backward(diffs)
    return diffs


def run_benchmark(net: Net, iterations: int, warmup: int = 2, log: Any = print) -> dict[str, Any]:
    """The passes end to end, then Caffe's ``time`` loop (per layer); all figures in ms."""
    diffs = prepare(net, warmup)
    e2e = run_end_to_end(net, diffs, iterations)
    names, types = net.layer_names, [lp.param.type for lp in net.plan.layers]
    per_fwd: list[list[float]] = [[] for _ in names]
    per_bwd: list[list[float]] = [[] for _ in names]
    sum_f, sum_b, iter_ms = [], [], []
    for j in range(iterations):
        p = timed_pass(net, diffs)
        for i in range(len(names)):
            per_fwd[i].append(p.forward[i])
            per_bwd[i].append(p.backward[i])
        sum_f.append(p.forward_total)
        sum_b.append(p.backward_total)
        iter_ms.append(p.forward_total + p.backward_total)
        log(f"Iteration: {j + 1} forward-backward time: {iter_ms[-1]:.4g} ms.")
    net.clear_param_diffs()
    med = statistics.median
    layers = [
        {"name": n, "type": t,
         "forward_ms": statistics.fmean(f), "backward_ms": statistics.fmean(b),
         "forward_ms_median": med(f), "backward_ms_median": med(b)}
        for n, t, f, b in zip(names, types, per_fwd, per_bwd)
    ]
    return {
        "iterations": iterations,
        "warmup": warmup,
        "top_diffs": sorted(diffs),
        "layers": layers,
        "per_layer": {  # Caffe's "Average Forward/Backward pass" (means) plus medians
            "forward_ms": statistics.fmean(sum_f), "backward_ms": statistics.fmean(sum_b),
            "forward_backward_ms": statistics.fmean(iter_ms),
            "forward_ms_median": med(sum_f), "backward_ms_median": med(sum_b),
            "forward_backward_ms_median": med(iter_ms),
        },
        "end_to_end": e2e,
    }


def caffe_work_param(param: Any) -> Any:
    """The net with ``propagate_down: false`` on every bottom: Caffe's ``time`` on a loss-less net
    (``bottom_need_backward`` all false), so backward computes parameter diffs only."""
    out = type(param)()
    out.CopyFrom(param)
    for lp in out.layer:
        del lp.propagate_down[:]
        lp.propagate_down.extend([False] * len(lp.bottom))
    return out


def run_caffe_work(net: Net, iterations: int, warmup: int = 2) -> dict[str, Any]:
    """End-to-end forward + backward of a ``caffe_work_param`` net: every layer's own tops that need
    a gradient (those of layers with parameters) get a standard-normal diff, as each of Caffe's
    layers reads its top diff; the layers' backwards are independent."""
    captured: list[Tensor] = []

    def grab(_m: Any, _inputs: Any, out: Any) -> None:
        captured.extend([out] if isinstance(out, Tensor) else list(out))

    handles = [layer.register_forward_hook(grab) for layer in net.layers]
    g = torch.Generator().manual_seed(2)
    diffs: list[Tensor] = []
    dev = net.device
    f_ms, b_ms = [], []
    try:
        for j in range(warmup + iterations):
            captured.clear()
            t0 = now(dev)
            net.forward()
            t1 = now(dev)
            tops = [t for t in captured if t.requires_grad]
            if not diffs:
                diffs = [torch.randn(t.shape, generator=g).to(dev, t.dtype) for t in tops]
            if tops:
                torch.autograd.backward(tops, diffs)
            t2 = now(dev)
            if j >= warmup:
                f_ms.append((t1 - t0) * 1e3)
                b_ms.append((t2 - t1) * 1e3)
    finally:
        for h in handles:
            h.remove()
    net.clear_param_diffs()
    med = statistics.median
    fb = [a + b for a, b in zip(f_ms, b_ms)]
    return {"forward_ms_median": med(f_ms), "backward_ms_median": med(b_ms), "forward_backward_ms_median": med(fb),
            "forward_backward_ms_all": [round(x, 3) for x in fb]}


def _g(x: float) -> str:
    return "%.5g" % x


def report(result: dict[str, Any], caffe: dict[str, Any] | None, log: Any = print) -> None:
    """Caffe's per-layer lines, then ours beside Caffe's."""
    log("Average time per layer: ")
    for lay in result["layers"]:
        log("%10s\tforward: %s ms." % (lay["name"], _g(lay["forward_ms"])))
        log("%10s\tbackward: %s ms." % (lay["name"], _g(lay["backward_ms"])))
    pl, e2e = result["per_layer"], result["end_to_end"]
    log(f"Average Forward pass: {_g(pl['forward_ms'])} ms.")
    log(f"Average Backward pass: {_g(pl['backward_ms'])} ms.")
    log(f"Average Forward-Backward: {_g(pl['forward_backward_ms'])} ms.")
    log(f"End to end (net.forward + net.backward, median of {result['iterations']}): forward "
        f"{_g(e2e['forward_ms_median'])} ms, backward {_g(e2e['backward_ms_median'])} ms, "
        f"forward-backward {_g(e2e['forward_backward_ms_median'])} ms.")
    cw = result.get("caffe_work_end_to_end")
    if cw:
        log(f"End to end with Caffe's time work (parameter diffs only): forward {_g(cw['forward_ms_median'])} ms, "
            f"backward {_g(cw['backward_ms_median'])} ms, forward-backward {_g(cw['forward_backward_ms_median'])} ms.")
    if not caffe:
        return
    cl = caffe["layers"]
    log("")
    log("%-10s %10s %10s %10s %10s   (ms; ours = mean over iterations)" % ("layer", "fwd", "caffe", "bwd", "caffe"))
    for lay in result["layers"]:
        c = cl.get(lay["name"], {})
        log("%-10s %10.3f %10s %10.3f %10s" % (lay["name"], lay["forward_ms"], _g(c.get("forward_ms", float("nan"))),
                                               lay["backward_ms"], _g(c.get("backward_ms", float("nan")))))
    for k, v in result.get("ratio", {}).items():
        log(f"ratio {k}: {v:.3f}")


def ratios(result: dict[str, Any], caffe: dict[str, Any] | None) -> dict[str, float]:
    if not caffe or not caffe.get("forward_backward_ms"):
        return {}
    e2e, pl = result["end_to_end"], result["per_layer"]
    out = {
        "end_to_end_forward_backward_vs_caffe_average": e2e["forward_backward_ms_median"] / caffe["forward_backward_ms"],
        "per_layer_forward_backward_vs_caffe_average": pl["forward_backward_ms_median"] / caffe["forward_backward_ms"],
        "end_to_end_forward_vs_caffe_forward": e2e["forward_ms_median"] / caffe["forward_ms"],
        "end_to_end_backward_vs_caffe_backward": e2e["backward_ms_median"] / caffe["backward_ms"],
    }
    cw = result.get("caffe_work_end_to_end")
    if cw:
        out["caffe_work_forward_backward_vs_caffe_average"] = cw["forward_backward_ms_median"] / caffe["forward_backward_ms"]
    if caffe.get("forward_backward_ms_median_after_first"):
        out["end_to_end_forward_backward_vs_caffe_steady_median"] = (
            e2e["forward_backward_ms_median"] / caffe["forward_backward_ms_median_after_first"])
    for name, v in result.get("allocator_variants_end_to_end", {}).items():
        if "forward_backward_ms_median" in v:
            out[f"allocator_{name}_forward_backward_vs_caffe_average"] = (
                v["forward_backward_ms_median"] / caffe["forward_backward_ms"])
    return out


# CPU allocator settings read at process start (no code change): PyTorch's huge-page backing of large
# tensors, and glibc keeping freed memory instead of unmapping it (fc6's 151 MB weight diff is
# otherwise a fresh mmap, page-faulted anew, every iteration)
ALLOCATOR_VARIANTS = {
    "thp": {"THP_MEM_ALLOC_ENABLE": "1"},
    "glibc_keep_freed": {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296"},
}


def _common_args(args: argparse.Namespace) -> list[str]:
    out = ["--iterations", str(args.iterations), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--batch", str(args.batch), "--phase", args.phase, "--model", args.model]
    return out + (["--keep-blob-diffs"] if args.keep_blob_diffs else [])


def allocator_variants(args: argparse.Namespace) -> dict[str, Any]:
    """End to end on the CPU in a fresh process per allocator setting (they act at process start)."""
    out: dict[str, Any] = {}
    for name, env in ALLOCATOR_VARIANTS.items():
        cmd = [sys.executable, str(Path(__file__).resolve()), "--device", "cpu", "--e2e-only"] + _common_args(args)
        proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("E2E_JSON ")]
        if proc.returncode or not lines:
            out[name] = {"env": env, "error": (proc.stderr or proc.stdout)[-2000:]}
            continue
        out[name] = {"env": env, **json.loads(lines[-1][len("E2E_JSON "):])}
        print(f"allocator variant {name} {env}: forward-backward "
              f"{_g(out[name]['forward_backward_ms_median'])} ms (median)")
    return out


def bench_device(device: str, args: argparse.Namespace, caffe: dict[str, Any] | None) -> dict[str, Any]:
    if device == "cpu":
        torch.set_num_threads(args.threads)
    phase = {"TRAIN": TRAIN, "TEST": TEST}[args.phase]
    param = alexnet_param(args.batch, Path(args.model))
    net = build_net(param, device, phase, args.keep_blob_diffs)
    load_before = load_average()
    result = run_benchmark(net, args.iterations, args.warmup)
    del net
    if args.caffe_work:
        result["caffe_work_end_to_end"] = run_caffe_work(
            build_net(caffe_work_param(param), device, phase, args.keep_blob_diffs), args.iterations, args.warmup)
    if device == "cpu" and args.allocator_variants:
        result["allocator_variants_end_to_end"] = allocator_variants(args)
    result["ratio"] = ratios(result, caffe) if (device == "cpu" and args.batch == 2) else {}
    report(result, caffe)
    info = {
        "benchmark": "AlexNet deploy (models/bvlc_alexnet/deploy.prototxt), layer-wise forward/backward "
                     "(Caffe's `caffe time`) and end to end",
        "device_type": torch.device(device).type,
        "device": device_name(device),
        "threads": torch.get_num_threads() if device == "cpu" else None,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "batch": args.batch,
        "phase": args.phase,
        "keep_blob_diffs": args.keep_blob_diffs,
        "env": {k: os.environ[k] for k in ("THP_MEM_ALLOC_ENABLE", "OMP_NUM_THREADS", "LD_PRELOAD",
                                           "GLIBC_TUNABLES") if k in os.environ},
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    info.update(result)
    info["caffe_reference"] = caffe
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="all", help="cpu, cuda, cuda:N or all (cpu, and cuda when available)")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--phase", default="TRAIN", choices=("TRAIN", "TEST"), help="TRAIN: Caffe time's default")
    ap.add_argument("--keep-blob-diffs", action="store_true", help="retain every blob's diff (pycaffe's blob.diff)")
    ap.add_argument("--no-caffe-work", dest="caffe_work", action="store_false",
                    help="skip the end-to-end pass with Caffe's work (parameter diffs only, no bottom diffs)")
    ap.add_argument("--no-allocator-variants", dest="allocator_variants", action="store_false",
                    help="skip the end-to-end runs under other CPU allocator settings (ALLOCATOR_VARIANTS)")
    ap.add_argument("--e2e-only", action="store_true", help=argparse.SUPPRESS)  # one variant's child process
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--caffe-log", default=str(CAFFE_LOG))
    ap.add_argument("--out", default=None, help="result JSON (one device); default benchmarks/results/...")
    args = ap.parse_args(argv)
    if args.device == "all":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    if args.e2e_only:
        torch.set_num_threads(args.threads)
        phase = {"TRAIN": TRAIN, "TEST": TEST}[args.phase]
        net = build_net(alexnet_param(args.batch, Path(args.model)), devices[0], phase, args.keep_blob_diffs)
        print("E2E_JSON " + json.dumps(run_end_to_end(net, prepare(net, args.warmup), args.iterations)))
        return 0
    caffe = parse_caffe_time_log(Path(args.caffe_log))
    for device in devices:
        print(f"*** {device}: {device_name(device)} ***")
        info = bench_device(device, args, caffe)
        kind = torch.device(device).type
        out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"layers_alexnet_deploy_{kind}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(info, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
