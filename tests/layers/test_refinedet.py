"""RefineDet (sfzhang15/RefineDet @ a9ca4b2, an SSD fork): DetectionOutput and MultiBoxLoss with the anchor
refinement module's bottoms, against NumPy loop ports of the fork's code paths (bbox_util.cpp:
CasRegDecodeBBoxesAll, OSGetConfidenceScores, ApplyNMSFast, CasRegFindMatches, MineHardExamples with
arm_conf, CasRegEncodeLocPrediction, GetGroundTruth's two-class mapping), the layers' errors, and a trimmed
copy of RefineDet's real VGG16 net (the ARM and ODM heads, TL/P blocks with Deconvolution and Eltwise, PriorBox,
Permute, Flatten, Concat, Reshape + Softmax) running forward and training on a tiny AnnotatedData LMDB."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers.test_multibox_loss import _conf_loss_ref, _conf_terms_ref, _decode, _encode, _jaccard, _match, _multibox_ref
from tests.layers.test_ssd_training import _dataset

OBJ = float(np.float32(0.01))   # objectness_score's default, as the fork's float holds it


def _layer(text: str, arrays, phase=caffe_pb2.TEST):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = get_layer_class(p.type)(p, [tuple(np.shape(a)) for a in arrays], phase)
    layer.reshape([tuple(np.shape(a)) for a in arrays])
    return layer


def _priors(r, num_priors, lo=-0.05, hi=0.75):
    xy = r.uniform(lo, hi, (num_priors, 2))
    wh = r.uniform(0.1, 0.35, (num_priors, 2))
    return np.stack([np.concatenate([xy, xy + wh], 1).reshape(-1), np.tile([0.1, 0.1, 0.2, 0.2], num_priors)])[None]


def _arm_conf(r, n, num_priors, low_share=0.3):
    """Softmaxed (background, object) pairs; about ``low_share`` of the priors below 0.01."""
    obj = np.where(r.uniform(0, 1, (n, num_priors)) < low_share, r.uniform(0, 0.0099, (n, num_priors)),
                   r.uniform(0.02, 1, (n, num_priors)))
    return np.stack([1 - obj, obj], -1).reshape(n, -1)


def _size(b):
    return 0.0 if b[2] < b[0] or b[3] < b[1] else (b[2] - b[0]) * (b[3] - b[1])


# --- the fork's DetectionOutput Forward_cpu, in loops -------------------------------------------------------


def _detect_ref(loc, conf, prior, arm_conf, arm_loc, *, C, bg, code, vit, thr, nms, top_k, keep_top_k, obj):
    """CasRegDecodeBBoxesAll (or DecodeBBoxesAll), OSGetConfidenceScores (or GetConfidenceScores), per class
    ApplyNMSFast, then keep_top_k; rows [image, label, score, box] (share_location)."""
    n, num_priors = loc.shape[0], prior.shape[2] // 4
    pri, var = prior[0, 0].reshape(-1, 4), prior[0, 1].reshape(-1, 4)
    out = []
    for i in range(n):
        base = list(pri)
        if arm_loc is not None:
            a = arm_loc[i].reshape(num_priors, 4)
            base = [_decode(pri[p], var[p], a[p], code, vit) for p in range(num_priors)]
        lo = loc[i].reshape(num_priors, 4)
        boxes = [_decode(base[p], var[p], lo[p], code, vit) for p in range(num_priors)]
        co = conf[i].reshape(num_priors, C)
        scores = {c: [co[p, c] for p in range(num_priors)] for c in range(C)}
        if arm_conf is not None:
            objness = arm_conf[i].reshape(num_priors, 2)[:, 1]
            for p in range(num_priors):
                if objness[p] < obj:
                    for c in range(C):
                        scores[c][p] = 1.0 if c == 0 else 0.0
        indices = {}
        for c in range(C):
            if c == bg:
                continue
            cand = sorted([(scores[c][p], p) for p in range(num_priors) if scores[c][p] > thr], key=lambda t: -t[0])
            if top_k > -1:
                cand = cand[:top_k]
            kept = []
            for _, p in cand:
                if all(_jaccard(boxes[p], boxes[k]) <= nms for k in kept):
                    kept.append(p)
            indices[c] = kept
        if keep_top_k > -1 and sum(len(v) for v in indices.values()) > keep_top_k:
            pairs = sorted([(scores[c][p], c, p) for c in sorted(indices) for p in indices[c]], key=lambda t: -t[0])
            indices = {}
            for _, c, p in pairs[:keep_top_k]:
                indices.setdefault(c, []).append(p)
        for c in sorted(indices):
            out += [[i, c, scores[c][p]] + list(boxes[p]) for p in indices[c]]
    if not out:
        return np.array([[i, -1, -1, -1, -1, -1, -1] for i in range(n)], np.float64)
    return np.array(out, np.float64)


def _det_text(C, bottoms, *, bg=0, code=2, vit=False, thr=0.05, top_k=-1, keep_top_k=-1, obj=None):
    names = "".join(f'bottom: "{b}" ' for b in bottoms)
    return (f'name: "det" type: "DetectionOutput" {names}top: "out" detection_output_param {{ num_classes: {C} '
            f'share_location: true background_label_id: {bg} code_type: {code} '
            f'variance_encoded_in_target: {str(vit).lower()} nms_param {{ nms_threshold: 0.35 '
            f'{"top_k: %d" % top_k if top_k > -1 else ""} }} keep_top_k: {keep_top_k} confidence_threshold: {thr} '
            f'{"" if obj is None else "objectness_score: %r" % obj} }}')


def _det_inputs(seed, n=2, num_priors=30, C=4):
    r = np.random.default_rng(seed)
    prior = _priors(r, num_priors, 0.0, 0.7)
    loc = r.standard_normal((n, num_priors * 4)) * 0.4
    logits = r.standard_normal((n, num_priors, C)) * 1.5
    conf = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).reshape(n, -1)
    return loc, conf, prior, _arm_conf(r, n, num_priors), r.standard_normal((n, num_priors * 4)) * 0.4


ODM_BOTTOMS = ("odm_loc", "odm_conf_flatten", "arm_priorbox", "arm_conf_flatten", "arm_loc")


@pytest.mark.parametrize("code,vit,bg,top_k,keep_top_k,thr", [
    (2, False, 0, -1, -1, 0.05), (2, False, 0, 8, 10, 0.01), (1, False, 0, 12, -1, 0.1), (3, True, 0, -1, 6, 0.0),
    (2, True, 2, 10, 12, 0.02)])
def test_detection_output_decodes_from_arm_refined_priors(code, vit, bg, top_k, keep_top_k, thr):
    """Five bottoms: the ODM's offsets decode from the priors the ARM's offsets refined, and priors of low
    objectness score (1, 0, ...): with background 2, the masked priors become class-0 detections of score 1,
    as in the fork (it writes class 0, whatever background_label_id)."""
    C = 4
    loc, conf, prior, arm_conf, arm_loc = _det_inputs(3 + code, C=C)
    layer = _layer(_det_text(C, ODM_BOTTOMS, bg=bg, code=code, vit=vit, thr=thr, top_k=top_k, keep_top_k=keep_top_k,
                             obj=0.01), [loc, conf, prior, arm_conf, arm_loc])
    got = layer(*map(torch.tensor, (loc, conf, prior, arm_conf, arm_loc))).numpy()[0, 0]
    ref = _detect_ref(loc, conf, prior, arm_conf, arm_loc, C=C, bg=bg, code=code, vit=vit, thr=thr, nms=0.35,
                      top_k=top_k, keep_top_k=keep_top_k, obj=OBJ)
    assert got.shape == ref.shape and got.shape[0] > 3
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    if bg == 2:
        assert ((got[:, 1] == 0) & (got[:, 2] == 1.0)).any()
    # without the ARM (SSD's form) the result differs: the refinement and the masking both act
    ssd = _layer(_det_text(C, ODM_BOTTOMS[:3], bg=bg, code=code, vit=vit, thr=thr, top_k=top_k,
                           keep_top_k=keep_top_k), [loc, conf, prior])(*map(torch.tensor, (loc, conf, prior)))
    ssd = ssd.numpy()[0, 0]
    assert ssd.shape != got.shape or not np.allclose(ssd, got)


def test_fourth_bottom_is_arm_conf_or_ssds_image():
    """Four bottoms: RefineDet's arm_conf when objectness_score is set or when it holds N x P x 2 values and
    is not 4-D (the fork then masks without refining); SSD's image bottom otherwise (not read)."""
    C = 4
    loc, conf, prior, arm_conf, _ = _det_inputs(11, n=1, C=C)
    t = [torch.tensor(a) for a in (loc, conf, prior, arm_conf)]
    ref = _detect_ref(loc, conf, prior, arm_conf, None, C=C, bg=0, code=2, vit=False, thr=0.05, nms=0.35, top_k=-1,
                      keep_top_k=-1, obj=float(np.float32(0.3)))
    with_field = _layer(_det_text(C, ODM_BOTTOMS[:4], obj=0.3), [loc, conf, prior, arm_conf])(*t).numpy()[0, 0]
    np.testing.assert_allclose(with_field, ref, rtol=1e-12, atol=1e-12)
    ref_default = _detect_ref(loc, conf, prior, arm_conf, None, C=C, bg=0, code=2, vit=False, thr=0.05, nms=0.35,
                              top_k=-1, keep_top_k=-1, obj=OBJ)
    by_shape = _layer(_det_text(C, ODM_BOTTOMS[:4]), [loc, conf, prior, arm_conf])(*t).numpy()[0, 0]
    np.testing.assert_allclose(by_shape, ref_default, rtol=1e-12, atol=1e-12)
    three = _layer(_det_text(C, ODM_BOTTOMS[:3]), [loc, conf, prior])(*t[:3])
    image = np.zeros((1, 3, 5, 12))     # 180 values = N x P x 2, but 4-D: an image
    four = _layer(_det_text(C, ODM_BOTTOMS[:3] + ("data",)), [loc, conf, prior, image])(*t[:3], torch.tensor(image))
    assert torch.equal(three, four) and not np.array_equal(three.numpy()[0, 0], by_shape)


