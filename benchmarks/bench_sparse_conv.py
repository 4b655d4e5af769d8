"""conv_mode on the CPU: the scnn branch's LOWERED_CCNMM and LOWERED_CSRMM against the dense convolution.

``python benchmarks/bench_sparse_conv.py`` measures two things and writes
``benchmarks/results/sparse_conv_<cpu>.json``:

1. ``layers``: AlexNet's five convolutions (BVLC deploy shapes and groups) and two of MobileNet v1's
   pointwise (1x1) ones (batch 1, one torch thread) with
   SSL-like structured zeros: a fraction of whole filters (rows) and of whole columns (channel x kernel
   position, per group) kept, the rest exactly 0 (random positions, seed 0). Each layer is our Convolution
   layer run three ways on the same weights: dense (``LOWERED_GEMM``), ``LOWERED_CCNMM``, ``LOWERED_CSRMM``;
   median of interleaved rounds. The patterns are synthetic; the shapes are AlexNet's.
2. ``lenet``: real weights. The BVLC LeNet trained by Caffe (../shared/realdata/lenet_v2_2016,
   ``lenet_iter_10000.caffemodel``) is trained on with SSL (``breadth_decay``/``kernel_shape_decay``, the
   scnn branch's fields, on conv1/conv2; our ``caffe train`` on real MNIST, LMDBs from our
   ``convert_mnist_data``), then run as a deploy net (Input to Softmax) four ways: dense, with
   ``conv_mode: LOWERED_CCNMM`` on both convolutions, pruned by our ``prune`` tool (a smaller dense net),
   and pruned with ``LOWERED_CCNMM``. Test accuracy over the 10,000 test images (forwards that record
   nothing, so conv_mode computes) and the forward time at batch 1 and 64 (interleaved rounds, median).

The stages are cached in ``--work`` (benchmarks/research_mnist.py's helpers). ``--smoke``: a slice of MNIST,
a few iterations, a few rounds, output into ``--work`` only (what the test runs).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "pycaffe_compat"), str(REPO / "benchmarks")]
LENET = REPO / ".." / "shared" / "realdata" / "lenet_v2_2016" / "lenet_iter_10000.caffemodel"

# AlexNet's convolutions (models/bvlc_alexnet/deploy.prototxt): name, input (C, H, W), num_output, kernel,
# stride, pad, group
ALEXNET = [("conv1", (3, 227, 227), 96, 11, 4, 0, 1), ("conv2", (96, 27, 27), 256, 5, 1, 2, 2),
           ("conv3", (256, 13, 13), 384, 3, 1, 1, 1), ("conv4", (384, 13, 13), 384, 3, 1, 1, 2),
           ("conv5", (384, 13, 13), 256, 3, 1, 1, 2)]
# and two of MobileNet v1's pointwise (1x1) convolutions (the zoo's mobilenet_v1 deploy.prototxt at 224x224)
POINTWISE = [("conv3_1/sep", (128, 56, 56), 128, 1, 1, 0, 1), ("conv5_1/sep", (512, 14, 14), 512, 1, 1, 0, 1)]
KEEP = [(1.0, 1.0), (0.8, 0.5), (0.6, 0.25), (0.5, 0.1)]  # (rows kept, columns kept)
MODES = ("LOWERED_GEMM", "LOWERED_CCNMM", "LOWERED_CSRMM")


def conv_layer(name: str, shape: tuple[int, ...], n: int, k: int, stride: int, pad: int, group: int, mode: str):
    from google.protobuf import text_format

    from neocaffe.layers import get_layer_class
    from neocaffe.layers.base import TEST
    from neocaffe.proto import caffe_pb2

    p = text_format.Parse(f'name: "{name}" type: "Convolution" bottom: "x" top: "y" convolution_param {{ '
                          f'num_output: {n} kernel_size: {k} stride: {stride} pad: {pad} group: {group} '
                          f'conv_mode: {mode} }}', caffe_pb2.LayerParameter())
    return get_layer_class("Convolution")(p, [(1,) + tuple(shape)], TEST)


def structured(shape: tuple[int, ...], group: int, rows: float, cols: float, seed: int):
    """A gaussian weight with whole rows (filters) and whole columns of each group's matrix zeroed."""
    import torch

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    o_g = shape[0] // group
    m = w.view(group, o_g, -1)
    for grp in range(group):
        m[grp, torch.randperm(o_g, generator=g)[round(o_g * rows):]] = 0
        m[grp, :, torch.randperm(m.shape[2], generator=g)[round(m.shape[2] * cols):]] = 0
    return w


