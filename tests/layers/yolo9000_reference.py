"""NumPy reference for choasup/caffe-yolo9000's ``RegionLoss`` and ``EvalDetection``, written from the fork's loops
(choasup/caffe-yolo9000 @ e8a476c4c23d756632f7a26c681a96e3ab672544: ``src/caffe/util/tree.cpp``,
``src/caffe/layers/region_loss_layer.cpp`` Forward_cpu/Backward_cpu with softmax_tree, delta_region_class,
get_hierarchy_prob; ``src/caffe/layers/eval_detection_layer.cpp`` GetGTBox, GetPredBox (version 2), ApplyNmsClass,
Forward_cpu), one scalar at a time, in the fork's ``swap`` layout and its float/double arithmetic. The box helpers
(Calc_iou, sigmoid, softmax_region, get_region_box, delta_region_box) are the same code as Intel Caffe's copy and are
taken from ``tests/layers/intel_region_loss_reference.py``."""
from __future__ import annotations

import math

import numpy as np

from tests.layers.intel_region_loss_reference import (_calc_iou, _delta_region_box, _exp, _region_box, _sig,
                                                      _softmax_region)

F = np.float32
D = np.float64


def c_round(v: float) -> float:
    """C's ``round``: halves away from zero."""
    return math.copysign(math.floor(abs(v) + 0.5), v)


def atoi(s: str) -> int:
    """C's ``atoi``: leading blanks, a sign, the digits prefix; 0 when none."""
    t = s.lstrip()
    k = 1 if t[:1] in "+-" else 0
    while k < len(t) and t[k].isdigit():
        k += 1
    digits = t[:k]
    return int(digits) if digits.lstrip("+-") else 0


def read_tree(path: str) -> dict:
    """``tree::tree(filename)``: name before the first space, parent ``ss >> parent`` after it."""
    parent, group, offset, size, name = [], [], [], [], []
    last_parent, group_size, groups, n = -1, 0, 0, 0
    with open(path) as f:
        for line in f.read().splitlines():
            pos = line.find(" ")
            name.append(line[:pos])
            p = int(line[pos + 1:].split()[0])
            parent.append(p)
            if p != last_parent:
                groups += 1
                offset.append(n - group_size)
                size.append(group_size)
                group_size, last_parent = 0, p
            group.append(groups)
            n += 1
            group_size += 1
    groups += 1
    offset.append(n - group_size)
    size.append(group_size)
    return dict(parent=parent, group=group, group_offset=offset, group_size=size, groups=groups, n=n)


def _softmax_tree(a, start, t):
    count = 0
    for g in range(t["groups"]):
        _softmax_region(a, start + count, t["group_size"][g])
        count += t["group_size"][g]


def _delta_region_class(data, diff, index, label, classes, t, scale):
    """Returns the avg_cat term."""
    if t is not None:
        pred = F(1)
        while label >= 0:
            pred = F(pred * data[index + label])
            g = t["group"][label]
            off = t["group_offset"][g]
            for i in range(t["group_size"][g]):
                diff[index + off + i] = F(-1.0 * float(scale) * float(F(0) - data[index + off + i]))
            diff[index + label] = F(-1.0 * float(scale) * float(F(1) - data[index + label]))
            label = t["parent"][label]
        return pred
    cat = F(0)
    for k in range(classes):
        diff[index + k] = F(-1.0 * float(scale) * float(F(1 if k == label else 0) - data[index + k]))
        if k == label:
            cat = data[index + k]
    return cat


def _hierarchy_prob(data, index, t, c):
    p = F(1)
    while c >= 0:
        p = F(p * data[index + c])
        c = t["parent"][c]
    return p


def _swap(x):
    N, C, H, W = x.shape
    return np.ascontiguousarray(x.astype(F).transpose(0, 2, 3, 1)).reshape(-1).copy()


def _labels(label, N, tree):
    lab = label.astype(F).reshape(-1)
    labels = [[] for _ in range(N)]
    for i in range(label.shape[2]):
        item = int(lab[i * 8])
        if item == -1:
            continue
        xmin, ymin, xmax, ymax = lab[i * 8 + 3], lab[i * 8 + 4], lab[i * 8 + 5], lab[i * 8 + 6]
        cls = lab[i * 8 + 1] if tree else F(lab[i * 8 + 1] - F(1))
        labels[item].append([cls, F(D(xmin + xmax) / 2.0), F(D(ymin + ymax) / 2.0), xmax - xmin, ymax - ymin])
    return labels