def test_objectness_threshold_is_the_forks_float_comparison():
    """float32 nets: a prior whose objectness equals objectness_score (0.01f) is kept, one a ulp below masked."""
    prior = np.array([[[0.1, 0.1, 0.4, 0.4, 0.5, 0.5, 0.9, 0.9], [0.1, 0.1, 0.2, 0.2] * 2]], np.float32)
    loc, conf = np.zeros((1, 8), np.float32), np.array([[0.2, 0.8, 0.2, 0.8]], np.float32)
    at = np.float32(0.01)
    below = np.nextafter(at, np.float32(0))
    arm = np.array([[1 - at, at, 1 - below, below]], np.float32)
    layer = _layer(_det_text(2, ODM_BOTTOMS[:4], obj=0.01), [loc, conf, prior, arm]).float()
    got = layer(*map(torch.tensor, (loc, conf, prior, arm)))[0, 0]
    assert got.shape == (1, 7) and got[0, 1] == 1 and got[0, 3] == pytest.approx(0.1)   # the first prior only


# --- the fork's MultiBoxLoss Forward_cpu + Backward_cpu, in loops --------------------------------------------


def _apply_nms_ref(boxes, scores, thr, top_k):
    """ApplyNMS (mining): stable descending order, top_k, boxes under 1e-5 dropped, IoU > thr suppressed."""
    order = sorted(range(len(scores)), key=lambda k: -scores[k])
    if top_k > -1:
        order = order[:top_k]
    kept = []
    while order:
        b = order.pop(0)
        if _size(boxes[b]) < 1e-5:
            continue
        kept.append(b)
        if top_k > -1 and len(kept) >= top_k:
            break
        order = [k for k in order if _size(boxes[k]) >= 1e-5 and _jaccard(boxes[b], boxes[k]) <= thr]
    return kept


