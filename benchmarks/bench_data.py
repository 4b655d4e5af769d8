"""How many images per second the Data layer delivers: ImageNet-style LMDB, crop 227, mirror, mean file.

Writes a temporary LMDB of synthetic 256x256 raw BGR Datums (``--images``, default 2048) with neocaffe's
own writer, computes its mean with compute_image_mean's code, then runs a TRAIN-phase Data layer
(``crop_size: 227 mirror: true mean_file``) through ``Net.forward`` and counts images per second:

* ``in_process``: no worker processes, one core does everything (read, parse, crop, float transform);
* ``workers_<k>``: ``k`` worker processes read and crop, the main process runs the float transform;
* ``cuda_workers_<k>`` (when CUDA is there): the uint8 crops cross to the GPU, mean/scale/mirror run
  there, and the tops are on the GPU.

Also reports the two halves on one core (host: read+decode+crop; transform: uint8 -> float32 with
mean/scale/mirror) so the per-core ceiling is visible. Writes benchmarks/results/data_<device>.json
(device name, torch version, date). Keep it short on CPU: a few thousand images, ~10 s per setting.

Run: ``python benchmarks/bench_data.py [--images 2048] [--batch 128] [--seconds 8] [--out PATH]``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_name  # noqa: E402
from neocaffe.data.datum import array_to_datum
from neocaffe.data.db_writer import DBWriter
from neocaffe.graph.net import Net
from neocaffe.io.binaryproto import write_blobproto
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import BuildContext
from neocaffe.tools.compute_image_mean import compute_mean


def cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def make_lmdb(path: str, n: int) -> float:
    """n synthetic 3x256x256 raw Datums (shifted patterns + noise); returns the seconds spent writing."""
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    base = np.stack([xx, yy * 2, xx + yy]).astype(np.int16)
    noise = [g.integers(-8, 9, base.shape, dtype=np.int16) for _ in range(8)]
    spent = 0.0
    with DBWriter(path, "lmdb") as db:
        for i in range(n):
            img = np.clip((base + 3 * i) % 256 + noise[i % 8], 0, 255).astype(np.uint8)
            t = time.perf_counter()
            db.put(f"{i:08d}_synthetic_{i}.JPEG", array_to_datum(img, i % 1000).SerializeToString())
            if (i + 1) % 1000 == 0:
                db.commit()
            spent += time.perf_counter() - t
    return spent


def net_text(source: str, mean: str, batch: int) -> str:
    return (f'name: "bench" layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }} '
            f'transform_param {{ crop_size: 227 mirror: true mean_file: "{mean}" }} '
            f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB prefetch: 4 }} }}')


def run(text: str, workers: int, device: str, seconds: float) -> dict:
    """Images/s of Net.forward for ``seconds`` after 3 warm-up batches."""
    net = Net(read_net(text), 0, device=device, context=BuildContext(data_workers=workers))
    batch = net.blob_shapes["data"][0]
    for _ in range(3):
        net.forward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        net.forward()
        n += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert net.blob_data["data"].shape == (batch, 3, 227, 227) and str(net.blob_data["data"].device).startswith(device)
    net.layer("data").close()
    return {"workers": workers, "device": device, "batches": n, "seconds": round(dt, 3),
            "images_per_s": round(n * batch / dt, 1),
            "main_process_cpu_ms_per_image": round(1000 * cpu / (n * batch), 3)}


def halves(text: str, seconds: float) -> dict:
    """Host part (read + parse + crop, one core) and the float transform (one core), images/s each."""
    net = Net(read_net(text), 0)
    layer = net.layer("data")
    maker = layer._maker()
    maker.open()
    hb = maker.make(0)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds / 2:
        hb = maker.make(n)
        n += 1
    host, host_cpu = n * layer.batch_size / (time.perf_counter() - t0), (time.process_time() - c0) / (n * layer.batch_size)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds / 2:
        layer.transformer.apply(hb)
        n += 1
    trans, trans_cpu = n * layer.batch_size / (time.perf_counter() - t0), (time.process_time() - c0) / (n * layer.batch_size)
    maker.close()
    return {"host_read_decode_crop_images_per_s": round(host, 1), "host_cpu_ms_per_image": round(1000 * host_cpu, 3),
            "float_transform_images_per_s": round(trans, 1), "float_transform_cpu_ms_per_image": round(1000 * trans_cpu, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU settings (GPU runs)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the main process's float transform: one core, as in the per-core figure
    tmp = tempfile.mkdtemp(prefix="bench_data_")
    src, mean_path = os.path.join(tmp, "lmdb"), os.path.join(tmp, "mean.binaryproto")
    write_s = make_lmdb(src, args.images)
    t = time.perf_counter()
    write_blobproto(mean_path, compute_mean(src), legacy=True)
    mean_s = time.perf_counter() - t
    text = net_text(src, mean_path, args.batch)
    n_cpu = cpus()
    results: dict = {}
    if not args.no_cpu:
        results["in_process"] = run(text, 0, "cpu", args.seconds)
        results.update(halves(text, args.seconds))
        for k in sorted({1, max(1, n_cpu - 1), n_cpu}):
            results[f"workers_{k}"] = run(text, k, "cpu", args.seconds)
    cuda = torch.cuda.is_available()
    if cuda:
        for k in sorted({max(1, n_cpu // 2), n_cpu - 1, n_cpu}):
            results[f"cuda_workers_{k}"] = run(text, k, "cuda", args.seconds)
    cpu_rates = [v["images_per_s"] for k, v in results.items() if isinstance(v, dict) and k.startswith("workers_")]
    device = torch.cuda.get_device_name(0) if cuda else f"CPU: {cpu_name()}, {n_cpu} logical cores"
    summary = {
        "benchmark": "Data layer, TRAIN: LMDB of 256x256 raw Datums, crop 227, mirror, mean file (Net.forward)",
        "device": device,
        "cpu": f"{cpu_name()}, {n_cpu} logical cores",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "images": args.images,
        "batch_size": args.batch,
        "lmdb_write_images_per_s": round(args.images / write_s, 1),
        "compute_image_mean_images_per_s": round(args.images / mean_s, 1),
        "per_core_images_per_s": results.get("in_process", {}).get("images_per_s"),
        "total_cpu_images_per_s": max(cpu_rates) if cpu_rates else None,
        "total_cuda_images_per_s": max((v["images_per_s"] for k, v in results.items() if k.startswith("cuda")),
                                       default=None),
        "results": results,
    }
    slug = re.sub(r"[^a-z0-9]+", "-", (torch.cuda.get_device_name(0) if cuda else cpu_name()).lower()).strip("-")
    out = Path(args.out or Path(__file__).parent / "results" / f"data_{slug}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