def region_reference(x: np.ndarray, label: np.ndarray, o: dict) -> tuple[float, np.ndarray, dict]:
    """``o``: side, classes, coords, num, biases, object_scale, noobject_scale, class_scale, coord_scale, thresh,
    bias_match, class_map (dict or None), tree (read_tree's dict or None). Returns (top, diff for top_diff 1, stats)."""
    N, C, H, W = x.shape
    side, num, classes, coords = o["side"], o["num"], o["classes"], o["coords"]
    t = o.get("tree")
    biases = [F(b) for b in o["biases"]]
    sc = {k: F(o[k]) for k in ("object_scale", "noobject_scale", "class_scale", "coord_scale")}
    thresh = F(o["thresh"])
    width = C // num
    swap = _swap(x)
    for b in range(N):
        for c in range(H * W):
            for h in range(num):
                index = b * H * W * C + c * num * width + h * width
                swap[index + 4] = _sig(swap[index + 4])
    for b in range(N):
        for c in range(H * W):
            for h in range(num):
                index = b * H * W * C + c * num * width + h * width + 5
                if t is not None:
                    _softmax_tree(swap, index, t)
                else:
                    _softmax_region(swap, index, classes)
    labels = _labels(label, N, t is not None)
    diff = np.zeros(N * C * H * W, F)
    per_image = H * W * C
    avg = dict(anyobj=F(0), obj=F(0), iou=F(0), cat=F(0), recall=F(0))
    count = class_count = 0
    for b in range(N):
        if t is not None:
            onlyclass = False
            for box in labels[b]:
                if box[1] > 100000 and box[2] > 100000:
                    class_label = int(box[0])
                    maxp, maxi = F(0), 0
                    for j in range(side):
                        for i in range(side):
                            for n in range(num):
                                index = b * per_image + (j * side + i) * num * width + n * width
                                s = swap[index + 4]
                                diff[index + 4] = F(-1.0 * float(sc["noobject_scale"]) * float(F(0) - s) * float(s)
                                                    * float(F(1) - s))
                                p = F(s * _hierarchy_prob(swap, index + 5, t, class_label))
                                if p > maxp:
                                    maxp, maxi = p, index
                    avg["cat"] = F(avg["cat"] + _delta_region_class(swap, diff, maxi + 5, class_label, classes, t,
                                                                     sc["class_scale"]))
                    s = swap[maxi + 4]
                    if float(s) < 0.3:
                        diff[maxi + 4] = F(float(F(-1 * sc["object_scale"])) * (0.3 - float(s)) * float(s)
                                           * float(F(1) - s))
                    else:
                        diff[maxi + 4] = 0
                    class_count += 1
                    onlyclass = True
                    break
            if onlyclass:
                continue
        for j in range(side):
            for i in range(side):
                for n in range(num):
                    index = b * per_image + (j * side + i) * num * width + n * width
                    pred = _region_box(swap, biases, n, index, i, j, side, side)
                    best_iou = F(0)
                    for box in labels[b]:
                        iou = _calc_iou(pred, box[1:5])
                        if iou > best_iou:
                            best_iou = iou
                    avg["anyobj"] = F(avg["anyobj"] + swap[index + 4])
                    s = swap[index + 4]
                    diff[index + 4] = F(-1) * sc["noobject_scale"] * (F(0) - s) * s * (F(1) - s)
                    if best_iou > thresh:
                        diff[index + 4] = 0
        for box in labels[b]:
            class_label = int(box[0])
            truth = box[1:5]
            best_iou, best_index, best_n = F(0), 0, 0
            i, j = int(truth[0] * F(side)), int(truth[1] * F(side))
            pos = j * side + i
            size = coords + classes + 1
            for n in range(num):
                index = b * per_image + pos * size * num + n * size
                pred = _region_box(swap, biases, n, index, i, j, side, side)
                if o["bias_match"]:
                    pred[2], pred[3] = biases[2 * n] / F(side), biases[2 * n + 1] / F(side)
                pred[0], pred[1] = F(0), F(0)
                iou = _calc_iou(pred, [F(0), F(0), truth[2], truth[3]])
                if iou > best_iou:
                    best_index, best_iou, best_n = index, iou, n
            iou = F(_delta_region_box(truth, swap, biases, best_n, best_index, i, j, side, side, diff,
                                      sc["coord_scale"]))
            if iou > 0.5:
                avg["recall"] = F(avg["recall"] + 1)
            avg["iou"] = F(avg["iou"] + iou)
            avg["obj"] = F(avg["obj"] + swap[best_index + 4])
            s = swap[best_index + 4]
            diff[best_index + 4] = F(-1.0 * float(sc["object_scale"]) * 2 * math.pow(float(F(1) - s), 3)
                                     * float(s * (F(1) - s)))
            if o.get("class_map") is not None:
                class_label = o["class_map"].get(class_label, 0)
            avg["cat"] = F(avg["cat"] + _delta_region_class(swap, diff, best_index + 5, class_label, classes, t,
                                                             sc["class_scale"]))
            count += 1
            class_count += 1
    real = np.empty_like(diff)
    sindex = 0
    for b in range(N):
        for h in range(H):
            for w in range(W):
                for c in range(C):
                    real[b * H * W * C + c * H * W + h * W + w] = diff[sindex]
                    sindex += 1
    loss = F(0)
    for v in real:
        loss = F(loss + v * v)
    count = max(count, 1)
    stats = dict(avg_noobj=float(avg["anyobj"] / F(side * side * num * N)), avg_obj=float(avg["obj"] / F(count)),
                 avg_iou=float(avg["iou"] / F(count)), avg_cat=float(avg["cat"] / F(count)),
                 recall=float(avg["recall"] / F(count)), class_count=class_count)
    return float(loss), (real * F(F(1) / F(N))).reshape(x.shape), stats