def _refinedet_loss_ref(loc, conf, prior, gt, P, arm_conf=None, arm_loc=None):
    """multibox_loss_layer.cpp of the fork (share_location), top diff 1: (loss, dloc, dconf). Raises IndexError
    where the fork reads past loss_indices (mining NMS with arm_conf)."""
    n, C, bg, code, vit = loc.shape[0], P["num_classes"], P["bg"], P["code"], P["vit"]
    npri = prior.shape[2] // 4
    pri, var = prior[0, 0].reshape(-1, 4), prior[0, 1].reshape(-1, 4)
    lo, co = loc.reshape(n, npri, 4), conf.reshape(n, npri, C)
    objness = None if arm_conf is None else arm_conf.reshape(n, npri, 2)[:, :, 1]
    gts = {}
    for r in gt.reshape(-1, 8):                      # GetGroundTruth with the two-class mapping
        if int(r[0]) == -1:
            continue
        label = int(r[1])
        if C == 2 and label >= 2:
            label = 1
        assert label != bg
        if not P["use_difficult"] and r[7]:
            continue
        gts.setdefault(int(r[0]), []).append({"label": label, "box": list(r[3:7])})
    refined = [list(pri) if arm_loc is None else
               [_decode(pri[p], var[p], arm_loc.reshape(n, npri, 4)[i, p], code, vit) for p in range(npri)]
               for i in range(n)]
    match, over = {}, {}
    for i in gts:                                    # CasRegFindMatches
        if P["prior_match"]:
            match[i], over[i] = _match(gts[i], refined[i], -1, P["mtype"], P["thr"], P["cross"])
        else:                                        # decoded from the original priors, as the fork does
            boxes = [_decode(pri[p], var[p], lo[i, p], code, vit) for p in range(npri)]
            match[i], over[i] = _match(gts[i], boxes, -1, P["mtype"], P["thr"], P["cross"])

    def encode_pair(i, p, priors):                   # (CasReg)EncodeLocPrediction of one match
        ge = _encode(priors[p], var[p], gts[i][match[i][p]]["box"], code, vit)
        pe = list(lo[i, p])
        if P.get("bp_inside"):
            box = priors[p] if P["prior_match"] else _decode(priors[p], var[p], lo[i, p], code, vit)
            pe = [ge[k] if box[k] < 0 or box[k] > 1 else pe[k] for k in range(4)]
        if vit:
            ge, pe = [ge[k] / var[p][k] for k in range(4)], [pe[k] / var[p][k] for k in range(4)]
        return pe, ge

    def loc_loss(d):
        return sum(0.5 * x * x if abs(x) < 1 or P["loc_type"] == 0 else abs(x) - 0.5 for x in d)

    negs = {i: [] for i in range(n)}
    if P["mining"]:
        for i in sorted(match):                      # MineHardExamples with arm_conf
            m, ov = match[i], over[i]
            labels = [gts[i][m[p]]["label"] if m[p] > -1 else bg for p in range(npri)]
            loss = [_conf_loss_ref(co[i, p], labels[p], P["conf_type"]) for p in range(npri)]
            if P["mining"] == 2:                     # SSD's EncodeLocPrediction: the original priors
                loss = [loss[p] + (loc_loss(np.subtract(*encode_pair(i, p, pri))) if m[p] > -1 else 0)
                        for p in range(npri)]
            elig = [p for p in range(npri) if P["mining"] == 2 or (m[p] == -1 and ov[p] < P["neg_overlap"])]
            loss_indices = [(loss[p], p) for p in elig if objness is None or objness[i, p] >= P["obj"]]
            num_sel = len(loss_indices)
            if P["mining"] == 1:
                num_pos = sum(1 for p in range(npri) if m[p] > -1)
                num_sel = min(int(np.float32(num_pos) * np.float32(P["ratio"])), num_sel)
            else:
                num_sel = min(P["sample_size"], num_sel)
            if P.get("nms"):
                boxes = [pri[p] if P["prior_for_nms"] else _decode(pri[p], var[p], lo[i, p], code, vit) for p in elig]
                nms_idx = _apply_nms_ref(boxes, [loss[p] for p in elig], P["nms"], -1)
                num_sel = min(len(nms_idx), num_sel)
                sel = set()
                for k in nms_idx[:num_sel]:
                    if k >= len(loss_indices):
                        raise IndexError(k)
                    sel.add(loss_indices[k][1])
            else:
                sel = {p for _, p in sorted(loss_indices, key=lambda t: -t[0])[:num_sel]}
            for p in range(npri):
                if m[p] > -1 and P["mining"] == 2 and p not in sel:
                    m[p] = -1
                elif m[p] == -1 and p in sel:
                    negs[i].append(p)
    num_matches = sum(1 for i in match for x in match[i] if x > -1)
    norm = max(1.0, {0: n * npri, 1: num_matches, 2: n, 3: 1}[P["norm"]])
    loss, dloc, dconf = 0.0, np.zeros_like(lo), np.zeros_like(co)
    for i in sorted(match):
        for p, mm in enumerate(match[i]):
            if mm > -1:
                pe, ge = encode_pair(i, p, refined[i])
                d = np.subtract(pe, ge)
                loss += P["loc_weight"] * loc_loss(d) / norm
                g = [x if abs(x) < 1 or P["loc_type"] == 0 else np.sign(x) for x in d]
                dloc[i, p] = np.array(g) * P["loc_weight"] / norm
    rows = []
    for i in range(n):
        if P["mining"]:
            if i in match:
                rows += [(i, p, gts[i][mm]["label"]) for p, mm in enumerate(match[i]) if mm > -1]
                rows += [(i, p, bg) for p in negs[i]]
        else:
            rows += [(i, p, gts[i][match[i][p]]["label"] if i in match and match[i][p] > -1 else bg)
                     for p in range(npri)]
    loss += _conf_terms_ref(co, rows, P["conf_type"], norm, dconf)
    return loss, dloc.reshape(loc.shape), dconf.reshape(conf.shape)


