"""How fast neocaffe loads a 61M-parameter AlexNet .caffemodel, against real Caffe's 0.46 s.

Writes a synthetic AlexNet-shaped model (conv1 96x3x11x11 ... fc6 4096x9216, fc7 4096x4096,
fc8 1000x4096, plus biases: 60,965,224 float32) with neocaffe's own writer into a temporary folder, then
times ``neocaffe.io.load_weights`` in fresh processes (a real load: import excluded, every array read
into memory), 5 times with the file in the page cache (warm) and 5 times after asking the kernel to drop
it (cold: POSIX_FADV_DONTNEED; a virtual disk may still be served from the host's cache), plus 5
loads inside one process. Reports medians and writes benchmarks/results/load_caffemodel_<cpu>.json.

Run: ``python benchmarks/bench_load_caffemodel.py [--repeat 5] [--out PATH]``.
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
import tempfile
import time
from pathlib import Path

import numpy as np

CAFFE_SECONDS = 0.46  # real Caffe (C++) loading the 244 MB AlexNet caffemodel on this 2-core machine
ALEXNET = [("conv1", (96, 3, 11, 11)), ("conv2", (256, 48, 5, 5)), ("conv3", (384, 256, 3, 3)),
           ("conv4", (384, 192, 3, 3)), ("conv5", (256, 192, 3, 3)), ("fc6", (4096, 9216)),
           ("fc7", (4096, 4096)), ("fc8", (1000, 4096))]

CHILD = r"""
import os, sys, time
path, cold = sys.argv[1], sys.argv[2] == "1"
from neocaffe.io import load_weights
if cold:
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
t, c = time.perf_counter(), time.process_time()
layers = load_weights(path)
elapsed, cpu = time.perf_counter() - t, time.process_time() - c
assert sum(b.size for lw in layers for b in lw.blobs) == 60965224
print(elapsed, cpu)
"""


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def build_model(folder: Path) -> tuple[Path, float, list]:
    from neocaffe.io import LayerWeights, save_caffemodel

    rng = np.random.default_rng(0)
    layers = [LayerWeights(name, "Convolution" if name.startswith("conv") else "InnerProduct",
                           [rng.standard_normal(shape, dtype=np.float32),
                            rng.standard_normal(shape[0], dtype=np.float32)])
              for name, shape in ALEXNET]
    path = folder / "alexnet_synthetic.caffemodel"
    t = time.perf_counter()
    save_caffemodel(path, layers)
    return path, time.perf_counter() - t, layers


def child_times(path: Path, cold: bool, repeat: int) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds of the loading process) per fresh-process load."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    wall, cpu = [], []
    for _ in range(repeat):
        res = subprocess.run([sys.executable, "-c", CHILD, str(path), "1" if cold else "0"], env=env,
                             capture_output=True, text=True, check=True)
        w, c = res.stdout.strip().splitlines()[-1].split()
        wall.append(float(w))
        cpu.append(float(c))
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    from benchmarks.machine import cpu_name
    from neocaffe.io import load_weights

    with tempfile.TemporaryDirectory() as tmp:
        path, write_s, source = build_model(Path(tmp))
        loaded = load_weights(path)
        assert all(np.array_equal(a, b) for s, l in zip(source, loaded) for a, b in zip(s.blobs, l.blobs))
        del loaded, source
        load_before = os.getloadavg()
        warm, warm_cpu = child_times(path, cold=False, repeat=args.repeat)
        cold, cold_cpu = child_times(path, cold=True, repeat=args.repeat)
        inproc = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            layers = load_weights(path)
            inproc.append(time.perf_counter() - t)
            del layers
        size = path.stat().st_size
        load_after = os.getloadavg()

    cpu = cpu_name()
    result = {
        "benchmark": "load 61M-parameter AlexNet-shaped .caffemodel (neocaffe.io.load_weights)",
        "device": f"CPU: {cpu}, {os.cpu_count()} logical cores",
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "file_bytes": size,
        "parameters": 60965224,
        "write_seconds": round(write_s, 4),
        "load_seconds_warm_median": round(statistics.median(warm), 4),
        "load_seconds_cold_median": round(statistics.median(cold), 4),
        "load_seconds_in_process_median": round(statistics.median(inproc), 4),
        "load_cpu_seconds_warm_median": round(statistics.median(warm_cpu), 4),
        "load_cpu_seconds_cold_median": round(statistics.median(cold_cpu), 4),
        "load_seconds_warm_all": [round(x, 4) for x in warm],
        "load_seconds_cold_all": [round(x, 4) for x in cold],
        "load_seconds_in_process_all": [round(x, 4) for x in inproc],
        "loadavg_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "caffe_reference_seconds": CAFFE_SECONDS,
        "speedup_vs_caffe_warm": round(CAFFE_SECONDS / statistics.median(warm), 2),
        "method": "fresh process per load (import excluded), median of %d; warm = file in page cache, cold = "
                  "after posix_fadvise(DONTNEED) (a virtual disk may still hit the host cache); structure "
                  "walked through mmap, payloads read with os.preadv into fresh float32 arrays; cpu = process_time of the "
                  "loading process (user + system), robust to other load on the machine" % args.repeat,
    }
    out = args.out or Path(__file__).resolve().parent / "results" / f"load_caffemodel_{slug(cpu)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
