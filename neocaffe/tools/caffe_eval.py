"""caffe_eval: top-1/top-5 accuracy of a net on an image list, for the centre crop and for the
10-crop average (AlexNet's test-time recipe: the four corner crops, the centre crop and their
mirrors, softmax outputs averaged).

    caffe_eval -model deploy.prototxt -weights w.caffemodel [FLAGS] SOURCE

SOURCE is a ``val.txt`` list as ``convert_imageset`` reads it (``<file> <label>`` per line, files under
``-root_folder``), or a folder tree with one sub-folder per class (ILSVRC's ``train/n01440764/*.JPEG``,
or ``val/`` sorted into class folders): classes are the sorted sub-folder names, indices 0, 1, ...
(the order of ``synset_words.txt``).

Each image is read as ``convert_imageset`` reads it (``cv2.imread``, BGR; gray for a one-channel net) and
resized with ``cv2.resize`` INTER_LINEAR to ``-resize`` (256: 256 x 256). Crops have the net's input size;
the centre crop starts at ``((H - h) // 2, (W - w) // 2)`` as Caffe's TEST transform does. Every crop is
``(pixel - mean) * scale`` with the mean (``-mean_file``, a ``.binaryproto`` of the resized size, taken at
each pixel's source position as Caffe's transformer does, mirrored crops included; or ``-mean_value``)
subtracted by ``neocaffe.data.transformer.transform_batch`` on the device that runs the net. Scores are
the ``-blob`` output (default: the last Softmax layer's top, else the net's last output with a softmax
applied). A crop counts as correct at top-k as Caffe's Accuracy layer counts it: fewer than k other
classes score at least the true class's score.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from neocaffe.cli.log import glog_to_stderr
from neocaffe.flags import Flag, run_tool
from neocaffe.data.sources import DataSourceError, read_image_list
from neocaffe.data.transformer import load_mean_file, transform_batch

log = logging.getLogger("neocaffe.tools.caffe_eval")

__all__ = ["EvalResult", "list_items", "ten_crop_origins", "topk_correct", "evaluate", "run", "main"]

FLAGS = {
    "model": Flag(str, "", "The deploy (or train_val) net prototxt"),
    "weights": Flag(str, "", "The trained .caffemodel[.h5]"),
    "root_folder": Flag(str, "", "Folder the list's file names are relative to"),
    "mean_file": Flag(str, "", "A .binaryproto mean of the resized image size"),
    "mean_value": Flag(str, "", "Per-channel means (BGR order), e.g. 104,117,123"),
    "scale": Flag(float, 1.0, "Multiply (pixel - mean) by this, as transform_param.scale"),
    "resize": Flag(str, "256", "Resize images to H,W (one number: square) before cropping"),
    "batch_size": Flag(int, 100, "Crops per forward pass"),
    "gpu": Flag(int, -1, "Run on this CUDA device (-1: CPU)"),
    "blob": Flag(str, "", "Output blob holding class scores (default: the last Softmax top)"),
    "threads": Flag(int, 4, "Threads decoding and resizing images"),
    "limit": Flag(int, 0, "Evaluate only the first N images (0: all)"),
    "output": Flag(str, "", "Write the per-image centre and 10-crop probabilities and labels (.npz)"),
    "json": Flag(str, "", "Write the accuracies as JSON"),
}
USAGE = ("Top-1/top-5 accuracy of a net on an image list: centre crop and the 10-crop average.\nUsage:\n"
         "    caffe_eval -model deploy.prototxt -weights w.caffemodel [FLAGS] (LISTFILE | CLASS_FOLDER_TREE)\n")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class EvalResult:
    """Per-image probabilities (N x C) of the centre crop and of the 10-crop average, the labels, and
    the accuracies {"centre": {1: .., 5: ..}, "ten_crop": {...}}."""

    centre: np.ndarray
    ten_crop: np.ndarray
    labels: np.ndarray
    accuracy: dict[str, dict[int, float]]


def list_items(source: str, root_folder: str = "") -> list[tuple[str, int]]:
    """(path, label) for a list file (paths joined to ``root_folder`` as convert_imageset does) or a
    class-folder tree (label = index of the sorted sub-folder)."""
    if os.path.isdir(source):
        classes = sorted(d for d in os.listdir(source) if os.path.isdir(os.path.join(source, d)))
        items = [(os.path.join(source, c, f), k) for k, c in enumerate(classes)
                 for f in sorted(os.listdir(os.path.join(source, c))) if f.lower().endswith(IMAGE_EXTS)]
        if not items:
            raise DataSourceError(f"{source}: no class sub-folders with images ({', '.join(IMAGE_EXTS)})")
        return items
    return [(root_folder + e.path, e.label) for e in read_image_list(source, "caffe_eval list")]


def ten_crop_origins(height: int, width: int, ch: int, cw: int) -> list[tuple[int, int]]:
    """(top, left) of the four corner crops and the centre crop (Caffe's TEST centre)."""
    return [(0, 0), (0, width - cw), (height - ch, 0), (height - ch, width - cw),
            ((height - ch) // 2, (width - cw) // 2)]


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Caffe's Accuracy rule per row: fewer than ``k`` other classes score >= the true class."""
    true = scores[np.arange(len(labels)), labels][:, None]
    return (scores >= true).sum(1) - 1 < k


def _read(path: str, size: tuple[int, int], color: bool) -> np.ndarray:
    import cv2

    img = cv2.imread(path, cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DataSourceError(f"could not read image '{path}'")
    if img.shape[:2] != size:
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return img.reshape(size[0], size[1], -1).transpose(2, 0, 1)  # C x H x W uint8


def _score_blob(net: Any, blob: str) -> tuple[str, bool]:
    """(blob, already probabilities): ``blob`` if given, else the last Softmax layer's top, else the
    net's last output (a softmax is applied to it)."""
    softmax_tops = [lp.tops[0] for lp in net.plan.layers if lp.param.type == "Softmax"]
    if blob:
        if blob not in net.blob_names:
            raise DataSourceError(f"-blob '{blob}': no such blob; the net has {', '.join(net.blob_names)}")
        return blob, blob in softmax_tops
    if softmax_tops:
        return softmax_tops[-1], True
    return net.outputs[-1], False


def evaluate(net: Any, items: Sequence[tuple[str, int]], *, resize: tuple[int, int] = (256, 256),
             mean: np.ndarray | None = None, mean_values: Sequence[float] | None = None, scale: float = 1.0,
             batch_size: int = 100, blob: str = "", threads: int = 4) -> EvalResult:
    """Score ``net`` (a neocaffe Net, one image input) on ``items``; see the module docstring."""
    in_ = net.inputs[0]
    n_in, channels, ch, cw = net.blob_shapes[in_]
    height, width = resize
    if ch > height or cw > width:
        raise DataSourceError(f"the net's input is {ch}x{cw} but images are resized to {height}x{width}")
    if mean is not None and tuple(mean.shape) != (channels, height, width):
        raise DataSourceError(f"mean_file is {'x'.join(map(str, mean.shape))}; expected {channels}x{height}x{width}"
                              " (the resized image size)")
    out_blob, is_prob = _score_blob(net, blob)
    dev = net.device
    mean_t = torch.from_numpy(np.ascontiguousarray(mean, np.float32)).to(dev) if mean is not None else None
    mv = None
    if mean_values is not None and len(mean_values):
        vals = list(mean_values) * (channels if len(mean_values) == 1 else 1)
        if len(vals) != channels:
            raise DataSourceError(f"-mean_value gives {len(mean_values)} values; expected 1 or {channels}")
        mv = torch.tensor(vals, dtype=torch.float32, device=dev)
    origins = ten_crop_origins(height, width, ch, cw)
    offsets = torch.tensor(origins * 2, dtype=torch.int64)  # 5 crops, then the same 5 mirrored
    mirror = torch.tensor([False] * 5 + [True] * 5)
    per_batch = max(1, batch_size // 10)
    if n_in != per_batch * 10:
        net.set_blob(in_, torch.zeros((per_batch * 10, channels, ch, cw), device=dev))
        net.reshape()
    probs = np.zeros((len(items), 10, 0), np.float32)
    started, done = time.time(), 0
    with ThreadPoolExecutor(max(1, threads)) as pool, torch.no_grad():
        for b0 in range(0, len(items), per_batch):
            chunk = items[b0:b0 + per_batch]
            images = list(pool.map(lambda it: _read(it[0], (height, width), channels != 1), chunk))
            x = torch.from_numpy(np.stack(images)).to(dev)  # n x C x H x W uint8
            crops = torch.stack([torch.stack([img[:, y:y + ch, l:l + cw] for y, l in origins]) for img in x])
            crops = torch.cat([crops, crops.flip(-1)], 1).reshape(-1, channels, ch, cw)
            n = len(chunk)
            data = transform_batch(crops, offsets.repeat(n, 1), mirror.repeat(n), scale=scale, mean=mean_t,
                                   mean_values=mv if mean_t is None else None)
            if n < per_batch:  # the last batch: pad to the net's batch
                data = torch.cat([data, data.new_zeros((10 * (per_batch - n),) + tuple(data.shape[1:]))])
            net.forward({in_: data})
            scores = net.blob(out_blob).reshape(per_batch * 10, -1).float()
            if not is_prob:
                scores = torch.softmax(scores, 1)
            scores = scores[:10 * n].reshape(n, 10, -1).cpu().numpy()
            if probs.shape[2] == 0:
                probs = np.zeros((len(items), 10, scores.shape[2]), np.float32)
            probs[b0:b0 + n] = scores
            done += n
            if done == len(items) or (b0 // per_batch) % 50 == 49:
                log.info("Evaluated %d/%d images (%.1f images/s)", done, len(items), done / (time.time() - started))
    labels = np.array([lab for _, lab in items], np.int64)
    if len(labels) and labels.max() >= probs.shape[2]:
        raise DataSourceError(f"label {labels.max()} is out of range: the net scores {probs.shape[2]} classes")
    centre, ten = probs[:, 4], probs.mean(1)
    acc = {name: {k: float(topk_correct(p, labels, k).mean()) for k in (1, 5)}
           for name, p in (("centre", centre), ("ten_crop", ten))}
    return EvalResult(centre, ten, labels, acc)


def _ints(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise DataSourceError(f"-{what} '{text}': expected comma-separated numbers") from None


def run(source: str, *, model: str, weights: str, root_folder: str, mean_file: str, mean_value: str,
        scale: float, resize: str, batch_size: int, gpu: int, blob: str, threads: int, limit: int,
        output: str, json: str) -> EvalResult:
    """The command: load the net, read ``source``, evaluate, log and write the results."""
    import json as json_mod

    from neocaffe.export.deploy import load_deploy_net

    if not model or not weights:
        raise DataSourceError("-model and -weights are required")
    if mean_file and mean_value:
        raise DataSourceError("give -mean_file or -mean_value, not both")
    size = [int(v) for v in _ints(resize, "resize")]
    hw = (size[0], size[-1])
    items = list_items(source, root_folder)
    items = items[:limit] if limit > 0 else items
    device = torch.device(f"cuda:{gpu}") if gpu >= 0 else torch.device("cpu")
    net = load_deploy_net(model, weights, batch=max(1, batch_size // 10) * 10, device=device)
    if len(net.inputs) != 1 or len(net.blob_shapes[net.inputs[0]]) != 4:
        raise DataSourceError(f"{model}: expected one N x C x H x W input; the net has inputs {net.inputs}")
    log.info("Evaluating %d images from %s on %s", len(items), source, device)
    res = evaluate(net, items, resize=hw, mean=load_mean_file(mean_file) if mean_file else None,
                   mean_values=_ints(mean_value, "mean_value") if mean_value else None, scale=scale,
                   batch_size=batch_size, blob=blob, threads=threads)
    for name, title in (("centre", "centre crop"), ("ten_crop", "10 crops")):
        log.info("%s: top-1 = %.4f, top-5 = %.4f", title, res.accuracy[name][1], res.accuracy[name][5])
    if output:
        np.savez(output, centre=res.centre, ten_crop=res.ten_crop, labels=res.labels)
    if json:
        with open(json, "w") as f:
            json_mod.dump({"images": len(items), "top1_centre": res.accuracy["centre"][1],
                           "top5_centre": res.accuracy["centre"][5], "top1_10crop": res.accuracy["ten_crop"][1],
                           "top5_10crop": res.accuracy["ten_crop"][5]}, f, indent=1)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    with glog_to_stderr():
        return run_tool("caffe_eval", USAGE, FLAGS, list(sys.argv[1:] if argv is None else argv), 1, run,
                        (DataSourceError, OSError, ValueError), log)


if __name__ == "__main__":
    raise SystemExit(main())
