"""MultiBoxLoss against a reference written from the fork's loops (weiliu89/caffe ssd:
multibox_loss_layer.cpp Forward_cpu / Backward_cpu with bbox_util.cpp's MatchBBox, FindMatches,
MineHardExamples, EncodeLocPrediction, ComputeConfLoss, EncodeConfPrediction), loss and diffs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

FLT_MIN = 1.17549435e-38


def _size(b):
    return 0.0 if b[2] < b[0] or b[3] < b[1] else (b[2] - b[0]) * (b[3] - b[1])


def _jaccard(a, b):
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / (_size(a) + _size(b) - iw * ih)


def _encode(pr, var, g, code, vit):
    pw, ph = pr[2] - pr[0], pr[3] - pr[1]
    if code == 1:
        d = [g[k] - pr[k] for k in range(4)]
    elif code == 3:
        d = [(g[0] - pr[0]) / pw, (g[1] - pr[1]) / ph, (g[2] - pr[2]) / pw, (g[3] - pr[3]) / ph]
    else:
        d = [((g[0] + g[2]) / 2 - (pr[0] + pr[2]) / 2) / pw, ((g[1] + g[3]) / 2 - (pr[1] + pr[3]) / 2) / ph,
             math.log((g[2] - g[0]) / pw), math.log((g[3] - g[1]) / ph)]
    return d if vit else [d[k] / var[k] for k in range(4)]


def _decode(pr, var, lo, code, vit):
    v = [1, 1, 1, 1] if vit else var
    pw, ph = pr[2] - pr[0], pr[3] - pr[1]
    if code == 1:
        return [pr[k] + v[k] * lo[k] for k in range(4)]
    if code == 3:
        return [pr[0] + v[0] * lo[0] * pw, pr[1] + v[1] * lo[1] * ph, pr[2] + v[2] * lo[2] * pw,
                pr[3] + v[3] * lo[3] * ph]
    cx, cy = v[0] * lo[0] * pw + (pr[0] + pr[2]) / 2, v[1] * lo[1] * ph + (pr[1] + pr[3]) / 2
    w, h = math.exp(v[2] * lo[2]) * pw, math.exp(v[3] * lo[3]) * ph
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _match(gts, preds, label, mtype, thr, ignore_cross):
    """MatchBBox."""
    idx, ovl = [-1] * len(preds), [0.0] * len(preds)
    gi = [i for i, g in enumerate(gts) if label == -1 or g["label"] == label]
    if not gi:
        return idx, ovl
    over = {}
    for i, p in enumerate(preds):
        if ignore_cross and any(c < 0 or c > 1 for c in p):
            idx[i] = -2
            continue
        for j, g in enumerate(gi):
            o = _jaccard(p, gts[g]["box"])
            if o > 1e-6:
                ovl[i] = max(ovl[i], o)
                over.setdefault(i, {})[j] = o
    pool = list(range(len(gi)))
    while pool:
        best = (-1, -1, -1.0)
        for i in sorted(over):
            if idx[i] != -1:
                continue
            for j in pool:
                if j in over[i] and over[i][j] > best[2]:
                    best = (i, j, over[i][j])
        if best[0] == -1:
            break
        idx[best[0]], ovl[best[0]] = gi[best[1]], best[2]
        pool.remove(best[1])
    if mtype == 1:
        for i in sorted(over):
            if idx[i] != -1:
                continue
            bj, bo = -1, -1.0
            for j in range(len(gi)):
                if j in over[i] and over[i][j] >= thr and over[i][j] > bo:
                    bj, bo = j, over[i][j]
            if bj != -1:
                idx[i], ovl[i] = gi[bj], bo
    return idx, ovl


def _conf_loss_ref(row, label, ctype):
    if ctype == 0:
        e = np.exp(row - row.max())
        return -math.log(max(e[label] / e.sum(), FLT_MIN))
    t = np.zeros_like(row)
    t[label] = 1
    return float(-(row * (t - (row >= 0)) - np.log(1 + np.exp(row - 2 * row * (row >= 0)))).sum())


def _conf_terms_ref(co, rows, ctype, norm, dconf):
    """The fork's confidence loss over the selected (image, prior, label) ``rows``, divided by ``norm``;
    writes their diffs (softmax or sigmoid minus the one-hot target, / norm) into ``dconf``."""
    loss = 0.0
    for i, p, lab in rows:
        x = co[i, p]
        loss += _conf_loss_ref(x, lab, ctype) / norm
        if ctype == 0:
            e = np.exp(x - x.max())
            g = e / e.sum()
            g[lab] -= 1
        else:
            t = np.zeros_like(x)
            t[lab] = 1
            g = 1 / (1 + np.exp(-x)) - t
        dconf[i, p] = g / norm
    return loss


def _multibox_ref(loc, conf, prior, gt, P):
    """The fork's Forward_cpu + Backward_cpu with top diff 1: (loss, dloc, dconf)."""
    n, C, share = loc.shape[0], P["num_classes"], P["share"]
    L, bg, code, vit = (1 if share else C), P["bg"], P["code"], P["vit"]
    npri = prior.shape[2] // 4
    pri, var = prior[0, 0].reshape(-1, 4), prior[0, 1].reshape(-1, 4)
    lo = loc.reshape(n, npri, L, 4)
    co = conf.reshape(n, npri, C)
    gts = {}
    for r in gt.reshape(-1, 8):
        if int(r[0]) == -1 or (not P["use_difficult"] and r[7]):
            continue
        gts.setdefault(int(r[0]), []).append({"label": int(r[1]), "box": list(r[3:7])})
    matches, overs = [], []
    for i in range(n):
        mi, mo = {}, {}
        if i in gts:
            if P["prior_match"]:
                ti, to = _match(gts[i], list(pri), -1, P["mtype"], P["thr"], P["cross"])
                if share:
                    mi[-1], mo[-1] = ti, to
                else:
                    for c in range(C):
                        if c == bg:
                            continue
                        mi[c] = [t if t > -1 and gts[i][t]["label"] == c else -1 for t in ti]
                        mo[c] = to
            else:
                for c in range(L):
                    lab = -1 if share else c
                    if not share and lab == bg:
                        continue
                    boxes = [_decode(pri[p], var[p], lo[i, p, c], code, vit) for p in range(npri)]
                    mi[lab], mo[lab] = _match(gts[i], boxes, lab, P["mtype"], P["thr"], P["cross"])
        matches.append(mi)
        overs.append(mo)

    def encode_pair(i, lab, p):
        g = gts[i][matches[i][lab][p]]["box"]
        ge = _encode(pri[p], var[p], g, code, vit)
        pe = list(lo[i, p, 0 if share else lab])
        if vit:
            ge, pe = [ge[k] / var[p][k] for k in range(4)], [pe[k] / var[p][k] for k in range(4)]
        return pe, ge

    def sl1(d):
        return sum(0.5 * x * x if abs(x) < 1 or P["loc_type"] == 0 else abs(x) - 0.5 for x in d)

    negs = [[] for _ in range(n)]
    if P["mining"]:
        for i in range(n):
            for lab in sorted(matches[i]):
                m, ov = matches[i][lab], overs[i][lab]
                labels = [gts[i][m[p]]["label"] if m[p] > -1 else bg for p in range(npri)]
                loss = [_conf_loss_ref(co[i, p], labels[p], P["conf_type"]) for p in range(npri)]
                if P["mining"] == 2:
                    loss = [loss[p] + (sl1(np.subtract(*encode_pair(i, lab, p))) if m[p] > -1 else 0)
                            for p in range(npri)]
                    elig = list(range(npri))
                    num_sel = min(P["sample_size"], len(elig))
                else:
                    elig = [p for p in range(npri) if m[p] == -1 and ov[p] < P["neg_overlap"]]
                    num_pos = sum(1 for p in range(npri) if m[p] > -1)
                    num_sel = min(int(np.float32(num_pos) * np.float32(P["ratio"])), len(elig))
                sel = set(sorted(elig, key=lambda p: -loss[p])[:num_sel])
                for p in range(npri):
                    if m[p] > -1 and P["mining"] == 2 and p not in sel:
                        m[p] = -1
                    elif m[p] == -1 and p in sel:
                        negs[i].append(p)
    num_matches = sum(1 for i in range(n) for lab in matches[i] for x in matches[i][lab] if x > -1)
    mode = P["norm"]
    norm = max(1.0, {0: n * npri, 1: num_matches, 2: n, 3: 1}[mode])
    loss, dloc, dconf = 0.0, np.zeros_like(lo), np.zeros_like(co)
    for i in range(n):
        for lab in sorted(matches[i]):
            for p, mm in enumerate(matches[i][lab]):
                if mm > -1:
                    pe, ge = encode_pair(i, lab, p)
                    d = np.subtract(pe, ge)
                    loss += P["loc_weight"] * sl1(d) / norm
                    g = [x if abs(x) < 1 or P["loc_type"] == 0 else np.sign(x) for x in d]
                    dloc[i, p, 0 if share else lab] = np.array(g) * P["loc_weight"] / norm
    rows = []   # (image, prior, label)
    for i in range(n):
        if P["mining"]:
            if i not in gts:
                continue
            for lab in sorted(matches[i]):
                rows += [(i, p, gts[i][mm]["label"]) for p, mm in enumerate(matches[i][lab]) if mm > -1]
            rows += [(i, p, bg) for p in negs[i]]
        else:
            labels = [bg] * npri
            for lab in sorted(matches[i], reverse=True):   # the lowest class wins, as the fork's break
                for p, mm in enumerate(matches[i][lab]):
                    if mm > -1:
                        labels[p] = gts[i][mm]["label"]
            rows += [(i, p, labels[p]) for p in range(npri)]
    loss += _conf_terms_ref(co, rows, P["conf_type"], norm, dconf)
    return loss, dloc.reshape(loc.shape), dconf.reshape(conf.shape)