def _median_ms(calls: dict[str, Any], rounds: int, min_seconds: float) -> dict[str, float]:
    """Median ms per call of each function over interleaved rounds (each round a block of calls per function)."""
    for f in calls.values():
        f()
        f()
    reps = {}
    for k, f in calls.items():
        t = time.perf_counter()
        f()
        reps[k] = max(2, int(min_seconds / max(time.perf_counter() - t, 1e-6)))
    per: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, f in calls.items():
            t = time.perf_counter()
            for _ in range(reps[k]):
                f()
            per[k].append((time.perf_counter() - t) / reps[k] * 1e3)
    return {k: statistics.median(v) for k, v in per.items()}


def bench_layers(rounds: int, min_seconds: float, layers: Sequence[tuple] = ALEXNET) -> list[dict]:
    import torch

    out = []
    for name, shape, n, k, stride, pad, group in layers:
        x = torch.randn((1,) + tuple(shape), generator=torch.Generator().manual_seed(1))
        for rows, cols in KEEP:
            convs = {m: conv_layer(name, shape, n, k, stride, pad, group, m) for m in MODES}
            w = structured(tuple(convs[MODES[0]].blobs[0].shape), group, rows, cols, seed=0)
            with torch.no_grad():
                for c in convs.values():
                    c.blobs[0].copy_(w)
                ref = convs["LOWERED_GEMM"](x)
                err = {m: float((convs[m](x) - ref).abs().max() / ref.abs().max()) for m in MODES[1:]}
                ms = _median_ms({m: (lambda c=c: c(x)) for m, c in convs.items()}, rounds, min_seconds)
            row = {"layer": name, "rows_kept": rows, "columns_kept": cols, "ms": ms,
                   "speedup": {m: ms["LOWERED_GEMM"] / ms[m] for m in MODES[1:]}, "max_rel_err": err}
            out.append(row)
            print(f"[sparse_conv] {name} rows {rows:.2f} cols {cols:.2f}: dense {ms['LOWERED_GEMM']:.3f} ms, "
                  f"CCNMM {ms['LOWERED_CCNMM']:.3f} ({row['speedup']['LOWERED_CCNMM']:.2f}x), "
                  f"CSRMM {ms['LOWERED_CSRMM']:.3f} ({row['speedup']['LOWERED_CSRMM']:.2f}x)", flush=True)
    return out


# -- LeNet with real weights ---------------------------------------------------------------------------------
def with_conv_mode(net: Any, mode: str) -> Any:
    from neocaffe.proto import caffe_pb2

    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    for lp in out.layer:
        if lp.type == "Convolution":
            lp.convolution_param.conv_mode = caffe_pb2.ConvolutionParameter.ConvMode.Value(mode)
    return out


def sparsity(net: Any, weights: str) -> dict[str, dict]:
    """Per Convolution layer: filters and columns (channel x position) whose weights are all exactly 0."""
    import numpy as np

    from neocaffe.io.weights import load_weights, weights_by_name

    stored = weights_by_name(load_weights(weights))
    out = {}
    for lp in net.layer:
        if lp.type == "Convolution":
            w = np.asarray(stored[lp.name].blobs[0]).reshape(len(stored[lp.name].blobs[0]), -1)
            out[lp.name] = {"filters": int(w.shape[0]), "zero_filters": int((w == 0).all(1).sum()),
                            "columns": int(w.shape[1]), "zero_columns": int((w == 0).all(0).sum()),
                            "zero_weights": float((w == 0).mean())}
    return out


def accuracy(train_test: Any, weights: str, folder: Path, name: str, test_iter: int) -> float:
    """Mean TEST accuracy over ``test_iter`` batches, every forward recording nothing (as a deploy forward)."""
    import caffe
    import numpy as np
    import torch

    from neocaffe.io.prototxt import write_prototxt

    path = folder / f"{name}_train_test.prototxt"
    write_prototxt(train_test, path)
    net = caffe.Net(str(path), weights, caffe.TEST)
    with torch.no_grad():
        return float(np.mean([float(net.forward()["accuracy"]) for _ in range(test_iter)]))


