"""Measurements for benchmarks/research_mnist.py: a trained LeNet variant's test accuracy (all test images),
per-layer filters / channels / ranks, convolution multiply-accumulates, and CPU forward time at batch 1 and 64
(all nets timed in the same interleaved rounds, so the machine's load falls on each alike)."""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

DROP = ("Data", "Accuracy", "SoftmaxWithLoss")


def deploy_net(train_test: Any, batch: int) -> Any:
    """The TEST net without its data and loss layers: an Input ``data`` of (batch, 1, 28, 28) to ``prob``."""
    from neocaffe.proto import caffe_pb2

    net = caffe_pb2.NetParameter()
    net.name = train_test.name
    inp = net.layer.add(name="data", type="Input")
    inp.top.append("data")
    inp.input_param.shape.add().dim.extend([batch, 1, 28, 28])
    last = None
    for lp in train_test.layer:
        if lp.type in DROP:
            continue
        net.layer.add().CopyFrom(lp)
        last = lp.top[0]
    prob = net.layer.add(name="prob", type="Softmax")
    prob.bottom.append(last)
    prob.top.append("prob")
    return net


def _pycaffe_net(train_test: Any, weights: str, batch: int, folder: Path) -> Any:
    import caffe
    from neocaffe.io.prototxt import write_prototxt

    path = folder / f"deploy_b{batch}.prototxt"
    write_prototxt(deploy_net(train_test, batch), path)
    return caffe.Net(str(path), weights, caffe.TEST)


def structure(train_test: Any, weights: str, folder: Path) -> dict:
    """Per original conv layer: filters, input channels, rank (lowrank's basis count, if decomposed);
    multiply-accumulates of every Convolution and InnerProduct layer for one image."""
    net = _pycaffe_net(train_test, weights, 1, folder)
    layers, conv_macs, fc_macs = {}, 0, 0
    for lp in deploy_net(train_test, 1).layer:
        if lp.type not in ("Convolution", "InnerProduct"):
            continue
        w = net.params[lp.name][0].data
        out = net.blobs[lp.top[0]].data
        macs = int(np.prod(out.shape[1:])) * int(np.prod(w.shape[1:]))
        if lp.type == "Convolution":
            conv_macs += macs
            base = lp.name.removesuffix("_lowrank").removesuffix("_linear")
            entry = layers.setdefault(base, {})
            if lp.name.endswith("_lowrank"):
                entry.update(rank=int(w.shape[0]), channels=int(w.shape[1]), kernel=list(w.shape[2:]))
            elif lp.name.endswith("_linear"):
                entry["filters"] = int(w.shape[0])
            else:
                entry.update(filters=int(w.shape[0]), channels=int(w.shape[1]), kernel=list(w.shape[2:]))
            entry["macs"] = entry.get("macs", 0) + macs
        else:
            fc_macs += macs
            layers[lp.name] = {"outputs": int(w.shape[0]), "inputs": int(w.shape[1]), "macs": macs}
    return {"layers": layers, "conv_macs": conv_macs, "fc_macs": fc_macs}


def accuracy(train_test_path: str, weights: str, test_iter: int) -> float:
    """Mean of the Accuracy top over ``test_iter`` TEST batches (100 x 100: the 10,000 test images)."""
    import caffe

    net = caffe.Net(train_test_path, weights, caffe.TEST)
    return float(np.mean([float(net.forward()["accuracy"]) for _ in range(test_iter)]))


def time_forwards(nets: dict[str, Any], rounds: int, min_seconds: float = 0.1, seed: int = 0) -> dict[str, dict]:
    """Median (and min) milliseconds per forward of each net over interleaved rounds: every round runs each
    net's block of forwards, in a new random order each round, each block after one untimed forward (so no
    net always follows the same neighbour, and a block never pays for the previous net's caches)."""
    import random

    rng = random.Random(seed)
    for net in nets.values():
        for _ in range(3):
            net.forward()
    per: dict[str, list[float]] = {k: [] for k in nets}
    reps = {}
    for k, net in nets.items():  # calibrate: enough forwards per block to take ~min_seconds
        t = time.perf_counter()
        for _ in range(3):
            net.forward()
        reps[k] = max(3, int(min_seconds / max((time.perf_counter() - t) / 3, 1e-5)))
    order = list(nets)
    for _ in range(rounds):
        rng.shuffle(order)
        for k in order:
            net = nets[k]
            net.forward()
            t = time.perf_counter()
            for _ in range(reps[k]):
                net.forward()
            per[k].append((time.perf_counter() - t) / reps[k] * 1e3)
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "rounds": len(v), "forwards_per_round": reps[k]}
            for k, v in per.items()}


def measure_all(work: Path, base_net: Any, baselines: dict, records: list, a: argparse.Namespace) -> dict:
    """Accuracy, structure and timing of every baseline and every arm that finished."""
    import torch

    from neocaffe.io.prototxt import read_net

    torch.set_num_threads(a.threads)
    folder = work / "measure"
    folder.mkdir(exist_ok=True)
    entries: dict[str, dict] = {}
    for seed, b in baselines.items():
        net_path = str(Path(b["dir"]) / "train_test.prototxt")
        entries[f"baseline/{seed}"] = {"kind": "baseline", "seed": seed, "net": net_path, "model": b["model"]}
    for i, rec in enumerate(records):
        if "error" not in rec:
            entries[f"arm{i}"] = {"kind": rec["config"]["arm"], "seed": rec["seed"], "net": rec["net"],
                                  "model": rec["model"], "record": i}
    nets = {}
    for key, e in entries.items():
        sub = folder / key.replace("/", "_")
        sub.mkdir(exist_ok=True)
        tt = read_net(e["net"])
        e["structure"] = structure(tt, e["model"], sub)
        # the solver's final test over all test images (the TEST net on the final weights)
        stage = baselines[e["seed"]] if e["kind"] == "baseline" else records[e["record"]]["tuned"]
        e["accuracy"] = stage["accuracy"][-1][1]
        for batch in (1, 64):
            nets[(key, batch)] = _pycaffe_net(tt, e["model"], batch, sub)
    load = {"before_timing": list(os.getloadavg())}
    for batch in (1, 64):
        timed = time_forwards({k: n for (k, b), n in nets.items() if b == batch}, a.timing_rounds, a.timing_seconds)
        for key, t in timed.items():
            entries[key][f"forward_b{batch}"] = t
        load[f"after_batch{batch}"] = list(os.getloadavg())
    # batch 1 again with PyTorch's oneDNN (mkldnn) convolutions off: a check of whether oneDNN's per-call cost is
    # what holds the batch-1 speedups down (reported beside the verdict)
    with torch.backends.mkldnn.flags(enabled=False):
        timed = time_forwards({k: n for (k, b), n in nets.items() if b == 1}, a.timing_rounds, a.timing_seconds, 1)
    for key, t in timed.items():
        entries[key]["forward_b1_no_onednn"] = t
    load["after_batch1_no_onednn"] = list(os.getloadavg())
    return {"entries": entries, "records": records, "baselines": baselines, "load_average": load}