def _loss_inputs(seed, C, n=3, npri=30, labels=None, low_share=0.35):
    r = np.random.default_rng(seed)
    prior = _priors(r, npri)
    gt = []
    for i in (0, 0, 0, 2, 2, 2):          # image 1 has no ground truth; one box difficult
        x0, y0 = r.uniform(0, 0.6, 2)
        lab = r.integers(1, C) if labels is None else labels[len(gt)]
        gt.append([i, lab, 0, x0, y0, x0 + r.uniform(0.15, 0.4), y0 + r.uniform(0.15, 0.4), 0])
    gt[4][7] = 1
    gt.append([-1, 0, 0, 0, 0, 0, 0, 0])
    gt = np.array(gt, float)[None, None]
    return (r.standard_normal((n, npri * 4)) * 0.3, r.standard_normal((n, npri * C)), prior, gt,
            _arm_conf(r, n, npri, low_share), r.standard_normal((n, npri * 4)) * 0.3)


def _loss_text(P, bottoms):
    names = "".join(f'bottom: "{b}" ' for b in bottoms)
    nms = (f'nms_param {{ nms_threshold: {P["nms"]} }} use_prior_for_nms: {str(P["prior_for_nms"]).lower()} '
           if P.get("nms") else "")
    return (f'name: "odm_loss" type: "MultiBoxLoss" {names}top: "loss" multibox_loss_param {{ '
            f'num_classes: {P["num_classes"]} share_location: true match_type: {P["mtype"]} '
            f'overlap_threshold: {P["thr"]} use_prior_for_matching: {str(P["prior_match"]).lower()} '
            f'background_label_id: {P["bg"]} use_difficult_gt: {str(P["use_difficult"]).lower()} '
            f'mining_type: {P["mining"]} neg_pos_ratio: {P["ratio"]} neg_overlap: {P["neg_overlap"]} '
            f'code_type: {P["code"]} loc_loss_type: {P["loc_type"]} conf_loss_type: {P["conf_type"]} '
            f'loc_weight: {P["loc_weight"]} sample_size: {P["sample_size"]} '
            f'encode_variance_in_target: {str(P["vit"]).lower()} bp_inside: {str(P.get("bp_inside", False)).lower()} '
            f'ignore_cross_boundary_bbox: {str(P["cross"]).lower()} objectness_score: {P["obj_text"]} {nms}}} '
            f'loss_param {{ normalization: {P["norm"]} }}')


BASE = dict(num_classes=4, bg=0, use_difficult=False, thr=0.3, neg_overlap=0.45, ratio=2.5, loc_weight=1.5,
            sample_size=9, obj_text="0.01", mtype=1, prior_match=True, mining=1, loc_type=1, conf_type=0, norm=1,
            code=2, vit=False, cross=False)
LOSS_CASES = {
    "odm_max_negative": dict(),                                       # RefineDet's training setting
    "bipartite_full_l2": dict(mtype=0, loc_type=0, norm=0, obj_text="0.4"),
    "hard_example_corner_bp_inside": dict(mining=2, code=1, bp_inside=True, cross=True, norm=2),
    "hard_example_center": dict(mining=2, loc_type=0, conf_type=1),
    "match_decoded_vit": dict(prior_match=False, vit=True, norm=2, thr=0.2),
    "logistic_corner_size": dict(conf_type=1, code=3, bp_inside=True),
    "no_mining": dict(mining=0, norm=3),
}


