"""DenseCRF on the CPU: one PASCAL VOC-sized image through DeepLab's CRF settings.

``python benchmarks/bench_dense_crf.py`` times our ``DenseCRF`` layer (forward; median, min, max of ``--rounds``)
on a 500 x 375 image with 21 labels and DeepLab v2's VOC CRF parameters (``max_iter: 10``, ``pos_w: 3``,
``pos_xy_std: 3``, ``bi_w: 4``, ``bi_xy_std: 121``, ``bi_rgb_std: 5``), for each ``--threads`` count, with
the split into lattice construction, filtering and normalization from one profiled round, and writes
``benchmarks/results/dense_crf_<cpu>.json``. The scores are Gaussian noise and the image piecewise
constant (16 x 16 blocks), so the bilateral lattice has the sparsity of a real photo's.
``--smoke``: a 60 x 50 image, one round (what the test runs). ``--fork-cpp-s``: the fork's own C++ on the
same input, timed apart (1 thread), recorded as ``fork_cpp_s`` beside our figures.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

PARAM = ('name: "crf" type: "DenseCRF" bottom: "fc8" bottom: "data_dim" bottom: "data" top: "crf" dense_crf_param { '
         "max_iter: 10 pos_w: 3 pos_xy_std: 3 bi_w: 4 bi_xy_std: 121 bi_rgb_std: 5 }")


def inputs(h: int, w: int, labels: int, seed: int = 0) -> tuple[Any, Any, Any]:
    import numpy as np
    import torch

    g = np.random.default_rng(seed)
    scores = torch.from_numpy((g.standard_normal((1, labels, h, w)) * 3).astype(np.float32))
    blocks = g.uniform(-100, 100, (1, 3, h // 16 + 1, w // 16 + 1))
    image = torch.from_numpy(np.repeat(np.repeat(blocks, 16, 2), 16, 3)[:, :, :h, :w].astype(np.float32).copy())
    return scores, torch.tensor([[[[float(h), float(w)]]]]), image


def split(layer: Any, args: tuple) -> dict[str, float]:
    """Seconds in lattice construction, filtering (splat and blur, slice) and exp-and-normalize, from
    one profiled forward (the profiler's overhead included)."""
    prof = cProfile.Profile()
    prof.runcall(layer, *args)
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    found: dict[str, float] = {}
    for (path, _, name), (_, _, _, cum, _) in stats.items():
        key = {("_permutohedral.py", "__init__"): "lattice_s", ("_permutohedral.py", "splat_blur"): "filter_s",
               ("_permutohedral.py", "slice"): "filter_s",
               ("dense_crf.py", "__call__"): "exp_and_normalize_s"}.get((Path(path).name, name))
        if key:
            found[key] = round(found.get(key, 0.0) + cum, 3)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    import torch
    from google.protobuf import text_format
    from machine import cpu_name, load_average

    from neocaffe.layers.registry import get_layer_class
    from neocaffe.proto import caffe_pb2

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/dense_crf_<cpu>.json)")
    ap.add_argument("--fork-cpp-s", type=float, default=None,
                    help="the fork's own C++ on the same input (1 thread), timed apart; recorded as fork_cpp_s")
    a = ap.parse_args(argv)
    h, w, labels, rounds = (50, 60, 5, 1) if a.smoke else (375, 500, 21, a.rounds)
    args = inputs(h, w, labels)
    param = text_format.Parse(PARAM, caffe_pb2.LayerParameter())
    layer = get_layer_class("DenseCRF")(param, [tuple(t.shape) for t in args])
    cpu = cpu_name()
    res: dict[str, Any] = {"device": cpu, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
                           "image": [h, w], "labels": labels, "param": PARAM, "rounds": rounds,
                           "load_average_before": load_average(),
                           "command": "python benchmarks/bench_dense_crf.py " + " ".join(sys.argv[1:] if argv is None else argv),
                           "runs": []}
    for threads in (int(t) for t in a.threads.split(",")):
        torch.set_num_threads(threads)
        layer(*args)  # warm-up
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            layer(*args)
            times.append(time.perf_counter() - t0)
        res["runs"].append({"threads": threads, "median_s": round(statistics.median(times), 3),
                            "min_s": round(min(times), 3), "max_s": round(max(times), 3), **split(layer, args)})
    res["load_average_after"] = load_average()
    if a.fork_cpp_s is not None:
        res["fork_cpp_s"] = a.fork_cpp_s
    slug = "-".join(cpu.lower().replace("(r)", "").split()[:2])
    out = Path(a.out) if a.out else REPO / "benchmarks" / "results" / f"dense_crf_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"[dense_crf] wrote {out}: " + ", ".join(f"{r['threads']} threads {r['median_s']} s" for r in res["runs"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
