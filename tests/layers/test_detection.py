"""SSD's Permute, Normalize, PriorBox and DetectionOutput against NumPy references written from the
fork's loops (weiliu89/caffe ssd: permute_layer.cpp, normalize_layer.cpp, prior_box_layer.cpp,
detection_output_layer.cpp and bbox_util.cpp)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2


def _layer(text: str, shapes):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, [tuple(s) for s in shapes], caffe_pb2.TEST)


# --- PriorBox ---------------------------------------------------------------------------------

def _prior_box_ref(p, lh, lw, ih, iw):
    """prior_box_layer.cpp's Forward_cpu, loop for loop."""
    ratios = [1.0]
    for ar in p["aspect_ratio"]:
        if all(abs(ar - r) >= 1e-6 for r in ratios):
            ratios.append(ar)
            if p["flip"]:
                ratios.append(float(np.float32(1.0 / ar)))
    img_w, img_h = (p.get("img_w") or iw), (p.get("img_h") or ih)
    step_w = p.get("step") or np.float32(img_w) / np.float32(lw)
    step_h = p.get("step") or np.float32(img_h) / np.float32(lh)
    out = []
    for h in range(lh):
        for w in range(lw):
            # center in float (as the fork's float center_x), the rest in double
            cx = float(np.float32(np.float32(w + p["offset"]) * np.float32(step_w)))
            cy = float(np.float32(np.float32(h + p["offset"]) * np.float32(step_h)))
            for s, mn in enumerate(p["min_size"]):
                m = int(mn)
                boxes = [(m, m)]
                if p["max_size"]:
                    side = math.sqrt(m * int(p["max_size"][s]))
                    boxes.append((side, side))
                for ar in ratios:
                    if abs(ar - 1.0) < 1e-6:
                        continue
                    boxes.append((m * math.sqrt(np.float32(ar)), m / math.sqrt(np.float32(ar))))
                for bw, bh in boxes:
                    bw, bh = float(np.float32(bw)), float(np.float32(bh))
                    out += [(cx - bw / 2.0) / img_w, (cy - bh / 2.0) / img_h, (cx + bw / 2.0) / img_w,
                            (cy + bh / 2.0) / img_h]
    out = np.array(out, np.float32)
    if p["clip"]:
        out = np.minimum(np.maximum(out, 0), 1)
    var = p["variance"] or [0.1]
    return np.stack([out, np.resize(np.array(var, np.float32), out.size)])[None]


@pytest.mark.parametrize("p,feat,img", [
    (dict(min_size=[30.0], max_size=[60.0], aspect_ratio=[2.0, 3.0], flip=True, clip=False,
          variance=[0.1, 0.1, 0.2, 0.2], offset=0.5), (1, 8, 19, 19), (1, 3, 300, 300)),
    (dict(min_size=[10.5, 21.7], max_size=[], aspect_ratio=[2.0, 0.5, 2.0], flip=True, clip=True,
          variance=[0.2], offset=0.5), (2, 4, 5, 7), (2, 3, 40, 56)),
    (dict(min_size=[16.0], max_size=[32.0], aspect_ratio=[], flip=False, clip=False, variance=[],
          offset=0.25, step=8.0, img_h=64, img_w=48), (1, 4, 6, 8), (1, 3, 10, 10)),
])
def test_prior_box_matches_fork_loop(p, feat, img):
    fields = [f"min_size: {v}" for v in p["min_size"]] + [f"max_size: {v}" for v in p["max_size"]]
    fields += [f"aspect_ratio: {v}" for v in p["aspect_ratio"]] + [f"variance: {v}" for v in p["variance"]]
    fields += [f"flip: {str(p['flip']).lower()}", f"clip: {str(p['clip']).lower()}", f"offset: {p['offset']}"]
    fields += [f"{k}: {p[k]}" for k in ("step", "img_h", "img_w") if k in p]
    layer = _layer('name: "pb" type: "PriorBox" bottom: "f" bottom: "i" top: "p" prior_box_param { '
                   + " ".join(fields) + " }", [feat, img])
    got = layer(torch.zeros(feat), torch.zeros(img)).numpy()
    ref = _prior_box_ref(p, feat[2], feat[3], img[2], img[3])
    assert got.shape == ref.shape == tuple(layer.reshape([feat, img])[0])
    np.testing.assert_array_equal(got, ref)


