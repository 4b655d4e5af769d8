"""Loop-by-loop ports of TextBoxes++'s annotation code (MhLiao/TextBoxes_plusplus @
39d4898de1504c53a2ed3d67966a57b3595836d0), written from its C++ independently of neocaffe's vectorized
implementation, for the tests to compare against:

- ``src/caffe/util/bbox_util.cpp``: ClipBBox, BBoxSize, IntersectBBox, BBoxCoverage, MeetEmitConstraint,
  ProjectBBoxPolygon, PolygonToRboxTheta, point_line_distance, ray_length_in_bbox, ClipPolygon,
  RboxThetaToPolygon, ExtrapolateBBoxPolygon, JaccardOverlap, ScaleBBox, OutputBBox (no resize / WARP),
  GetDetectionResults (15 / 12 columns), GetGroundTruth (16 columns);
- ``src/caffe/util/im_transforms.cpp``: first_point, UpdateBBoxByResizePolicy (box and polygon);
- ``src/caffe/data_transformer.cpp``: TransformAnnotation;
- ``src/caffe/layers/detection_evaluate_layer.cpp``: Forward_cpu.

Scalars are numpy float32 where the fork's are float; where it mixes in a double (``M_PI``, a ``2.`` literal) the
expression is computed in Python floats and rounded to float32 where the fork stores it. Float libm calls on float
arguments (``std::cos(float)``, ``std::atan2(float, float)``) are the double result rounded to float.
"""
from __future__ import annotations

import math

import numpy as np

f = np.float32
INF = f(np.inf)


def cosf(t):
    return f(math.cos(float(t)))


def sinf(t):
    return f(math.sin(float(t)))


def atan2f(y, x):
    return f(math.atan2(float(y), float(x)))


def sqrtf(v):
    return f(math.sqrt(float(v)))


def fmin(a, b):
    """std::min(a, b): ``b < a ? b : a``."""
    return b if b < a else a


# -- boxes: dicts {xmin, ymin, xmax, ymax, difficult, size (None: unset), score} -----------------------------------
def bbox(xmin, ymin, xmax, ymax, difficult=False, score=0.0):
    return dict(xmin=f(xmin), ymin=f(ymin), xmax=f(xmax), ymax=f(ymax), difficult=bool(difficult), size=None,
                score=f(score))


def bbox_size(b, normalized=True):
    if b["xmax"] < b["xmin"] or b["ymax"] < b["ymin"]:
        return f(0)
    if b["size"] is not None:
        return b["size"]
    w, h = b["xmax"] - b["xmin"], b["ymax"] - b["ymin"]
    return w * h if normalized else (w + f(1)) * (h + f(1))


def clip_bbox(b):
    out = dict(b)
    for k in ("xmin", "ymin", "xmax", "ymax"):
        out[k] = max(min(b[k], f(1)), f(0))
    out["size"] = None
    out["size"] = bbox_size(out)
    return out


def scale_bbox(b, height, width):
    out = dict(b)
    out["xmin"], out["xmax"] = b["xmin"] * f(width), b["xmax"] * f(width)
    out["ymin"], out["ymax"] = b["ymin"] * f(height), b["ymax"] * f(height)
    out["size"] = None
    out["size"] = bbox_size(out, not (width > 1 or height > 1))
    return out


def intersect_bbox(a, b):
    if b["xmin"] > a["xmax"] or b["xmax"] < a["xmin"] or b["ymin"] > a["ymax"] or b["ymax"] < a["ymin"]:
        return bbox(0, 0, 0, 0)
    return bbox(max(a["xmin"], b["xmin"]), max(a["ymin"], b["ymin"]), min(a["xmax"], b["xmax"]),
                min(a["ymax"], b["ymax"]))


def bbox_coverage(a, b):
    inter = intersect_bbox(a, b)
    isz = bbox_size(inter)
    return isz / bbox_size(a) if isz > 0 else f(0)


def meet_emit_constraint(src, b, emit):
    """``emit``: None, ("center",) or ("min_overlap", threshold)."""
    if emit is None:
        return True
    if emit[0] == "center":
        xc, yc = (b["xmin"] + b["xmax"]) / f(2), (b["ymin"] + b["ymax"]) / f(2)
        return src["xmin"] <= xc <= src["xmax"] and src["ymin"] <= yc <= src["ymax"]
    return bbox_coverage(b, src) > f(emit[1])


def jaccard_overlap(a, b, normalized=True):
    inter = intersect_bbox(a, b)
    if normalized:
        iw, ih = inter["xmax"] - inter["xmin"], inter["ymax"] - inter["ymin"]
    else:
        iw, ih = inter["xmax"] - inter["xmin"] + f(1), inter["ymax"] - inter["ymin"] + f(1)
    if iw > 0 and ih > 0:
        isz = iw * ih
        return isz / (bbox_size(a) + bbox_size(b) - isz)
    return f(0)