def bench_lenet(a: argparse.Namespace) -> dict:
    import caffe
    import torch
    from research_mnist import lenet, prepare_data, prune, ssl_net, train_stage
    from research_mnist_measure import deploy_net, time_forwards

    from neocaffe.io.prototxt import write_prototxt

    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(work, *((2000, 1000) if a.smoke else (None, None)))
    base = lenet(data)
    net = ssl_net(base, ("conv1", "conv2"))
    extra = {"breadth_decay": a.breadth_decay, "kernel_shape_decay": a.kernel_shape_decay}
    stage = train_stage(work, "ssl", net, extra, str(LENET), a.ssl_iters, 1701, a, a.ssl_iters)
    pdir = work / "pruned"
    pdir.mkdir(exist_ok=True)
    pruned_net, pruned_weights, _ = prune(pdir, base, stage["model"], 1e-4)
    variants = {"real LeNet (Caffe-trained), dense": (base, str(LENET)),
                "SSL, dense": (base, stage["model"]),
                "SSL, conv_mode LOWERED_CCNMM": (with_conv_mode(base, "LOWERED_CCNMM"), stage["model"]),
                "SSL, pruned (dense)": (pruned_net, pruned_weights),
                "SSL, pruned + LOWERED_CCNMM": (with_conv_mode(pruned_net, "LOWERED_CCNMM"), pruned_weights)}
    folder = work / "nets"
    folder.mkdir(exist_ok=True)
    result: dict[str, Any] = {"ssl": {"from": str(LENET.name), "iterations": a.ssl_iters, **extra,
                                      "seconds": stage["seconds"]},
                              "sparsity": sparsity(base, stage["model"]), "pruned_sparsity": sparsity(pruned_net, pruned_weights),
                              "variants": {}}
    for k, (tt, w) in enumerate(variants.items()):
        name, (train_test, weights) = tt, w
        result["variants"][name] = {"accuracy": accuracy(train_test, weights, folder, f"v{k}", a.test_iter)}
    torch.set_num_threads(a.threads)
    for batch in (1, 64):
        nets = {}
        for k, (name, (train_test, weights)) in enumerate(variants.items()):
            path = folder / f"v{k}_deploy_b{batch}.prototxt"
            write_prototxt(deploy_net(train_test, batch), path)
            nets[name] = caffe.Net(str(path), weights, caffe.TEST)
            nets[name].blobs["data"].data[...] = 0.5
        times = time_forwards(nets, a.rounds, a.seconds)
        base_ms = times["SSL, dense"]["median_ms"]
        for name, t in times.items():
            result["variants"][name][f"forward_b{batch}"] = {**t, "speedup_vs_ssl_dense": base_ms / t["median_ms"]}
    for name, v in result["variants"].items():
        print(f"[sparse_conv] {name}: accuracy {v['accuracy']:.4f}, batch 1 {v['forward_b1']['median_ms']:.3f} ms "
              f"({v['forward_b1']['speedup_vs_ssl_dense']:.2f}x), batch 64 {v['forward_b64']['median_ms']:.2f} ms "
              f"({v['forward_b64']['speedup_vs_ssl_dense']:.2f}x)", flush=True)
    return result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(REPO / "runs" / "sparse_conv"), help="cache of the training stages")
    ap.add_argument("--ssl-iters", type=int, default=1500, help="SSL iterations from the real LeNet")
    ap.add_argument("--breadth-decay", type=float, default=0.01)
    ap.add_argument("--kernel-shape-decay", type=float, default=0.003)
    ap.add_argument("--test-iter", type=int, default=100, help="test batches of 100 (100: all 10,000 images)")
    ap.add_argument("--test-interval", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--seconds", type=float, default=0.1, help="time of one block of calls per round")
    ap.add_argument("--parts", default="layers,lenet")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/sparse_conv_<cpu>.json)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    import os

    import torch
    from machine import cpu_name, load_average

    a = build_parser().parse_args(argv)
    os.environ.setdefault("NEOCAFFE_DATA_WORKERS", "0")
    if a.smoke:
        a.ssl_iters, a.test_iter, a.rounds, a.seconds = 6, 2, 2, 0.005
    torch.set_num_threads(a.threads)
    started = time.perf_counter()
    cpu = cpu_name()
    res: dict[str, Any] = {"device": cpu, "torch": torch.__version__, "threads": a.threads,
                           "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_before": load_average(),
                           "command": "python benchmarks/bench_sparse_conv.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    parts = a.parts.split(",")
    if "layers" in parts:
        res["layers"] = bench_layers(a.rounds, a.seconds, ALEXNET[:1] if a.smoke else ALEXNET + POINTWISE)
    if "lenet" in parts:
        res["lenet"] = bench_lenet(a)
    res["load_average_after"] = load_average()
    res["seconds"] = time.perf_counter() - started
    slug = "-".join(cpu.lower().replace("(r)", "").split()[:2])
    out = Path(a.out) if a.out else (Path(a.work) / "sparse_conv.json" if a.smoke else
                                     REPO / "benchmarks" / "results" / f"sparse_conv_{slug}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"[sparse_conv] wrote {out} in {res['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