def test_prior_box_errors():
    with pytest.raises(ValueError, match="must provide min_size"):
        _layer('name: "pb" type: "PriorBox" bottom: "f" bottom: "i" top: "p"', [(1, 1, 2, 2), (1, 3, 4, 4)])
    with pytest.raises(ValueError, match="max_size must be greater than min_size"):
        _layer('name: "pb" type: "PriorBox" bottom: "f" bottom: "i" top: "p" prior_box_param { min_size: 8 max_size: 4 }',
               [(1, 1, 2, 2), (1, 3, 4, 4)])


# --- Permute, Normalize -----------------------------------------------------------------------

def test_permute_is_transpose_with_remaining_axes_in_order():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    layer = _layer('name: "p" type: "Permute" bottom: "x" top: "y" permute_param { order: 2 order: 0 }', [x.shape])
    np.testing.assert_array_equal(layer(torch.from_numpy(x)).numpy(), x.transpose(2, 0, 1, 3))
    with pytest.raises(ValueError, match="duplicate"):
        _layer('name: "p" type: "Permute" bottom: "x" top: "y" permute_param { order: 1 order: 1 }', [x.shape])


def _normalize_ref(x, scale, across, shared, eps):
    """normalize_layer.cpp Forward_cpu and Backward_cpu (for dy = ones * w) in NumPy float64."""
    n, c = x.shape[:2]
    xf = x.reshape(n, c, -1)
    s = np.full((c, 1), scale) if shared else scale.reshape(c, 1)
    if across:
        norm = np.sqrt((xf ** 2).sum(axis=(1, 2), keepdims=True) + eps)
    else:
        norm = np.sqrt((xf ** 2).sum(axis=1, keepdims=True) + eps)
    y = xf / norm * s
    return y.reshape(x.shape), norm


def _normalize_backward_ref(x, dy, scale, across, shared, eps):
    n, c = x.shape[:2]
    xf, dyf = x.reshape(n, c, -1), dy.reshape(n, c, -1)
    y, norm = _normalize_ref(x, scale, across, shared, eps)
    yf = y.reshape(n, c, -1)
    s = np.full((c, 1), scale) if shared else scale.reshape(c, 1)
    if across:
        a = (xf * dyf).sum(axis=(1, 2), keepdims=True)
    else:
        a = (xf * dyf).sum(axis=1, keepdims=True)
    dx = (dyf - xf * a / norm ** 2) / norm * s
    dscale = (yf * dyf).sum() / scale if shared else (yf * dyf).sum(axis=(0, 2)) / scale
    return dx.reshape(x.shape), dscale


@pytest.mark.parametrize("across,shared", [(True, True), (False, False), (False, True), (True, False)])
def test_normalize_forward_backward_match_fork(across, shared):
    r = np.random.default_rng(3)
    x = r.standard_normal((2, 4, 3, 5))
    text = (f'name: "n" type: "Normalize" bottom: "x" top: "y" norm_param {{ across_spatial: {str(across).lower()} '
            f'channel_shared: {str(shared).lower()} eps: 1e-6 scale_filler {{ type: "uniform" min: 1 max: 3 }} }}')
    layer = _layer(text, [x.shape]).double()
    scale = layer.blobs[0].detach().numpy().copy()
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    ref, _ = _normalize_ref(x, scale, across, shared, 1e-6)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    dy = r.standard_normal(x.shape)
    y.backward(torch.tensor(dy))
    dx, dscale = _normalize_backward_ref(x, dy, scale, across, shared, 1e-6)
    np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.blobs[0].grad.numpy(), dscale, rtol=1e-10, atol=1e-12)