# -- polygons: lists of 8 float32 ----------------------------------------------------------------------------------
def point_distance(x1, y1, x2, y2):
    dx, dy = x2 - x1, y2 - y1
    return sqrtf(dx * dx + dy * dy)


def point_line_distance(px, py, x1, y1, x2, y2):
    eps = f(1e-6)
    dx, dy = x2 - x1, y2 - y1
    divider = sqrtf(dx * dx + dy * dy) + eps
    return f(abs(px * dy - py * dx + x2 * y1 - y2 * x1)) / divider


def polygon_to_rbox_theta(p):
    x_tl, y_tl, x_tr, y_tr, x_br, y_br, x_bl, y_bl = p
    cx = f(float(x_tl + x_tr + x_br + x_bl) / 4.)
    cy = f(float(y_tl + y_tr + y_br + y_bl) / 4.)
    width = f(float(point_distance(x_tl, y_tl, x_tr, y_tr) + point_distance(x_bl, y_bl, x_br, y_br)) / 2.)
    height = (point_line_distance(cx, cy, x_tl, y_tl, x_tr, y_tr)
              + point_line_distance(cx, cy, x_bl, y_bl, x_br, y_br))
    theta1 = atan2f(y_tr - y_tl, x_tr - x_tl)
    theta2 = atan2f(y_br - y_bl, x_br - x_bl)
    theta = f(float(theta1 + theta2) / 2.)
    return cx, cy, width, height, theta


def ray_length_in_bbox(x, y, theta):
    ray = INF
    if not (x >= 0 and x <= 1 and y >= 0 and y <= 1):
        return ray
    with np.errstate(divide="ignore", invalid="ignore"):
        s, c = sinf(theta), cosf(theta)
        dt = (f(0) - y) / s
        db = (f(1) - y) / s
        dl = (f(0) - x) / c
        dr = (f(1) - x) / c
    for d in (dt, db, dl, dr):
        if d >= 0:
            ray = fmin(ray, d)
    return ray


def rbox_theta_to_polygon(cx, cy, width, height, theta):
    t, h, w = float(theta), float(height), float(width)
    x_tc = f(float(cx) + math.cos(t - math.pi / 2) * h / 2.)
    y_tc = f(float(cy) + math.sin(t - math.pi / 2) * h / 2.)
    x1 = f(float(x_tc) + math.cos(t - math.pi) * w / 2.)
    y1 = f(float(y_tc) + math.sin(t - math.pi) * w / 2.)
    x2 = f(float(x_tc) + float(cosf(theta) * width) / 2.)
    y2 = f(float(y_tc) + float(sinf(theta) * width) / 2.)
    x3 = f(float(x2) + math.cos(t + math.pi / 2) * h)
    y3 = f(float(y2) + math.sin(t + math.pi / 2) * h)
    x4 = f(float(x1) + math.cos(t + math.pi / 2) * h)
    y4 = f(float(y1) + math.sin(t + math.pi / 2) * h)
    return [x1, y1, x2, y2, x3, y3, x4, y4]


def clip_polygon(p):
    eps = f(1e-6)
    cx, cy, width, height, theta = polygon_to_rbox_theta(p)
    half_width = f(float(width) / 2.)
    len_rhalf = ray_length_in_bbox(cx, cy, theta)
    len_lhalf = ray_length_in_bbox(cx, cy, f(math.pi + float(theta)))
    clipped_width = fmin(half_width, len_rhalf) + fmin(half_width, len_lhalf)
    if clipped_width < width - eps:
        move_rhalf = f(float(len_rhalf - half_width) / 2.) if len_rhalf < half_width else f(0)
        move_lhalf = f(float(half_width - len_lhalf) / 2.) if len_lhalf < half_width else f(0)
        move_len = move_rhalf + move_lhalf
        cx = cx + cosf(theta) * move_len
        cy = cy + sinf(theta) * move_len
    return rbox_theta_to_polygon(cx, cy, clipped_width, height, theta)


def project_bbox_polygon(src, b, p):
    """(kept, projected box, projected and clipped polygon)."""
    if b["xmin"] >= src["xmax"] or b["xmax"] <= src["xmin"] or b["ymin"] >= src["ymax"] or b["ymax"] <= src["ymin"]:
        return False, None, None
    sw, sh = src["xmax"] - src["xmin"], src["ymax"] - src["ymin"]
    proj = bbox((b["xmin"] - src["xmin"]) / sw, (b["ymin"] - src["ymin"]) / sh, (b["xmax"] - src["xmin"]) / sw,
                (b["ymax"] - src["ymin"]) / sh, b["difficult"])
    q = []
    for k in range(4):
        q += [(p[2 * k] - src["xmin"]) / sw, (p[2 * k + 1] - src["ymin"]) / sh]
    q = clip_polygon(q)
    proj = clip_bbox(proj)
    return bbox_size(proj) > 0, proj, q