CASES = [
    dict(share=True, mtype=1, prior_match=True, mining=1, loc_type=1, conf_type=0, norm=1, code=2, vit=False,
         cross=False),
    dict(share=True, mtype=0, prior_match=True, mining=2, loc_type=0, conf_type=0, norm=0, code=3, vit=False,
         cross=True, sample_size=2),
    dict(share=True, mtype=1, prior_match=False, mining=1, loc_type=1, conf_type=0, norm=2, code=2, vit=True,
         cross=False),
    dict(share=False, mtype=1, prior_match=True, mining=0, loc_type=1, conf_type=0, norm=1, code=1, vit=False,
         cross=False),
    dict(share=False, mtype=1, prior_match=False, mining=0, loc_type=0, conf_type=0, norm=3, code=2, vit=False,
         cross=False),
    dict(share=True, mtype=1, prior_match=True, mining=1, loc_type=1, conf_type=1, norm=1, code=2, vit=False,
         cross=False),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_multibox_loss_matches_fork_loops(case):
    P = dict(num_classes=4, bg=0, use_difficult=False, thr=0.25, neg_overlap=0.45, ratio=2.5, loc_weight=1.5,
             sample_size=8)
    P.update(case)
    r = np.random.default_rng(11)
    n, npri, C = 3, 30, P["num_classes"]
    L = 1 if P["share"] else C
    xy = r.uniform(-0.05, 0.75, (npri, 2))
    wh = r.uniform(0.1, 0.35, (npri, 2))
    prior = np.stack([np.concatenate([xy, xy + wh], 1).reshape(-1), np.tile([0.1, 0.1, 0.2, 0.2], npri)])[None]
    gt = []
    for i in (0, 0, 0, 2, 2, 2):   # image 1 has no ground truth; one box difficult
        x0, y0 = r.uniform(0, 0.6, 2)
        gt.append([i, r.integers(1, C), 0, x0, y0, x0 + r.uniform(0.15, 0.4), y0 + r.uniform(0.15, 0.4), 0])
    gt[4][7] = 1
    gt.append([-1, 0, 0, 0, 0, 0, 0, 0])
    gt = np.array(gt, float)[None, None]
    loc = r.standard_normal((n, npri * L * 4)) * 0.3
    conf = r.standard_normal((n, npri * C))
    fields = (f'num_classes: {C} share_location: {str(P["share"]).lower()} match_type: {P["mtype"]} '
              f'overlap_threshold: {P["thr"]} use_prior_for_matching: {str(P["prior_match"]).lower()} '
              f'background_label_id: 0 use_difficult_gt: false mining_type: {P["mining"]} neg_pos_ratio: {P["ratio"]} '
              f'neg_overlap: {P["neg_overlap"]} code_type: {P["code"]} loc_loss_type: {P["loc_type"]} '
              f'conf_loss_type: {P["conf_type"]} loc_weight: {P["loc_weight"]} sample_size: {P["sample_size"]} '
              f'encode_variance_in_target: {str(P["vit"]).lower()} '
              f'ignore_cross_boundary_bbox: {str(P["cross"]).lower()}')
    text = (f'name: "l" type: "MultiBoxLoss" bottom: "a" bottom: "b" bottom: "c" bottom: "d" top: "loss" '
            f'multibox_loss_param {{ {fields} }} loss_param {{ normalization: {P["norm"]} }}')
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = get_layer_class("MultiBoxLoss")(param, [loc.shape, conf.shape, prior.shape, gt.shape], caffe_pb2.TRAIN)
    lt, ct = torch.tensor(loc, requires_grad=True), torch.tensor(conf, requires_grad=True)
    out = layer(lt, ct, torch.tensor(prior), torch.tensor(gt))
    out.backward()
    ref_loss, ref_dloc, ref_dconf = _multibox_ref(loc, conf, prior, gt, P)
    assert out.shape == ()
    assert float(out.detach()) == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(lt.grad.numpy(), ref_dloc, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ct.grad.numpy(), ref_dconf, rtol=1e-9, atol=1e-12)


def test_background_label_in_ground_truth_is_an_error():
    text = ('name: "l" type: "MultiBoxLoss" bottom: "a" bottom: "b" bottom: "c" bottom: "d" top: "loss" '
            'multibox_loss_param { num_classes: 2 }')
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = get_layer_class("MultiBoxLoss")(param, [(1, 4), (1, 2), (1, 2, 4), (1, 1, 1, 8)], caffe_pb2.TRAIN)
    with pytest.raises(ValueError, match="background label 0"):
        layer(torch.zeros(1, 4), torch.zeros(1, 2), torch.tensor([[[0.1, 0.1, 0.4, 0.4], [0.1] * 4]]),
              torch.tensor([[[[0, 0, 0, 0.1, 0.1, 0.3, 0.3, 0]]]]))