# --- DetectionOutput --------------------------------------------------------------------------

def _jaccard(a, b):
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    size = lambda q: 0.0 if q[2] < q[0] or q[3] < q[1] else (q[2] - q[0]) * (q[3] - q[1])  # noqa: E731
    inter = iw * ih
    return inter / (size(a) + size(b) - inter)


def _decode_ref(prior, var, loc, code):
    px0, py0, px1, py1 = prior
    pw, ph = px1 - px0, py1 - py0
    if code == 1:
        return [px0 + var[0] * loc[0], py0 + var[1] * loc[1], px1 + var[2] * loc[2], py1 + var[3] * loc[3]]
    if code == 3:
        return [px0 + var[0] * loc[0] * pw, py0 + var[1] * loc[1] * ph, px1 + var[2] * loc[2] * pw,
                py1 + var[3] * loc[3] * ph]
    cx = var[0] * loc[0] * pw + (px0 + px1) / 2
    cy = var[1] * loc[1] * ph + (py0 + py1) / 2
    w, h = math.exp(var[2] * loc[2]) * pw, math.exp(var[3] * loc[3]) * ph
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _detection_output_ref(loc, conf, prior, num_classes, share, bg, code, thr, nms, top_k, keep_top_k):
    """detection_output_layer.cpp Forward_cpu with ApplyNMSFast, in Python loops (float64)."""
    n, num_priors = loc.shape[0], prior.shape[2] // 4
    lc = 1 if share else num_classes
    pri = prior[0, 0].reshape(-1, 4)
    var = prior[0, 1].reshape(-1, 4)
    out = []
    for i in range(n):
        lo = loc[i].reshape(num_priors, lc, 4)
        co = conf[i].reshape(num_priors, num_classes)
        boxes = {c: [_decode_ref(pri[p], var[p], lo[p, c], code) for p in range(num_priors)] for c in range(lc)}
        indices = {}
        for c in range(num_classes):
            if c == bg:
                continue
            b = boxes[0 if share else c]
            cand = sorted([(co[p, c], p) for p in range(num_priors) if co[p, c] > thr], key=lambda t: -t[0])
            if top_k > -1:
                cand = cand[:top_k]
            kept = []
            for _, p in cand:
                if all(_jaccard(b[p], b[k]) <= nms for k in kept):
                    kept.append(p)
            indices[c] = kept
        total = sum(len(v) for v in indices.values())
        if keep_top_k > -1 and total > keep_top_k:
            pairs = sorted([(co[p, c], c, p) for c in sorted(indices) for p in indices[c]], key=lambda t: -t[0])
            pairs = pairs[:keep_top_k]
            indices = {}
            for _, c, p in pairs:
                indices.setdefault(c, []).append(p)
        for c in sorted(indices):
            for p in indices[c]:
                out.append([i, c, co[p, c]] + boxes[0 if share else c][p])
    if not out:
        return np.array([[i, -1, -1, -1, -1, -1, -1] for i in range(n)], np.float64)
    return np.array(out)


@pytest.mark.parametrize("share,code,top_k,keep_top_k,thr", [
    (True, 2, 20, 15, 0.05), (False, 1, -1, -1, 0.1), (True, 3, 5, 8, 0.0), (False, 2, 10, 4, 0.15)])