# -- the resize ----------------------------------------------------------------------------------------------------
def point_dist(x1, y1, x2, y2):
    return sqrtf((x1 - x2) * (x1 - x2) + (y1 - y2) * (y1 - y2))


def first_point(x1, y1, x2, y2, x3, y3, x4, y4):
    xmin = min(min(min(x1, x2), x3), x4)
    ymin = min(min(min(y1, y2), y3), y4)
    xmax = max(max(max(x1, x2), x3), x4)
    ymax = max(max(max(y1, y2), y3), y4)
    corners = ((xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax))
    pts = ((x1, y1), (x2, y2), (x3, y3), (x4, y4))
    d1, d2, d3, d4 = (point_dist(*pts[s % 4], *corners[0]) + point_dist(*pts[(s + 1) % 4], *corners[1])
                      + point_dist(*pts[(s + 2) % 4], *corners[2]) + point_dist(*pts[(s + 3) % 4], *corners[3])
                      for s in range(4))
    index, best = 1, d1
    if d2 < best:
        index, best = 2, d2
    if d3 < best:
        index, best = 3, d3
    if d4 < best:
        index, best = 4, d4
    return index


def update_bbox_by_resize_policy(mode, height, width, old_width, old_height, b, p):
    """``mode``: 1 WARP, 2 FIT_SMALL_SIZE, 3 FIT_LARGE_SIZE_AND_PAD. Returns (box, polygon)."""
    new_height, new_width = f(height), f(width)
    orig_aspect = f(old_width) / f(old_height)
    new_aspect = new_width / new_height
    x_min, y_min = b["xmin"] * f(old_width), b["ymin"] * f(old_height)
    x_max, y_max = b["xmax"] * f(old_width), b["ymax"] * f(old_height)
    pts = [p[k] * f(old_width if k % 2 == 0 else old_height) for k in range(8)]
    start = first_point(*pts) - 1
    new = []
    for k in range(4):
        j = (start + k) % 4
        new += [pts[2 * j], pts[2 * j + 1]]
    zero = f(0)
    if mode == 1:
        x_min = max(zero, x_min * new_width / f(old_width))
        x_max = min(new_width, x_max * new_width / f(old_width))
        y_min = max(zero, y_min * new_height / f(old_height))
        y_max = min(new_height, y_max * new_height / f(old_height))
        new = [new[k] * (new_width if k % 2 == 0 else new_height) / f(old_width if k % 2 == 0 else old_height)
               for k in range(8)]
    elif mode == 3:
        if orig_aspect > new_aspect:
            padding = (new_height - new_width / orig_aspect) / f(2)
            x_min = max(zero, x_min * new_width / f(old_width))
            x_max = min(new_width, x_max * new_width / f(old_width))
            y_min = padding + max(zero, y_min * (new_height - f(2) * padding) / f(old_height))
            y_max = padding + min(new_height, y_max * (new_height - f(2) * padding) / f(old_height))
        else:
            padding = (new_width - orig_aspect * new_height) / f(2)
            x_min = padding + max(zero, x_min * (new_width - f(2) * padding) / f(old_width))
            x_max = padding + min(new_width, x_max * (new_width - f(2) * padding) / f(old_width))
            y_min = max(zero, y_min * new_height / f(old_height))
            y_max = min(new_height, y_max * new_height / f(old_height))
    elif mode == 2:
        if orig_aspect < new_aspect:
            new_height = new_width / orig_aspect
        else:
            new_width = orig_aspect * new_height
        x_min = max(zero, x_min * new_width / f(old_width))
        x_max = min(new_width, x_max * new_width / f(old_width))
        y_min = max(zero, y_min * new_height / f(old_height))
        y_max = min(new_height, y_max * new_height / f(old_height))
    out = dict(b)
    out.update(xmin=x_min / new_width, ymin=y_min / new_height, xmax=x_max / new_width, ymax=y_max / new_height)
    return out, [new[k] / (new_width if k % 2 == 0 else new_height) for k in range(8)]


def extrapolate_bbox_polygon(mode, height, width, height_scale, width_scale, img_h, img_w, crop, b, p):
    hs, ws = f(height_scale), f(width_scale)
    if not (hs > 0 and ws > 0 and mode == 2):
        return b, p
    orig_aspect = f(img_w) / f(img_h)
    rh, rw = f(height), f(width)
    if orig_aspect < rw / rh:
        rh = rw / orig_aspect
    else:
        rw = rh * orig_aspect
    ch, cw = rh * (crop["ymax"] - crop["ymin"]), rw * (crop["xmax"] - crop["xmin"])
    out = dict(b)
    out.update(xmin=b["xmin"] * cw / ws, xmax=b["xmax"] * cw / ws, ymin=b["ymin"] * ch / hs,
               ymax=b["ymax"] * ch / hs)
    return out, [p[k] * cw / ws if k % 2 == 0 else p[k] * ch / hs for k in range(8)]