# -- EvalDetection ---------------------------------------------------------------------------------
def _apply_nms_class(boxes, thr):
    gone = set()
    for i in range(len(boxes)):
        if i in gone:
            continue
        for j in range(i + 1, len(boxes)):
            if j in gone or boxes[j][0] != boxes[i][0]:
                continue
            if _calc_iou(boxes[i][2], boxes[j][2]) >= thr:
                gone.add(j)
    return [i for i in range(len(boxes)) if i not in gone]


def _pred_boxes(data, side, num_object, num_class, score_type, nms, biases):
    """GetPredBox (version 2) on one image's swap data (modified in place, as the fork's softmax)."""
    biases = [F(b) for b in biases]   # vector<Dtype>
    tmp = []
    for j in range(side):
        for i in range(side):
            for n in range(5):
                index = (j * side + i) * num_object * (num_class + 5) + n * (num_class + 5)
                x = (F(i) + _sig(data[index])) / F(side)
                y = (F(j) + _sig(data[index + 1])) / F(side)
                w = F(_exp(data[index + 2]) * D(biases[2 * n]) / side)
                h = F(_exp(data[index + 3]) * D(biases[2 * n + 1]) / side)
                _softmax_region(data, index + 5, num_class)
                obj = _sig(data[index + 4])
                if float(obj) < 0.005:
                    continue
                for c in range(num_class):
                    cs = data[index + 5 + c]
                    if float(F(cs * obj)) > 0.005:
                        score = obj if score_type == 0 else cs if score_type == 1 else F(obj * cs)
                        tmp.append((c, score, [x, y, w, h]))
    out: dict[int, list] = {}
    if nms >= 0:
        order = sorted(range(len(tmp)), key=lambda k: -float(tmp[k][1]))  # stable, as neocaffe's
        tmp = [tmp[k] for k in order]
        if not tmp:
            return out
        for k in _apply_nms_class(tmp, nms):
            if float(tmp[k][1]) < 0.005:
                continue
            out.setdefault(tmp[k][0], []).append(tmp[k])
    return dict(sorted(out.items()))


def eval_reference(x: np.ndarray, label: np.ndarray, o: dict) -> tuple[np.ndarray, list]:
    """``o``: side, num_class, num_object, threshold, nms, score_type, biases; with ``sizes`` (name, width, height
    per image: name_size_file) and ``names`` (label -> label map name), also the saved detections
    ``(image_id, category_id, [xmin, ymin, w, h], score)``. Returns (top, detections)."""
    N, C, H, W = x.shape
    side, nc, no = o["side"], o["num_class"], o["num_object"]
    swap = _swap(x)
    lab = label.astype(F).reshape(-1)
    labels = [[] for _ in range(N)]
    for i in range(label.shape[2]):
        item = int(lab[i * 8])
        if item == -1:
            continue
        xmin, ymin, xmax, ymax = lab[i * 8 + 3], lab[i * 8 + 4], lab[i * 8 + 5], lab[i * 8 + 6]
        labels[item].append([F(lab[i * 8 + 1] - F(1)), F(D(xmin + xmax) / 2.0), F(D(ymin + ymax) / 2.0),
                             xmax - xmin, ymax - ymin])
    top = np.zeros((N, nc + side * side * no * 4), F)
    dets = []
    for b in range(N):
        gt: dict[int, list] = {}
        for box in labels[b]:
            gt.setdefault(int(box[0]), []).append(box[1:5])
        for k, g in gt.items():
            top[b, k] += len(g)
        pred = _pred_boxes(swap[b * C * H * W:(b + 1) * C * H * W], side, no, nc, o["score_type"], o["nms"],
                           o["biases"])
        if "sizes" in o:
            name, width, height = o["sizes"][b]
            for lbl, boxes in pred.items():
                for _, score, bx in boxes:
                    v = [c_round((float(bx[0]) - float(bx[2]) / 2.0) * width * 100) / 100.,
                         c_round((float(bx[1]) - float(bx[3]) / 2.0) * height * 100) / 100.,
                         c_round(float(bx[2]) * width * 100) / 100., c_round(float(bx[3]) * height * 100) / 100.]
                    dets.append((atoi(name), atoi(o["names"].get(lbl + 1, "")), [float(F(t)) for t in v],
                                 float(score)))
        row = top[b, nc:]
        k = 0
        for lbl, boxes in pred.items():
            if lbl not in gt:
                for bx in boxes:
                    row[k * 4: k * 4 + 4] = [bx[0], bx[1], 0, 1]
                    k += 1
                continue
            taken = [False] * len(gt[lbl])
            for bx in boxes:
                row[k * 4], row[k * 4 + 1] = bx[0], bx[1]
                best, idx = F(-1), -1
                for g, tb in enumerate(gt[lbl]):
                    iou = _calc_iou(bx[2], tb)
                    if iou > best:
                        best, idx = iou, g
                if best >= F(o["threshold"]):
                    row[k * 4 + 2: k * 4 + 4] = (0, 1) if taken[idx] else (1, 0)
                    taken[idx] = True
                k += 1
    return top, dets
