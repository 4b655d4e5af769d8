"""Timing of the Faster R-CNN / R-FCN layers at the sizes their published nets run.

* ``ROIPooling``: ZF on a 224 x 224 image (conv5 256 x 15 x 15, 6 x 6 bins) and VGG16 on 600 x 1000
  (conv5 512 x 38 x 63, 7 x 7 bins), 300 RoIs (RPN_POST_NMS_TOP_N at test), forward and forward+backward;
* ``PSROIPooling``: R-FCN's classifier (21 x 7 x 7 score maps, 38 x 63), 300 RoIs;
* ``Proposal``: py-faster-rcnn's test settings on a 38 x 63 score map (21546 anchors).

Medians over ``--iterations``; writes benchmarks/results/rcnn_layers_<device>.json (device, torch
version, date, threads, load averages before and after). Run:
``python benchmarks/bench_rcnn.py [--device cpu|cuda] [--iterations 10] [--threads 2]``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from google.protobuf import text_format

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import device_name, load_average  # noqa: E402
from neocaffe.layers.registry import get_layer_class  # noqa: E402
from neocaffe.proto import caffe_pb2  # noqa: E402


def _layer(text: str, shapes: list[tuple[int, ...]], device: str) -> Any:
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(param.type)(param, shapes).to(device)


def _rois(n: int, width: float, height: float, device: str) -> torch.Tensor:
    rng = np.random.default_rng(0)
    x1, y1 = rng.uniform(0, 0.8 * width, n), rng.uniform(0, 0.8 * height, n)
    boxes = [np.zeros(n), x1, y1, x1 + rng.uniform(16, 0.6 * width, n), y1 + rng.uniform(16, 0.6 * height, n)]
    return torch.tensor(np.stack(boxes, 1), dtype=torch.float32, device=device)


def _median_ms(fn: Callable[[], Any], iterations: int, device: str) -> float:
    fn()
    times = []
    for _ in range(iterations):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def cases(device: str) -> dict[str, Callable[[], Any]]:
    out: dict[str, Callable[[], Any]] = {}
    for name, shape, pooled, size in (("ROIPooling ZF 224", (1, 256, 15, 15), 6, (224, 224)),
                                      ("ROIPooling VGG16 600x1000", (1, 512, 38, 63), 7, (1000, 600))):
        x = torch.randn(shape, device=device)
        xg = x.clone().requires_grad_(True)
        rois = _rois(300, *size, device)
        layer = _layer(f'name: "r" type: "ROIPooling" top: "y" roi_pooling_param {{ pooled_h: {pooled} '
                       f'pooled_w: {pooled} spatial_scale: 0.0625 }}', [shape, tuple(rois.shape)], device)
        out[f"{name} forward"] = lambda layer=layer, x=x, rois=rois: layer(x, rois)
        out[f"{name} forward+backward"] = lambda layer=layer, x=xg, rois=rois: layer(x, rois).sum().backward()
    x = torch.randn(1, 21 * 49, 38, 63, device=device)
    rois = _rois(300, 1000, 600, device)
    ps = _layer('name: "p" type: "PSROIPooling" top: "y" psroi_pooling_param { spatial_scale: 0.0625 output_dim: 21 '
                'group_size: 7 }', [tuple(x.shape), tuple(rois.shape)], device)
    out["PSROIPooling R-FCN 600x1000 forward"] = lambda: ps(x, rois)
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(1, 18, 38, 63, generator=g).to(device)
    deltas = (0.3 * torch.randn(1, 36, 38, 63, generator=g)).to(device)
    info = torch.tensor([[600.0, 1000.0, 1.6]], device=device)
    prop = _layer('name: "p" type: "Proposal" top: "rois" proposal_param { feat_stride: 16 }',
                  [tuple(scores.shape), tuple(deltas.shape), (1, 3)], device)
    out["Proposal 38x63 test settings"] = lambda: prop(scores, deltas, info)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = load_average()
    figures = {name: round(_median_ms(fn, args.iterations, args.device), 3) for name, fn in cases(args.device).items()}
    for name, ms in figures.items():
        print(f"{name:45s} {ms:10.2f} ms")
    result = {"device": device_name(args.device), "torch": torch.__version__, "date": datetime.date.today().isoformat(),
              "threads": args.threads, "iterations": args.iterations, "load_average_before": load_before,
              "load_average_after": load_average(), "median_ms": figures}
    path = ROOT / "benchmarks" / "results" / f"rcnn_layers_{args.device}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
