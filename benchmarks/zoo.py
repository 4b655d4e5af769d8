"""The real public models of ``../shared/realdata/zoo_public_2026``: build, weights, inputs, OpenCV.

One place for what the zoo tests, the export tests and the speed/parity benchmarks all need:

* ``zoo_models()``: the model folders (name, deploy prototxt, shipped caffemodel or None);
* ``random_weights(net, seed)``: deterministic weights for a net whose repository ships none, scaled
  so activations stay O(1) through deep nets (He-style by fan-in), with the statistics blobs of
  normalization layers kept valid (variances positive, BatchNorm's scale factor 1);
* ``model_weights(model, net, folder)``: the real caffemodel, or random weights written to one in
  ``folder`` (so OpenCV reads the very same numbers);
* ``model_inputs(net, seed)``: one array per net input (the Faster R-CNN ``im_info`` is made
  meaningful: height, width, scale 1);
* ``opencv_forward(prototxt, caffemodel, inputs, outputs)``: the same forward through OpenCV dnn, of
  the prototxt as OpenCV reads it (``opencv_net_text``: py-faster-rcnn's Python proposal layer becomes
  OpenCV's native ``Proposal``, since OpenCV runs no Python layers).

Layer types whose blobs need more than the default rule add an entry to ``BLOB_RULES``.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ZOO = Path(os.environ.get("NEOCAFFE_SHARED", REPO.parent / "shared")) / "realdata" / "zoo_public_2026"


@dataclass(frozen=True)
class ZooModel:
    """One model folder: ``name`` (folder name), ``prototxt``, ``weights`` (shipped caffemodel or None)."""

    name: str
    prototxt: Path
    weights: Path | None


def zoo_models(root: Path = ZOO) -> list[ZooModel]:
    """Every model folder under ``root`` (empty when the folder is absent), sorted by name."""
    if not root.is_dir():
        return []
    out = []
    for d in sorted(p for p in root.iterdir() if (p / "deploy.prototxt").exists()):
        w = d / "weights.caffemodel"
        out.append(ZooModel(d.name, d / "deploy.prototxt", w if w.exists() else None))
    return out


def zoo_model(name: str, root: Path = ZOO) -> ZooModel:
    for m in zoo_models(root):
        if m.name == name:
            return m
    raise KeyError(f"no zoo model '{name}' under {root}")


def _he(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (rng.standard_normal(shape) * np.sqrt(1.0 / max(fan_in, 1))).astype(np.float32)


def _small(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


def _batch_norm(shapes: list[tuple[int, ...]], rng: np.random.Generator) -> list[np.ndarray]:
    # Caffe's BatchNorm: mean, variance, moving-average scale factor
    out = [_small(shapes[0], rng), rng.uniform(0.5, 1.5, shapes[1]).astype(np.float32)]
    return out + [np.ones(s, np.float32) for s in shapes[2:]]


def _affine(shapes: list[tuple[int, ...]], rng: np.random.Generator) -> list[np.ndarray]:
    # Scale/PReLU-like: multipliers near 1, offsets small
    return [rng.uniform(0.5, 1.5, shapes[0]).astype(np.float32)] + [_small(s, rng) for s in shapes[1:]]


def _bn_fork(shapes: list[tuple[int, ...]], rng: np.random.Generator) -> list[np.ndarray]:
    # PSPNet / SegNet BN: scale, shift, and (when present) running mean and variance
    out = _affine(shapes[:2], rng)
    if len(shapes) > 2:
        out.append(_small(shapes[2], rng))
    if len(shapes) > 3:
        out.append(rng.uniform(0.5, 1.5, shapes[3]).astype(np.float32))
    return out + [np.ones(s, np.float32) for s in shapes[4:]]


#: layer type -> blobs from their shapes, for types the default (He weights, small biases) would break
BLOB_RULES: dict[str, Callable[[list[tuple[int, ...]], np.random.Generator], list[np.ndarray]]] = {
    "BatchNorm": _batch_norm,
    "BN": _bn_fork,
    "Scale": _affine,
    "PReLU": lambda shapes, rng: [rng.uniform(0.0, 0.5, s).astype(np.float32) for s in shapes],
}


def random_weights(net: Any, seed: int = 0) -> None:
    """Fill every parameter blob of ``net`` (a neocaffe ``Net``) in place, deterministically."""
    import torch

    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for layer in net.layers:
            blobs = list(layer.blobs)
            if not blobs:
                continue
            shapes = [tuple(b.shape) for b in blobs]
            rule = BLOB_RULES.get(layer.type_name)
            values = rule(shapes, rng) if rule else [_he(shapes[0], rng)] + [_small(s, rng) for s in shapes[1:]]
            for b, v in zip(blobs, values):
                b.copy_(torch.from_numpy(v))


def build(model: ZooModel, device: str = "cpu") -> Any:
    """``model``'s deploy net as a neocaffe ``Net`` in the TEST phase."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    return Net(read_net(str(model.prototxt)), 1, source=str(model.prototxt), device=device)