def test_detection_output_matches_fork_loops(share, code, top_k, keep_top_k, thr):
    r = np.random.default_rng(7)
    n, num_priors, num_classes = 2, 40, 4
    lc = 1 if share else num_classes
    xy = r.uniform(0, 0.8, (num_priors, 2))
    wh = r.uniform(0.05, 0.3, (num_priors, 2))
    prior = np.stack([np.concatenate([xy, xy + wh], 1).reshape(-1),
                      np.tile([0.1, 0.1, 0.2, 0.2], num_priors)])[None]
    loc = r.standard_normal((n, num_priors * lc * 4)) * 0.5
    logits = r.standard_normal((n, num_priors, num_classes)) * 1.5
    conf = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).reshape(n, -1)
    text = (f'name: "d" type: "DetectionOutput" bottom: "l" bottom: "c" bottom: "p" top: "o" detection_output_param {{ '
            f'num_classes: {num_classes} share_location: {str(share).lower()} background_label_id: 0 '
            f'nms_param {{ nms_threshold: 0.3 {"top_k: %d" % top_k if top_k > -1 else ""} }} code_type: {code} '
            f'keep_top_k: {keep_top_k} confidence_threshold: {thr} }}')
    layer = _layer(text, [loc.shape, conf.shape, prior.shape])
    got = layer(torch.tensor(loc), torch.tensor(conf), torch.tensor(prior)).numpy()[0, 0]
    ref = _detection_output_ref(loc, conf, prior, num_classes, share, 0, code, thr, 0.3, top_k, keep_top_k)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_detection_output_without_detections_gives_one_row_per_image():
    layer = _layer('name: "d" type: "DetectionOutput" bottom: "l" bottom: "c" bottom: "p" top: "o" '
                   'detection_output_param { num_classes: 2 confidence_threshold: 0.9 }', [(3, 4), (3, 2), (1, 2, 4)])
    got = layer(torch.zeros(3, 4), torch.full((3, 2), 0.5), torch.tensor([[[0.1, 0.1, 0.3, 0.3], [0.1] * 4]]))
    assert got.shape == (1, 1, 3, 7)
    np.testing.assert_array_equal(got[0, 0, :, 0].numpy(), [0, 1, 2])
    assert (got[0, 0, :, 1:] == -1).all()


def test_detection_output_takes_the_forks_fourth_bottom_and_ignores_it():
    """SSD's video/webcam demo nets give DetectionOutput the images as a fourth bottom (for visualize)."""
    text = ('name: "d" type: "DetectionOutput" bottom: "l" bottom: "c" bottom: "p" {extra}top: "o" '
            'detection_output_param { num_classes: 2 confidence_threshold: 0.1 nms_param { nms_threshold: 0.45 } }')
    loc, conf = torch.tensor([[0.1, -0.2, 0.3, 0.1, 0.0, 0.1, 0.2, -0.1]]), torch.tensor([[0.2, 0.8, 0.3, 0.7]])
    prior = torch.tensor([[[0.1, 0.1, 0.5, 0.5, 0.12, 0.1, 0.52, 0.5], [0.1, 0.1, 0.2, 0.2, 0.1, 0.1, 0.2, 0.2]]])
    three = _layer(text.replace("{extra}", ""), [(1, 8), (1, 4), (1, 2, 8)])(loc, conf, prior)
    four = _layer(text.replace("{extra}", 'bottom: "data" '), [(1, 8), (1, 4), (1, 2, 8), (1, 3, 4, 4)])(
        loc, conf, prior, torch.rand(1, 3, 4, 4))
    assert torch.equal(three, four) and three.shape[2] >= 1 and (three[0, 0, :, 1] == 1).all()
    with pytest.raises(Exception, match="bottom"):
        _layer(text.replace("{extra}", 'bottom: "a" bottom: "b" '), [(1, 8), (1, 4), (1, 2, 8), (1,), (1,)])


# --- DetectionEvaluate ------------------------------------------------------------------------

def _px(box, hw):
    """OutputBBox without resize_param in float32 (ClipBBox, then ScaleBBox) and the size it stores."""
    f = np.float32
    h, w = hw
    b = [min(max(f(v), f(0)), f(1)) for v in box]
    b = [b[0] * f(w), b[1] * f(h), b[2] * f(w), b[3] * f(h)]
    size = f(0) if b[2] < b[0] or b[3] < b[1] else (b[2] - b[0] + f(1)) * (b[3] - b[1] + f(1))
    return b, size