def transform_annotation(groups, img_h, img_w, resize, crop, do_mirror, emit=None):
    """TransformAnnotation. ``groups``: [(group_label, [(instance, box dict, polygon)])]; ``resize``: None or
    (mode, height, width, height_scale, width_scale). Returns the groups kept, same form."""
    out = []
    for label, annos in groups:
        kept = []
        for instance, b, p in annos:
            rb, rp = dict(b), list(p)
            if resize is not None:
                rb, rp = update_bbox_by_resize_policy(resize[0], resize[1], resize[2], img_w, img_h, rb, rp)
            if not meet_emit_constraint(crop, rb, emit):
                continue
            ok, pb, pp = project_bbox_polygon(crop, rb, rp)
            if not ok:
                continue
            if do_mirror:
                pb["xmin"], pb["xmax"] = f(1) - pb["xmax"], f(1) - pb["xmin"]
            if resize is not None:
                pb, pp = extrapolate_bbox_polygon(*resize, img_h, img_w, crop, pb, pp)
            kept.append((instance, pb, pp))
        if kept:
            out.append((label, kept))
    return out


def label_rows(item, groups):
    """AnnotatedDataLayer's 16-column rows of one item."""
    return [[item, label, instance, b["xmin"], b["ymin"], b["xmax"], b["ymax"], float(b["difficult"]), *p]
            for label, annos in groups for instance, b, p in annos]


# -- DetectionEvaluate -------------------------------------------------------------------------------------------
def output_bbox(b, hw, warp):
    """OutputBBox without a resize_param, or with a WARP one: clip, then scale to the image's pixels."""
    return scale_bbox(clip_bbox(b), hw[0], hw[1])


def detection_evaluate(det, gt, num_classes, background, threshold, evaluate_difficult, sizes=(), count=0,
                       warp=False):
    """The fork's DetectionEvaluateLayer::Forward_cpu (its polygon and rotated-box branches are the same loop):
    ``det`` [D, 15 or 12], ``gt`` [G, 16]. Returns (rows [N, 5], the count_ after)."""
    width = det.shape[1]
    all_det = {}
    for r in det.reshape(-1, width):
        item = int(r[0])
        if item == -1:
            continue
        label = int(r[1])
        assert label != background
        b = bbox(r[3], r[4], r[5], r[6], score=r[2])
        b["size"] = bbox_size(b)
        all_det.setdefault(item, {}).setdefault(label, []).append(b)
    all_gt = {}
    for r in gt.reshape(-1, 16):
        item = int(r[0])
        if item == -1:
            break
        label = int(r[1])
        b = bbox(r[3], r[4], r[5], r[6], difficult=bool(r[7]))
        b["size"] = bbox_size(b)
        all_gt.setdefault(item, {}).setdefault(label, []).append(b)
    num_pos = {}
    for item in sorted(all_gt):
        for label in sorted(all_gt[item]):
            boxes = all_gt[item][label]
            n = len(boxes) if evaluate_difficult else sum(not b["difficult"] for b in boxes)
            num_pos[label] = num_pos.get(label, 0) + n
    rows = [[-1, c, num_pos.get(c, 0), -1, -1] for c in range(num_classes) if c != background]
    for item in sorted(all_det):
        dets = all_det[item]
        for label in sorted(dets):
            if label == -1:
                continue
            boxes = dets[label]
            if item not in all_gt or label not in all_gt[item]:
                rows += [[item, label, b["score"], 0, 1] for b in boxes]
                continue
            gts = all_gt[item][label]
            if sizes:
                gts = [output_bbox(g, sizes[count], warp) for g in gts]
                all_gt[item][label] = gts
            visited = [False] * len(gts)
            order = sorted(range(len(boxes)), key=lambda i: -float(boxes[i]["score"]))   # scores distinct in the tests
            for i in order:
                b = boxes[i]
                row = [item, label, b["score"], 0, 0]
                if sizes:
                    b = output_bbox(b, sizes[count], warp)
                best, jmax = f(-1), -1
                for j, g in enumerate(gts):
                    ov = jaccard_overlap(b, g, not sizes)
                    if ov > best:
                        best, jmax = ov, j
                if best >= f(threshold):
                    if evaluate_difficult or not gts[jmax]["difficult"]:
                        if not visited[jmax]:
                            row[3:5] = [1, 0]
                            visited[jmax] = True
                        else:
                            row[3:5] = [0, 1]
                else:
                    row[3:5] = [0, 1]
                rows.append(row)
        if sizes:
            count = (count + 1) % len(sizes)
    return np.array(rows, np.float64).reshape(-1, 5), count