def model_weights(model: ZooModel, net: Any, folder: Path, seed: int = 0) -> Path:
    """Load the shipped weights into ``net``, or fill random ones and write them to
    ``folder/<name>.caffemodel``; returns the caffemodel that holds ``net``'s weights."""
    if model.weights is not None:
        net.copy_from(str(model.weights))
        return model.weights
    from neocaffe.io.weights import save_weights

    random_weights(net, seed)
    path = Path(folder) / f"{model.name}.caffemodel"
    save_weights(path, net.to_weights(), hdf5=False)
    return path


def model_inputs(net: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """One float32 array per net input, of the shape the prototxt declares."""
    rng = np.random.default_rng(seed + 1)
    out: dict[str, np.ndarray] = {}
    for name in net.inputs:
        shape = tuple(net.blob_shapes[name])
        if name == "im_info":  # Faster R-CNN: (height, width, scale) of the data blob
            h, w = net.blob_shapes[net.inputs[0]][2:]
            out[name] = np.tile(np.array([h, w, 1.0], np.float32), (shape[0], 1)).reshape(shape)
        else:
            out[name] = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    return out


def output_layers(net: Any) -> dict[str, str]:
    """Output blob -> the name of the last layer that writes it (what OpenCV's forward() takes)."""
    last: dict[str, str] = {}
    for lp in net.plan.layers:
        for t in lp.tops:
            last[t] = lp.param.name
    return {o: last[o] for o in net.outputs}


#: (python_param.module, python_param.layer) of py-faster-rcnn's proposal layer
PY_FASTER_RCNN_PROPOSAL = ("rpn.proposal_layer", "ProposalLayer")


def opencv_net_text(prototxt: Path) -> str:
    """``prototxt`` as OpenCV dnn reads it: py-faster-rcnn's ``Python`` proposal layer rewritten as
    OpenCV's ``Proposal`` with ``proposal_param`` from its ``param_str`` (``feat_stride``; ``scales``
    and ``ratios`` or py-faster-rcnn's defaults), the way OpenCV's own Faster R-CNN prototxts do.
    SENet's ``Axpy`` gets its bottoms 1 and 2 swapped: hujie-frank/SENet's ``axpy_layer.cpp`` computes
    ``a * bottom1 + bottom2``, OpenCV's importer (opencv/opencv#14682, ``caffe_importer.cpp``)
    ``a * bottom2 + bottom1``; the swapped text makes OpenCV compute the fork's formula."""
    from neocaffe.io.prototxt import read_prototxt, to_text
    from neocaffe.layers.proposal import parse_param_str
    from neocaffe.proto import caffe_pb2

    net = read_prototxt(str(prototxt), caffe_pb2.NetParameter)
    for lp in net.layer:
        if lp.type == "Python" and (lp.python_param.module, lp.python_param.layer) == PY_FASTER_RCNN_PROPOSAL:
            params = parse_param_str(lp.python_param.param_str)
            lp.type = "Proposal"
            lp.ClearField("python_param")
            lp.proposal_param.feat_stride = int(params["feat_stride"])
            lp.proposal_param.ratio.extend(params.get("ratios", (0.5, 1, 2)))
            lp.proposal_param.scale.extend(params.get("scales", (8, 16, 32)))
        elif lp.type == "Axpy" and len(lp.bottom) == 3:
            lp.bottom[1], lp.bottom[2] = lp.bottom[2], lp.bottom[1]
    return to_text(net)


def opencv_forward(prototxt: Path | str | None, caffemodel: Path, inputs: dict[str, np.ndarray],
                   outputs: dict[str, str], text: str | None = None) -> dict[str, np.ndarray]:
    """OpenCV dnn's forward of the same files on the same inputs: output blob -> array. ``text``: the
    net's prototxt text as OpenCV reads it, instead of ``opencv_net_text(prototxt)``."""
    import cv2

    text = opencv_net_text(Path(prototxt)) if text is None else text
    text, model = bn_as_batchnorm_scale(text, caffemodel)
    cvnet = cv2.dnn.readNetFromCaffe(np.frombuffer(text.encode(), np.uint8), np.frombuffer(model, np.uint8))
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    for name, arr in inputs.items():
        cvnet.setInput(arr, name)
    blobs = list(outputs)
    got = cvnet.forward([outputs[b] for b in blobs])
    return {b: np.asarray(v) for b, v in zip(blobs, got)}


def bn_as_batchnorm_scale(text: str, caffemodel: Path) -> tuple[str, bytes]:
    """The net text and caffemodel bytes with every PSPNet ``BN`` layer (OpenCV reads no ``bn_param``)
    written as the two layers of BVLC Caffe that compute the fork's TEST-phase formula
    ``(x - mean) * (var + eps)^-0.5 * slope + bias`` (hszhao/PSPNet bn_layer.cpp): ``BatchNorm``
    (``use_global_stats``, the same ``eps``; blobs mean, variance, scale factor 1) then ``Scale``
    (``bias_term``; blobs slope, bias), both in the BN's place. Unchanged when there is no BN."""
    from neocaffe.io.prototxt import read_prototxt, to_text
    from neocaffe.io.weights import LayerWeights, load_weights, save_weights
    from neocaffe.layers.bn import bn_lineage
    from neocaffe.proto import caffe_pb2

    raw = Path(caffemodel).read_bytes()
    net = read_prototxt(text.encode(), caffe_pb2.NetParameter)
    if not any(lp.type == "BN" for lp in net.layer):
        return text, raw
    weights = {w.name: w for w in load_weights(str(caffemodel))}
    out_net, out_weights = caffe_pb2.NetParameter(), []
    out_net.CopyFrom(net)
    del out_net.layer[:]
    for lp in net.layer:
        if lp.type != "BN" or bn_lineage(lp, len(lp.top)) != "pspnet":
            out_net.layer.add().CopyFrom(lp)
            if lp.name in weights:
                out_weights.append(weights[lp.name])
            continue
        slope, bias, mean, var = (np.asarray(b, np.float32).reshape(-1) for b in weights[lp.name].blobs)
        bn = out_net.layer.add(name=lp.name, type="BatchNorm", bottom=list(lp.bottom), top=list(lp.top))
        bn.batch_norm_param.use_global_stats = True
        bn.batch_norm_param.eps = lp.bn_param.eps
        sc = out_net.layer.add(name=lp.name + "/scale", type="Scale", bottom=list(lp.top), top=list(lp.top))
        sc.scale_param.bias_term = True
        out_weights.append(LayerWeights(bn.name, "BatchNorm", [mean, var, np.ones(1, np.float32)]))
        out_weights.append(LayerWeights(sc.name, "Scale", [slope, bias]))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "opencv.caffemodel"
        save_weights(path, out_weights, hdf5=False)
        return to_text(out_net), path.read_bytes()


def neocaffe_forward(net: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``net``'s forward on ``inputs``: output blob -> array (host float32)."""
    import torch

    for name, arr in inputs.items():
        net.set_blob(name, torch.from_numpy(arr))
    with torch.no_grad():
        net.forward()
    return {o: net.blob_data[o].detach().cpu().numpy() for o in net.outputs}


def detection_rows(arr: np.ndarray) -> np.ndarray:
    """The detections of a DetectionOutput top as (D, 7) rows: without Caffe's ``[i, -1, ...]`` rows
    (an image without detections) and without OpenCV's all-zero padding rows."""
    rows = np.asarray(arr, np.float64).reshape(-1, 7)
    return rows[(rows[:, 1] != -1) & np.any(rows != 0, axis=1)]


def detection_error(got: np.ndarray, ref: np.ndarray) -> float:
    """Like `max_rel_error` for two DetectionOutput tops, as lists: the same detections (image, label,
    score, box), each ours paired with the closest of OpenCV's of the same image and label, whatever
    the order (OpenCV may order by score, Caffe orders by label; near-equal scores swap places)."""
    a, b = detection_rows(got), detection_rows(ref)
    if a.shape != b.shape:
        return float("inf")
    if not len(a):
        return 0.0
    other = (a[:, None, 0] != b[None, :, 0]) | (a[:, None, 1] != b[None, :, 1])  # another image or label
    err = paired_rows_error(a, b, forbidden=other)
    return float("inf") if err is None else err


def paired_rows_error(a: np.ndarray, b: np.ndarray, forbidden: np.ndarray | None = None) -> float | None:
    """max |a - b| over b's largest magnitude after pairing each row of ``a`` (N, K) with its nearest row
    of ``b`` (N, K), pairs marked in ``forbidden`` (N, N) excluded; None when two rows pick one partner."""
    scale = float(np.abs(b).max()) or 1.0
    dist = np.abs(a[:, None, :] - b[None, :, :]).max(axis=2)
    if forbidden is not None:
        dist[forbidden] = np.inf
    partner = dist.argmin(axis=1)
    if len(set(partner.tolist())) != len(a):
        return None
    return float(dist[np.arange(len(a)), partner].max()) / scale


def output_error(net: Any, blob: str, got: np.ndarray, ref: np.ndarray) -> float:
    """`max_rel_error` of net output ``blob``; a DetectionOutput top by `detection_error`."""
    writer = [lp.param.type for lp in net.plan.layers if blob in lp.tops]
    if writer and writer[-1] == "DetectionOutput":
        return detection_error(got, ref)
    if np.shape(got) != np.shape(ref):
        return float("inf")
    return max_rel_error(got, ref)


def max_rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| over the largest magnitude of ``ref`` (1 when ``ref`` is all zeros)."""
    got = np.asarray(got, np.float64).reshape(-1)
    ref = np.asarray(ref, np.float64).reshape(-1)
    if got.shape != ref.shape:
        return float("inf")
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return float(np.abs(got - ref).max()) / (scale if scale > 0 else 1.0) if ref.size else 0.0


__all__ = ["ZOO", "ZooModel", "zoo_models", "zoo_model", "random_weights", "BLOB_RULES", "build",
           "model_weights", "model_inputs", "output_layers", "opencv_net_text", "opencv_forward", "bn_as_batchnorm_scale",
           "neocaffe_forward", "max_rel_error", "PY_FASTER_RCNN_PROPOSAL", "detection_rows", "detection_error",
           "output_error", "paired_rows_error"]