def _jaccard_px(a, sa, b, sb):
    """JaccardOverlap(a, b, normalized=false): +1 on the intersection, IntersectBBox's [0, 0, 0, 0] when
    disjoint (one pixel), the stored sizes in the union."""
    f = np.float32
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        inter_box = [f(0)] * 4
    else:
        inter_box = [max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])]
    iw, ih = inter_box[2] - inter_box[0] + f(1), inter_box[3] - inter_box[1] + f(1)
    if iw <= 0 or ih <= 0:
        return f(0)
    inter = iw * ih
    return inter / (sa + sb - inter)


def _evaluate_ref(det, gt, num_classes, bg, thr, evaluate_difficult, sizes=None, count=0):
    """detection_evaluate_layer.cpp Forward_cpu (normalized boxes; in pixels with ``sizes``, the name file's
    (height, width) entries, ``count`` the entry of this forward's first image: then (rows, next count))."""
    dets, gts = {}, {}
    for r in det:
        if int(r[0]) == -1:
            continue
        dets.setdefault(int(r[0]), {}).setdefault(int(r[1]), []).append(list(r))
    for r in gt:
        if int(r[0]) == -1:
            break
        gts.setdefault(int(r[0]), {}).setdefault(int(r[1]), []).append(list(r))
    out = []
    for c in range(num_classes):
        if c == bg:
            continue
        n = sum(1 for im in gts.values() for g in im.get(c, []) if evaluate_difficult or not g[7])
        out.append([-1, c, n, -1, -1])
    for item in sorted(dets):
        for label in sorted(dets[item]):
            if label == -1:
                continue
            boxes = dets[item][label]
            gtb = gts.get(item, {}).get(label)
            if gtb is None:
                out += [[item, label, b[2], 0, 1] for b in boxes]
                continue
            visited = [False] * len(gtb)
            for b in sorted(boxes, key=lambda q: -q[2]):
                if sizes:
                    hw = sizes[(count + sorted(dets).index(item)) % len(sizes)]
                    (bp, bs), gps = _px(b[3:7], hw), [_px(g[3:7], hw) for g in gtb]
                    ovs = [_jaccard_px(bp, bs, gp, gs) for gp, gs in gps]
                else:
                    ovs = [_jaccard(b[3:7], g[3:7]) for g in gtb]
                j = int(np.argmax(ovs))
                row = [item, label, b[2], 0, 0]
                if ovs[j] >= thr:
                    if evaluate_difficult or not gtb[j][7]:
                        row[3:5] = [0, 1] if visited[j] else [1, 0]
                        visited[j] = True
                else:
                    row[3:5] = [0, 1]
                out.append(row)
    if sizes:
        return np.array(out, float), (count + len(dets)) % len(sizes)
    return np.array(out, float)


@pytest.mark.parametrize("evaluate_difficult", [True, False])
def test_detection_evaluate_matches_fork_loops(evaluate_difficult):
    r = np.random.default_rng(5)
    gt = []
    for item in (0, 0, 0, 1, 1, 3):
        x, y = r.uniform(0, 0.6, 2)
        gt.append([item, r.integers(1, 3), 0, x, y, x + 0.3, y + 0.3, r.integers(0, 2)])
    det = []
    for g in gt:          # near-duplicates of the boxes, plus noise and an image without ground truth
        for _ in range(2):
            jit = r.normal(0, 0.05, 4)
            det.append([g[0], g[1], r.uniform(0.1, 1)] + list(np.array(g[3:7]) + jit))
    det += [[2, 1, 0.5, 0.1, 0.1, 0.3, 0.3], [1, 2, 0.4, 0.6, 0.6, 0.9, 0.9], [4, -1, -1, -1, -1, -1, -1]]
    det, gt = np.array(det)[None, None], np.array(gt + [[-1] * 8, [0, 1, 0, 0.1, 0.1, 0.2, 0.2, 0]], float)[None, None]
    text = ('name: "e" type: "DetectionEvaluate" bottom: "d" bottom: "g" top: "e" detection_evaluate_param { '
            f'num_classes: 3 background_label_id: 0 overlap_threshold: 0.5 '
            f'evaluate_difficult_gt: {str(evaluate_difficult).lower()} }}')
    got = _layer(text, [det.shape, gt.shape])(torch.tensor(det), torch.tensor(gt)).numpy()[0, 0]
    ref = _evaluate_ref(det[0, 0], gt[0, 0], 3, 0, 0.5, evaluate_difficult)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert (got[2:, 3] == 1).sum() > 0 and (got[2:, 4] == 1).sum() > 0