def _check_loss(P, bottoms, arrays, ref_arm_conf, ref_arm_loc):
    layer = _layer(_loss_text(P, bottoms), arrays, caffe_pb2.TRAIN)
    lt, ct = torch.tensor(arrays[0], requires_grad=True), torch.tensor(arrays[1], requires_grad=True)
    out = layer(lt, ct, *map(torch.tensor, arrays[2:]))
    out.backward()
    loss, dloc, dconf = _refinedet_loss_ref(*arrays[:4], P, ref_arm_conf, ref_arm_loc)
    assert out.shape == () and float(out.detach()) == pytest.approx(loss, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(lt.grad.numpy(), dloc, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ct.grad.numpy(), dconf, rtol=1e-9, atol=1e-12)
    return float(out.detach())


@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_multibox_loss_with_arm_bottoms_matches_fork_loops(name):
    """Six bottoms (loc, conf, prior, label, arm_conf, arm_loc): matching and encoding against the refined
    priors, objectness-filtered mining (HARD_EXAMPLE's location loss against the original priors): loss
    and both bottom diffs. Five bottoms (arm_conf only): the filter, SSD's priors."""
    P = dict(BASE, **LOSS_CASES[name])
    P["obj"] = float(np.float32(float(P["obj_text"])))
    loc, conf, prior, gt, arm_conf, arm_loc = _loss_inputs(5, P["num_classes"])
    six = _check_loss(P, ("odm_loc", "odm_conf", "arm_priorbox", "label", "arm_conf_flatten", "arm_loc"),
                      [loc, conf, prior, gt, arm_conf, arm_loc], arm_conf, arm_loc)
    five = _check_loss(P, ("odm_loc", "odm_conf", "arm_priorbox", "label", "arm_conf_flatten"),
                       [loc, conf, prior, gt, arm_conf], arm_conf, None)
    ssd = _check_loss(P, ("odm_loc", "odm_conf", "arm_priorbox", "label"), [loc, conf, prior, gt], None, None)
    assert six != five and (five != ssd or not P["mining"])


@pytest.mark.parametrize("prior_for_nms", [True, False])
def test_mining_nms_with_arm_conf_reindexes_as_the_fork_or_refuses(prior_for_nms):
    """Mining with nms_param: the fork's NMS ranks the unfiltered candidates but reads the objectness-filtered
    list (bbox_util.cpp:1160). Where those positions stay inside the list we give its result; past it the
    fork reads out of bounds and the layer says so."""
    P = dict(BASE, nms=0.5, prior_for_nms=prior_for_nms, ratio=1.0, obj_text="0.01")
    P["obj"] = OBJ
    bottoms = ("odm_loc", "odm_conf", "arm_priorbox", "label", "arm_conf_flatten", "arm_loc")
    defined = undefined = 0
    for seed in range(8):
        arrays = list(_loss_inputs(20 + seed, P["num_classes"], low_share=0.04))
        try:
            _refinedet_loss_ref(*arrays[:4], P, arrays[4], arrays[5])
        except IndexError:
            undefined += 1
            layer = _layer(_loss_text(P, bottoms), arrays, caffe_pb2.TRAIN)
            with pytest.raises(LayerSetupError, match="odm_loss.*no defined result"):
                layer(*map(torch.tensor, arrays))
            continue
        defined += 1
        _check_loss(P, bottoms, arrays, arrays[4], arrays[5])
    assert defined and undefined


def test_arm_loss_maps_labels_to_objectness_with_two_classes():
    """RefineDet's ARM loss (4 bottoms, num_classes 2): labels >= 2 count as class 1 (GetGroundTruth). With
    share_location: false SSD's per-class matching skips such boxes, and so do we."""
    P = dict(BASE, num_classes=2, mining=1, obj_text="0.01")
    loc, _, prior, gt, _, _ = _loss_inputs(8, 4, labels=[1, 3, 2, 5, 1, 2])
    conf = np.random.default_rng(1).standard_normal((3, 30 * 2))
    _check_loss(P, ("arm_loc", "arm_conf", "arm_priorbox", "label"), [loc, conf, prior, gt], None, None)
    # share_location: false (SSD's form only): no mapping
    text = ('name: "l" type: "MultiBoxLoss" bottom: "a" bottom: "b" bottom: "c" bottom: "d" top: "loss" '
            'multibox_loss_param { num_classes: 2 share_location: false mining_type: NONE overlap_threshold: 0.3 '
            'code_type: CENTER_SIZE background_label_id: 0 use_difficult_gt: false } '
            'loss_param { normalization: VALID }')
    loc2 = np.random.default_rng(2).standard_normal((3, 30 * 2 * 4)) * 0.3
    layer = _layer(text, [loc2, conf, prior, gt], caffe_pb2.TRAIN)
    lt, ct = torch.tensor(loc2, requires_grad=True), torch.tensor(conf, requires_grad=True)
    out = layer(lt, ct, torch.tensor(prior), torch.tensor(gt))
    out.backward()
    ref = _multibox_ref(loc2, conf, prior, gt, dict(num_classes=2, share=False, bg=0, code=2, vit=False,
                                                    prior_match=True, mtype=1, thr=0.3, cross=False, mining=0,
                                                    use_difficult=False, norm=1, loc_type=1, conf_type=0,
                                                    loc_weight=1.0))
    assert float(out.detach()) == pytest.approx(ref[0], rel=1e-10)
    np.testing.assert_allclose(ct.grad.numpy(), ref[2], rtol=1e-9, atol=1e-12)


# --- errors ------------------------------------------------------------------------------------------------


def _shapes_error(text, shapes, match):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    with pytest.raises(LayerSetupError, match=match):
        get_layer_class(p.type)(p, shapes, caffe_pb2.TRAIN)


def test_wrong_bottom_counts_and_shapes_are_errors():
    det = _det_text(4, ODM_BOTTOMS + ("extra",), obj=0.01)
    _shapes_error(det, [(1, 120), (1, 120), (1, 2, 120), (1, 60), (1, 120), (1,)],
                  r"layer 'det' \(DetectionOutput\) takes at most 5 bottom blob\(s\); received 6")
    P = dict(BASE, obj="0.01")
    loss7 = _loss_text(P, ("a", "b", "c", "d", "e", "f", "g"))
    _shapes_error(loss7, [(1, 120), (1, 120), (1, 2, 120), (1, 1, 1, 8), (1, 60), (1, 120), (1,)],
                  r"layer 'odm_loss' \(MultiBoxLoss\) takes at most 6 bottom blob\(s\); received 7")
    _shapes_error(_loss_text(P, ("a", "b", "c")), [(1, 120), (1, 120), (1, 2, 120)],
                  r"layer 'odm_loss' \(MultiBoxLoss\) takes at least 4 bottom blob\(s\); received 3")
    # arm_conf / arm_loc with the wrong number of values
    _shapes_error(det.replace('bottom: "extra" ', ''), [(1, 120), (1, 120), (1, 2, 120), (1, 90), (1, 120)],
                  r"layer 'det' \(DetectionOutput\): RefineDet's arm_conf \(bottom 3\) must hold 2 values per prior "
                  r"and image: expected \(1, 60\) for 30 priors; received shape \(1, 90\)")
    _shapes_error(loss7.replace('bottom: "g" ', ''), [(2, 120), (2, 120), (1, 2, 120), (1, 1, 1, 8), (2, 60), (2, 60)],
                  r"layer 'odm_loss' \(MultiBoxLoss\): RefineDet's arm_loc \(bottom 5\) must hold 4 values per prior "
                  r"and image: expected \(2, 120\) for 30 priors; received shape \(2, 60\)")
    _shapes_error(loss7.replace('bottom: "g" ', ''), [(2, 120), (2, 120), (1, 2, 120), (1, 1, 1, 8), (1, 60), (2, 120)],
                  r"arm_conf \(bottom 4\).*expected \(2, 60\).*received shape \(1, 60\)")
    # the ARM's offsets refine shared priors only; visualize has no image bottom in RefineDet's form
    _shapes_error(det.replace('bottom: "extra" ', '').replace("share_location: true", "share_location: false"),
                  [(1, 480), (1, 120), (1, 2, 120), (1, 60), (1, 120)], r"'det'.*needs share_location: true")
    _shapes_error(det.replace('bottom: "extra" ', '').replace("keep_top_k", "visualize: true keep_top_k"),
                  [(1, 120), (1, 120), (1, 2, 120), (1, 60), (1, 120)], r"'det'.*visualize.*arm_conf")


# --- a trimmed copy of RefineDet's VGG16 net: deploy forward, training ----------------------------------------

C = 3   # background, red, green (tests.layers.test_ssd_training's data)
LEVELS = (("conv4_3_norm", "P3", 6, 4), ("fc7", "P4", 12, 8), ("conv6_2", "P5", 20, 16))   # source, odm, min, step


def _conv(name, bottom, n, k=3, p=1, s=1, relu=True):
    text = (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" param {{ lr_mult: 1 '
            f'decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }} convolution_param {{ num_output: {n} pad: {p} '
            f'kernel_size: {k} stride: {s} weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" '
            f'value: 0 }} }} }}\n')
    return text + (f'layer {{ name: "{name}_relu" type: "ReLU" bottom: "{name}" top: "{name}" }}\n' if relu else "")


def _head(src, kind, n):
    return _conv(f"{src}_mbox_{kind}", src, n, relu=False) + (
        f'layer {{ name: "{src}_mbox_{kind}_perm" type: "Permute" bottom: "{src}_mbox_{kind}" '
        f'top: "{src}_mbox_{kind}_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}\n'
        f'layer {{ name: "{src}_mbox_{kind}_flat" type: "Flatten" bottom: "{src}_mbox_{kind}_perm" '
        f'top: "{src}_mbox_{kind}_flat" flatten_param {{ axis: 1 }} }}\n')


def _concat(name, bottoms, axis=1):
    return (f'layer {{ name: "{name}" type: "Concat" {"".join(f"bottom: {chr(34)}{b}{chr(34)} " for b in bottoms)}'
            f'top: "{name}" concat_param {{ axis: {axis} }} }}\n')


def _softmax_flat(name, classes):
    return (f'layer {{ name: "{name}_reshape" type: "Reshape" bottom: "{name}" top: "{name}_reshape" '
            f'reshape_param {{ shape {{ dim: 0 dim: -1 dim: {classes} }} }} }}\n'
            f'layer {{ name: "{name}_softmax" type: "Softmax" bottom: "{name}_reshape" top: "{name}_softmax" '
            f'softmax_param {{ axis: 2 }} }}\n'
            f'layer {{ name: "{name}_flatten" type: "Flatten" bottom: "{name}_softmax" top: "{name}_flatten" '
            f'flatten_param {{ axis: 1 }} }}\n')


def _body():
    """RefineDet's VGG16 layout at 1/8 the depth and width: conv4_3 (Normalize), fc7, conv6_2 as the ARM's
    sources; TL/P blocks from the top down (P5, then P4 and P3 with a 2x Deconvolution of the level above
    summed in by Eltwise); 3 priors a cell (min_size, aspect ratio 2 flipped)."""
    t = _conv("conv1_1", "data", 8) + (
        'layer { name: "pool1" type: "Pooling" bottom: "conv1_1" top: "pool1" '
        'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n')
    t += _conv("conv2_1", "pool1", 12) + (
        'layer { name: "pool2" type: "Pooling" bottom: "conv2_1" top: "pool2" '
        'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n')
    t += _conv("conv4_3", "pool2", 16) + (
        'layer { name: "pool4" type: "Pooling" bottom: "conv4_3" top: "pool4" '
        'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
        'layer { name: "pool4b" type: "Pooling" bottom: "pool4" top: "pool4b" '
        'pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 } }\n')
    t += _conv("fc7", "pool4b", 24, k=1, p=0)
    t += _conv("conv6_1", "fc7", 16, k=1, p=0) + _conv("conv6_2", "conv6_1", 24, s=2)
    t += _conv("TL5_1", "conv6_2", 16) + _conv("TL5_2", "TL5_1", 16) + _conv("P5", "TL5_2", 16)
    t += ('layer { name: "conv4_3_norm" type: "Normalize" bottom: "conv4_3" top: "conv4_3_norm" '
          'norm_param { across_spatial: false scale_filler { type: "constant" value: 10 } channel_shared: false } }\n')
    for lvl, src, up in ((4, "fc7", "P5"), (3, "conv4_3_norm", "P4")):
        t += _conv(f"TL{lvl}_1", src, 16) + _conv(f"TL{lvl}_2", f"TL{lvl}_1", 16, relu=False)
        t += (f'layer {{ name: "{up}-up" type: "Deconvolution" bottom: "{up}" top: "{up}-up" param {{ lr_mult: 1 '
              f'decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }} convolution_param {{ num_output: 16 pad: 0 '
              f'kernel_size: 2 stride: 2 weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" '
              f'value: 0 }} }} }}\n'
              f'layer {{ name: "Elt{lvl}" type: "Eltwise" bottom: "TL{lvl}_2" bottom: "{up}-up" top: "Elt{lvl}" '
              f'eltwise_param {{ operation: SUM }} }}\n'
              f'layer {{ name: "Elt{lvl}_relu" type: "ReLU" bottom: "Elt{lvl}" top: "Elt{lvl}" }}\n')
        t += _conv(f"P{lvl}", f"Elt{lvl}", 16)
    for src, _, mn, step in LEVELS:
        t += _head(src, "loc", 12) + _head(src, "conf", 6) + (
            f'layer {{ name: "{src}_mbox_priorbox" type: "PriorBox" bottom: "{src}" bottom: "data" '
            f'top: "{src}_mbox_priorbox" prior_box_param {{ min_size: {mn} aspect_ratio: 2 flip: true clip: false '
            f'variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: {step} offset: 0.5 }} }}\n')
    t += _concat("arm_loc", [f"{s}_mbox_loc_flat" for s, *_ in LEVELS])
    t += _concat("arm_conf", [f"{s}_mbox_conf_flat" for s, *_ in LEVELS])
    t += _concat("arm_priorbox", [f"{s}_mbox_priorbox" for s, *_ in LEVELS], axis=2)
    for _, odm, *_ in LEVELS:
        t += _head(odm, "loc", 12) + _head(odm, "conf", 3 * C)
    t += _concat("odm_loc", [f"{o}_mbox_loc_flat" for _, o, *_ in LEVELS])
    t += _concat("odm_conf", [f"{o}_mbox_conf_flat" for _, o, *_ in LEVELS])
    return t


def _deploy(objectness="0.01"):
    return ('name: "refinedet_trimmed_deploy"\ninput: "data"\ninput_shape { dim: 2 dim: 3 dim: 32 dim: 32 }\n'
            + _body() + _softmax_flat("arm_conf", 2) + _softmax_flat("odm_conf", C)
            + 'layer { name: "detection_out" type: "DetectionOutput" bottom: "odm_loc" bottom: "odm_conf_flatten" '
              'bottom: "arm_priorbox" bottom: "arm_conf_flatten" bottom: "arm_loc" top: "detection_out" '
              'include { phase: TEST } detection_output_param { num_classes: 3 share_location: true '
              'background_label_id: 0 nms_param { nms_threshold: 0.45 top_k: 1000 } code_type: CENTER_SIZE '
              f'keep_top_k: 500 confidence_threshold: 0.01 objectness_score: {objectness} }} }}\n')


@pytest.mark.parametrize("objectness", ["0.01", "0.5"])
def test_trimmed_refinedet_deploy_runs_forward(objectness):
    """The deploy net's ARM/ODM heads and DetectionOutput (RefineDet's 5 bottoms) run; the detections are the
    NumPy port's on the net's own blobs (objectness 0.5 masks about half of the priors: random weights)."""
    from neocaffe import rng
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    rng.set_seed(4)
    net = Net(read_net(_deploy(objectness)))
    net.forward({"data": torch.rand(2, 3, 32, 32) * 2 - 1})
    b = {k: net.blob_data[k].double().numpy() for k in ("odm_loc", "odm_conf_flatten", "arm_priorbox",
                                                        "arm_conf_flatten", "arm_loc")}
    num_priors = 3 * (8 * 8 + 4 * 4 + 2 * 2)
    assert b["arm_priorbox"].shape == (1, 2, num_priors * 4) and b["odm_conf_flatten"].shape == (2, num_priors * C)
    assert b["arm_conf_flatten"].shape == (2, num_priors * 2) and b["arm_loc"].shape == (2, num_priors * 4)
    got = net.blob_data["detection_out"].numpy()[0, 0]
    ref = _detect_ref(b["odm_loc"], b["odm_conf_flatten"], b["arm_priorbox"], b["arm_conf_flatten"], b["arm_loc"],
                      C=C, bg=0, code=2, vit=False, thr=np.float32(0.01), nms=np.float32(0.45), top_k=1000,
                      keep_top_k=500, obj=float(np.float32(float(objectness))))
    assert got.shape == ref.shape and got.shape[0] > 10
    np.testing.assert_array_equal(got[:, :2], ref[:, :2])
    np.testing.assert_allclose(got[:, 2:], ref[:, 2:], rtol=2e-6, atol=2e-6)


def _train_net(db, labelmap):
    loss = ('layer {{ name: "{name}" type: "MultiBoxLoss" {bottoms}top: "{name}" include {{ phase: TRAIN }} {pd}'
            'loss_param {{ normalization: VALID }} multibox_loss_param {{ loc_loss_type: SMOOTH_L1 '
            'conf_loss_type: SOFTMAX loc_weight: 1.0 num_classes: {c} share_location: true match_type: PER_PREDICTION '
            'overlap_threshold: 0.5 use_prior_for_matching: true background_label_id: 0 use_difficult_gt: true '
            'neg_pos_ratio: 3.0 neg_overlap: 0.5 code_type: CENTER_SIZE ignore_cross_boundary_bbox: false '
            'mining_type: MAX_NEGATIVE objectness_score: 0.01 }} }}\n')
    data = (f'layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: TRAIN }}\n'
            f'  transform_param {{ mirror: true mean_value: 64 mean_value: 64 mean_value: 64 scale: 0.015625\n'
            f'    resize_param {{ prob: 1 resize_mode: WARP height: 32 width: 32 interp_mode: LINEAR }}\n'
            f'    emit_constraint {{ emit_type: CENTER }} }}\n'
            f'  data_param {{ source: "{db}" batch_size: 8 backend: LMDB }}\n'
            f'  annotated_data_param {{ label_map_file: "{labelmap}" batch_sampler {{ max_sample: 1 max_trials: 1 }}\n'
            f'    batch_sampler {{ sampler {{ min_scale: 0.6 max_scale: 1 min_aspect_ratio: 0.7 '
            f'max_aspect_ratio: 1.4 }}\n'
            f'      sample_constraint {{ min_jaccard_overlap: 0.5 }} max_sample: 1 max_trials: 20 }} }} }}\n')
    arm = "".join(f'bottom: "{b}" ' for b in ("arm_loc", "arm_conf", "arm_priorbox", "label"))
    odm = "".join(f'bottom: "{b}" ' for b in ("odm_loc", "odm_conf", "arm_priorbox", "label", "arm_conf_flatten",
                                              "arm_loc"))
    return ('name: "refinedet_trimmed_train"\n' + data + _body()
            + loss.format(name="arm_loss", bottoms=arm, c=2, pd="propagate_down: true propagate_down: true "
                          "propagate_down: false propagate_down: false ")
            + _softmax_flat("arm_conf", 2)
            + loss.format(name="odm_loss", bottoms=odm, c=C, pd="propagate_down: true propagate_down: true "
                          + "propagate_down: false " * 4))


def test_trimmed_refinedet_trains_on_annotated_lmdb(tmp_path):
    """arm_loss (num_classes 2: the green boxes' label 2 counts as an object) and odm_loss (6 bottoms) train
    the trimmed net from a convert_annoset LMDB; both losses fall."""
    from neocaffe.solver.solver import Solver
    from neocaffe.tools import convert_annoset

    _dataset(tmp_path)
    assert convert_annoset.run(["--anno_type=detection", f"--label_map_file={tmp_path / 'labelmap.prototxt'}",
                                "--encoded", "--encode_type=png", f"{tmp_path}/", str(tmp_path / "list.txt"),
                                str(tmp_path / "db")]) == 0
    (tmp_path / "train.prototxt").write_text(_train_net(tmp_path / "db", tmp_path / "labelmap.prototxt"))
    solver = caffe_pb2.SolverParameter()
    text_format.Parse(f'net: "{tmp_path / "train.prototxt"}" base_lr: 0.002 lr_policy: "fixed" type: "Adam" '
                      'momentum: 0.9 momentum2: 0.999 weight_decay: 0.0005 max_iter: 100 display: 0 '
                      'snapshot_after_train: false random_seed: 3 solver_mode: CPU', solver)
    s = Solver(solver)
    arm, odm = [], []
    for _ in range(100):
        s.step(1)
        arm.append(float(s.net.blob_data["arm_loss"]))
        odm.append(float(s.net.blob_data["odm_loss"]))
    arm, odm = np.array(arm), np.array(odm)
    assert np.isfinite(arm).all() and np.isfinite(odm).all()
    print(f"trimmed RefineDet: arm_loss {arm[:15].mean():.3f} -> {arm[-15:].mean():.3f}, "
          f"odm_loss {odm[:15].mean():.3f} -> {odm[-15:].mean():.3f}")
    assert arm[-15:].mean() < 0.7 * arm[:15].mean() and odm[-15:].mean() < 0.7 * odm[:15].mean()


# --- DetectionEvaluate: RefineDet's GetGroundTruth (num_classes 2 reads labels >= 2 as 1) ---------------------


def _refinedet_ground_truth(gt, num_classes):
    """RefineDet's GetGroundTruth (bbox_util.cpp:1258-1290) up to the label: rows until item -1, the label
    read as an int and, with num_classes 2, labels >= 2 made 1; the rest of the row as it is."""
    rows = []
    for r in gt:
        if int(r[0]) == -1:
            break
        label = int(r[1])
        if num_classes == 2 and label >= 2:
            label = 1
        rows.append([r[0], label, *r[2:]])
    return np.array(rows + [[-1] * 8], float)


@pytest.mark.parametrize("evaluate_difficult", [True, False])
def test_detection_evaluate_reads_refinedets_two_class_labels(evaluate_difficult):
    """With refinedet_labels and num_classes 2, the ground truth's labels 2 and 3 count (and match) as 1, as
    RefineDet's detection_evaluate_layer.cpp (SSD's, calling its own GetGroundTruth) does; without the field
    (or with num_classes 3) the top is SSD's to the bit."""
    from tests.layers.test_detection import _evaluate_ref

    r = np.random.default_rng(21)
    gt, det = [], []
    for item in (0, 0, 0, 1, 1, 2):
        x, y = r.uniform(0, 0.6, 2)
        gt.append([item, int(r.integers(1, 4)), 0, x, y, x + 0.3, y + 0.3, int(r.integers(0, 2))])
        for _ in range(2):
            det.append([item, 1, r.uniform(0.1, 1), *(np.array([x, y, x + 0.3, y + 0.3]) + r.normal(0, 0.04, 4))])
    det.append([3, 1, 0.3, 0.1, 0.1, 0.2, 0.2])
    det, gt = np.array(det)[None, None], np.array(gt + [[-1] * 8])[None, None]
    assert (gt[0, 0, :, 1] >= 2).sum() >= 2
    text = ('name: "e" type: "DetectionEvaluate" bottom: "d" bottom: "g" top: "e" detection_evaluate_param {{ '
            f'num_classes: {{c}} background_label_id: 0 evaluate_difficult_gt: {str(evaluate_difficult).lower()} {{x}} }}}}')

    def run(c, extra):
        layer = _layer(text.format(c=c, x=extra), [det, gt])
        return layer(torch.tensor(det), torch.tensor(gt)).numpy()[0, 0]

    got = run(2, "refinedet_labels: true")
    want = _evaluate_ref(det[0, 0], _refinedet_ground_truth(gt[0, 0], 2), 2, 0, 0.5, evaluate_difficult)
    np.testing.assert_array_equal(got, want)
    ssd = _evaluate_ref(det[0, 0], gt[0, 0], 2, 0, 0.5, evaluate_difficult)
    assert got[0, 2] > ssd[0, 2] and got[1:, 3].sum() > ssd[1:, 3].sum()   # more positives, more true positives
    np.testing.assert_array_equal(run(2, ""), ssd)
    np.testing.assert_array_equal(run(3, "refinedet_labels: true"),
                                  _evaluate_ref(det[0, 0], gt[0, 0], 3, 0, 0.5, evaluate_difficult))


def test_numbering_documents_refinedet_labels():
    from tests.test_proto_schema import _table

    rows = {(r[0], r[1].split(" ")[0]): int(r[2]) for r in _table("Our own fields")}
    field = caffe_pb2.DetectionEvaluateParameter.DESCRIPTOR.fields_by_name["refinedet_labels"]
    assert rows[("DetectionEvaluateParameter", "refinedet_labels")] == field.number == 10000