def test_detection_evaluate_in_pixels_with_a_name_size_file(tmp_path):
    """SSD's test nets give DetectionEvaluate a name_size_file: boxes are compared in each image's pixels,
    the entries taken in turn by the images that have detection rows (an image without any is skipped,
    as in the fork), carried across forwards and wrapping at the file's end."""
    sizes = [("000001", 10, 12), ("000002", 7, 9), ("000003", 300, 500)]
    (tmp_path / "names.txt").write_text("".join(f"{n} {h} {w}\n" for n, h, w in sizes))
    text = ('name: "e" type: "DetectionEvaluate" bottom: "d" bottom: "g" top: "e" detection_evaluate_param { '
            f'num_classes: 3 background_label_id: 0 evaluate_difficult_gt: false overlap_threshold: {{thr}} name_size_file: "{tmp_path / "names.txt"}" }}')
    r = np.random.default_rng(9)
    gt = [[0, 1, 0, 0.1, 0.1, 0.3, 0.35, 0], [0, 1, 0, 0.55, 0.5, 0.6, 0.62, 0], [0, 2, 0, 0.2, 0.6, 0.5, 0.9, 0],
          [2, 1, 0, 0.4, 0.4, 0.45, 0.5, 0], [2, 2, 0, 0.0, 0.0, 0.2, 0.2, 1]]
    det = []
    for g in gt + gt:
        det.append([g[0], g[1], r.uniform(0.1, 1)] + list(np.array(g[3:7]) + r.normal(0, 0.06, 4)))
    det += [[0, 1, 0.99, 0.9, 0.9, 0.95, 0.95], [2, 1, 0.2, 0.0, 0.0, 0.01, 0.01]]  # disjoint from every box
    det = np.array(det)[None, None]
    gt = np.array(gt, float)[None, None]
    for thr in (0.5, 0.001):
        layer = _layer(text.replace("{thr}", str(thr)), [det.shape, gt.shape])
        count = 0
        for _ in range(4):                                        # 2 images a forward: 0, 2, 1, 0, 2, ... entries
            got = layer(torch.tensor(det, dtype=torch.float32), torch.tensor(gt, dtype=torch.float32)).numpy()[0, 0]
            ref, count = _evaluate_ref(det[0, 0].astype(np.float32), gt[0, 0].astype(np.float32), 3, 0, thr, False,
                                       sizes=[(h, w) for _, h, w in sizes], count=count)
            np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
            assert layer.count == count
        normalized = _evaluate_ref(det[0, 0], gt[0, 0], 3, 0, thr, False)
        first = lambda rows: rows[np.isclose(rows[:, 2], 0.99)][0]  # noqa: E731  (the disjoint detection)
        if thr == 0.001:   # its one-pixel overlap in pixels passes a tiny threshold: a true positive there only
            assert list(first(ref)[3:]) == [1, 0] and list(first(normalized)[3:]) == [0, 1]
        assert (ref[:, 3] == 1).sum() >= 3
    missing = text.replace("{thr}", "0.5").replace(str(tmp_path / "names.txt"), str(tmp_path / "none.txt"))
    with pytest.raises(Exception, match="Failed to open name size file"):
        _layer(missing, [det.shape, gt.shape])
