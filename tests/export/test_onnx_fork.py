"""The forks' layers exported to ONNX equal NumPy references written from each fork's source. The layers
are not in neocaffe yet, so each emitter runs on its own (``layer_model``) from a LayerParameter stand-in
that carries the fork's field names (SimpleNamespace: unset fields read as the fork's defaults)."""
from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest

from tests.export.helpers import TOLERANCE

pytest.importorskip("onnxruntime")

f32 = np.float32
RNG = np.random.default_rng(7)


def run(type_name: str, inputs: list[np.ndarray], top_shapes: list[tuple], blobs=(), layer=None, **params):
    """Export one layer of ``type_name`` and run it on onnxruntime: its tops."""
    from neocaffe.export.onnx import layer_model
    from neocaffe.export.registry import LayerNode
    from neocaffe.export.verify import onnxruntime_outputs

    param = NS(name="l", type=type_name, **params)
    names = [f"x{i}" for i in range(len(inputs))]
    node = LayerNode(param=param, inputs=names, bottom_shapes=[x.shape for x in inputs], top_shapes=top_shapes,
                     blobs=[np.asarray(b, f32) for b in blobs], layer=layer)
    tops = [f"top{j}" for j in range(len(top_shapes))]
    got = onnxruntime_outputs(layer_model(node), dict(zip(names, inputs)), tops)
    return [got[t] for t in tops]


def close(got, ref):
    from neocaffe.export.verify import scaled_error

    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert scaled_error(got, ref) <= TOLERANCE


def test_permute_lists_the_rest_of_the_axes_in_order():
    x = RNG.standard_normal((2, 3, 4, 5)).astype(f32)
    (y,) = run("Permute", [x], [(2, 4, 3, 5)], permute_param=NS(order=[0, 2]))  # then 1, 3
    close(y, x.transpose(0, 2, 1, 3))
    (y,) = run("Permute", [x], [(2, 4, 5, 3)], permute_param=NS(order=[0, 2, 3, 1]))  # SSD's NCHW -> NHWC
    close(y, x.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("across, shared", [(True, True), (False, False), (False, True)])
def test_normalize(across, shared):
    x = RNG.standard_normal((2, 3, 4, 5)).astype(f32)
    scale = np.array([2.5], f32) if shared else RNG.uniform(1, 20, 3).astype(f32)
    (y,) = run("Normalize", [x], [x.shape], blobs=[scale], norm_param=NS(across_spatial=across, eps=1e-10))
    axes = (1, 2, 3) if across else (1,)
    norm = np.sqrt((x.astype(np.float64) ** 2).sum(axes, keepdims=True) + 1e-10)
    close(y, x / norm * (scale[0] if shared else scale.reshape(1, 3, 1, 1)))


def test_shuffle_channel_moves_channel_i_c_plus_j_to_j_g_plus_i():
    x = RNG.standard_normal((2, 6, 3, 2)).astype(f32)
    (y,) = run("ShuffleChannel", [x], [x.shape], shuffle_channel_param=NS(group=2))
    ref = np.empty_like(x)
    for i in range(2):
        for j in range(3):
            ref[:, j * 2 + i] = x[:, i * 3 + j]
    close(y, ref)


def test_relu6_and_axpy():
    x = (RNG.standard_normal((2, 3, 4, 4)) * 5).astype(f32)
    (y,) = run("ReLU6", [x], [x.shape])
    close(y, np.clip(x, 0, 6))
    a, b = RNG.standard_normal((2, 3, 1, 1)).astype(f32), RNG.standard_normal((2, 3, 4, 4)).astype(f32)
    (y,) = run("Axpy", [a, x, b], [x.shape])
    close(y, a * x + b)


def caffe_interp(x: np.ndarray, out_hw: tuple[int, int], beg: int = 0, end: int = 0) -> np.ndarray:
    """PSPNet's caffe_cpu_interp2 on the input cropped by pad_beg/pad_end (<= 0)."""
    H, W = x.shape[2:]
    x = x[:, :, -beg:H + end, -beg:W + end]
    h1, w1 = x.shape[2:]
    h2, w2 = out_hw
    if (h1, w1) == (h2, w2):
        return x.copy()
    rh = f32(h1 - 1) / f32(h2 - 1) if h2 > 1 else f32(0)
    rw = f32(w1 - 1) / f32(w2 - 1) if w2 > 1 else f32(0)
    out = np.zeros(x.shape[:2] + (h2, w2), f32)
    for i in range(h2):
        hr = f32(rh * i)
        h = int(hr)
        hp = 1 if h < h1 - 1 else 0
        hl = f32(hr - h)
        for j in range(w2):
            wr = f32(rw * j)
            w = int(wr)
            wp = 1 if w < w1 - 1 else 0
            wl = f32(wr - w)
            out[:, :, i, j] = ((1 - hl) * ((1 - wl) * x[:, :, h, w] + wl * x[:, :, h, w + wp])
                               + hl * ((1 - wl) * x[:, :, h + hp, w] + wl * x[:, :, h + hp, w + wp]))
    return out


@pytest.mark.parametrize("out_hw, beg, end", [((9, 11), 0, 0), ((5, 7), -1, -1), ((3, 3), 0, 0), ((5, 6), 0, 0)])
def test_interp_is_bilinear_with_caffes_corner_rule(out_hw, beg, end):
    x = RNG.standard_normal((1, 2, 5, 6)).astype(f32)
    (y,) = run("Interp", [x], [(1, 2) + out_hw], interp_param=NS(pad_beg=beg, pad_end=end))
    close(y, caffe_interp(x, out_hw, beg, end))


def test_upsample_nearest_one_bottom():
    x = RNG.standard_normal((2, 3, 4, 5)).astype(f32)
    (y,) = run("Upsample", [x], [(2, 3, 8, 10)], upsample_param=NS(scale=2))
    close(y, x.repeat(2, 2).repeat(2, 3))


def test_upsample_segnet_writes_values_at_their_pooling_indices():
    src = RNG.standard_normal((2, 3, 6, 6)).astype(f32)  # MAX 2x2/2 pooling: values and flat h*W+w indices
    win = src.reshape(2, 3, 3, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 3, 3, 4)
    k = win.argmax(-1)
    vals = np.take_along_axis(win, k[..., None], -1)[..., 0]
    hh, ww = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    mask = ((hh * 2 + k // 2) * 6 + (ww * 2 + k % 2)).astype(f32)
    (y,) = run("Upsample", [vals, mask], [(2, 3, 6, 6)], upsample_param=NS(scale=2))
    ref = np.zeros((2, 3, 36), f32)
    np.put_along_axis(ref, mask.reshape(2, 3, 9).astype(int), vals.reshape(2, 3, 9), 2)
    close(y, ref.reshape(2, 3, 6, 6))


def caffe_roi_pool(x: np.ndarray, rois: np.ndarray, ph: int, pw: int, scale: float) -> np.ndarray:
    """caffe-fast-rcnn's ROIPoolingLayer::Forward_cpu."""
    rnd = lambda v: int(np.sign(v) * np.floor(abs(v) + 0.5))  # noqa: E731  (C's round)
    H, W = x.shape[2:]
    out = np.zeros((len(rois), x.shape[1], ph, pw), f32)
    for n, (b, x1, y1, x2, y2) in enumerate(rois):
        sw, sh, ew, eh = (rnd(f32(v) * f32(scale)) for v in (x1, y1, x2, y2))
        rh, rw = max(eh - sh + 1, 1), max(ew - sw + 1, 1)
        bh, bw = f32(rh) / f32(ph), f32(rw) / f32(pw)
        for i in range(ph):
            for j in range(pw):
                hs = min(max(int(np.floor(f32(i) * bh)) + sh, 0), H)
                he = min(max(int(np.ceil(f32(i + 1) * bh)) + sh, 0), H)
                ws = min(max(int(np.floor(f32(j) * bw)) + sw, 0), W)
                we = min(max(int(np.ceil(f32(j + 1) * bw)) + sw, 0), W)
                if he > hs and we > ws:
                    out[n, :, i, j] = x[int(b), :, hs:he, ws:we].max((1, 2))
    return out


def test_roi_pooling_is_max_roi_pool():
    x = RNG.standard_normal((2, 3, 12, 14)).astype(f32)
    rois = np.array([[0, 3.3, 4.1, 40.2, 30.7], [1, 0, 0, 55.5, 47.9], [1, 20.2, 8.8, 21.1, 9.4],
                     [0, -8.3, -5.2, 70.1, 60.3]], f32)
    (y,) = run("ROIPooling", [x, rois], [(4, 3, 3, 2)], roi_pooling_param=NS(pooled_h=3, pooled_w=2, spatial_scale=0.25))
    close(y, caffe_roi_pool(x, rois, 3, 2, 0.25))


def test_roi_pooling_with_cascade_pad_ratio_is_refused():
    # cascade-rcnn's roi_pooling_layer.cpp grows each RoI by pad_ratio before rounding: no MaxRoiPool form
    x = RNG.standard_normal((1, 3, 12, 14)).astype(f32)
    rois = np.array([[0, 3.3, 4.1, 40.2, 30.7]], f32)
    with pytest.raises(Exception, match=r"layer 'l' \(ROIPooling\).*pad_ratio = 0.25"):
        run("ROIPooling", [x, rois], [(1, 3, 3, 2)],
            roi_pooling_param=NS(pooled_h=3, pooled_w=2, spatial_scale=0.25, pad_ratio=0.25))


def test_pspnet_bn_uses_its_stored_statistics():
    x = RNG.standard_normal((2, 3, 4, 4)).astype(f32)
    slope, bias, mean = (RNG.standard_normal((1, 3, 1, 1)).astype(f32) for _ in range(3))
    var = RNG.uniform(0.5, 2, (1, 3, 1, 1)).astype(f32)
    (y,) = run("BN", [x], [x.shape], blobs=[slope, bias, mean, var], bn_param=NS(eps=1e-5))
    close(y, (x - mean) * (var + f32(1e-5)) ** f32(-0.5) * slope + bias)


def test_segnet_bn_inference_and_learn_modes():
    x = RNG.standard_normal((2, 3, 4, 4)).astype(f32)
    scale, shift = RNG.standard_normal((1, 3, 1, 1)).astype(f32), RNG.standard_normal((1, 3, 1, 1)).astype(f32)
    (y,) = run("BN", [x], [x.shape], blobs=[scale, shift], bn_param=NS(bn_mode=1))
    close(y, scale * x + shift)
    (y,) = run("BN", [x], [x.shape], blobs=[scale, shift], bn_param=NS(bn_mode=0))
    m = x.astype(np.float64).mean((0, 2, 3), keepdims=True)
    v = (x.astype(np.float64) ** 2).mean((0, 2, 3), keepdims=True) - m * m
    close(y, scale * (x - m) / np.sqrt(v + 1e-9) + shift)


def test_prior_box_is_the_layers_own_output_as_a_constant():
    priors = RNG.uniform(0, 1, (1, 2, 40)).astype(f32)

    def layer(*bottoms):
        import torch

        assert [tuple(b.shape) for b in bottoms] == [(1, 8, 2, 5), (1, 3, 30, 30)]
        return torch.from_numpy(priors)

    (y,) = run("PriorBox", [np.zeros((1, 8, 2, 5), f32), np.zeros((1, 3, 30, 30), f32)], [priors.shape], layer=layer)
    close(y, priors)


def test_depthwise_convolution_types_export_as_grouped_convolution():
    import torch

    from neocaffe.io.prototxt import parse_text
    from neocaffe.layers import get_layer_class
    from neocaffe.proto import caffe_pb2

    p = parse_text('name: "dw" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 4 '
                   'kernel_size: 3 pad: 1 group: 4 weight_filler { type: "gaussian" std: 0.5 } }',
                   caffe_pb2.LayerParameter())
    layer = get_layer_class("Convolution")(p, [(1, 4, 5, 5)])
    x = RNG.standard_normal((1, 4, 5, 5)).astype(f32)
    ref = layer(torch.from_numpy(x)).detach().numpy()
    for alias in ("ConvolutionDepthwise", "DepthwiseConvolution"):
        q = caffe_pb2.LayerParameter()
        q.CopyFrom(p)
        q.type = alias
        from neocaffe.export.onnx import layer_model
        from neocaffe.export.registry import LayerNode
        from neocaffe.export.verify import onnxruntime_outputs

        node = LayerNode(param=q, inputs=["x"], bottom_shapes=[x.shape], top_shapes=[ref.shape],
                         blobs=[b.detach().numpy() for b in layer.blobs], layer=layer)
        close(onnxruntime_outputs(layer_model(node), {"x": x}, ["top0"])["top0"], ref)


def ssd_detection_output(loc, conf, prior, num_classes, background, nms_threshold, top_k, keep_top_k, threshold,
                         code=2):
    """weiliu89/caffe (ssd) DetectionOutputLayer::Forward_cpu for one image, shared locations."""
    P = prior.shape[2] // 4
    pb, pv, lc = prior[0, 0].reshape(P, 4), prior[0, 1].reshape(P, 4), loc.reshape(P, 4)
    if code == 2:
        w, h = pb[:, 2] - pb[:, 0], pb[:, 3] - pb[:, 1]
        cx, cy = (pb[:, 0] + pb[:, 2]) / 2, (pb[:, 1] + pb[:, 3]) / 2
        dcx, dcy = pv[:, 0] * lc[:, 0] * w + cx, pv[:, 1] * lc[:, 1] * h + cy
        dw, dh = np.exp(pv[:, 2] * lc[:, 2]) * w, np.exp(pv[:, 3] * lc[:, 3]) * h
        boxes = np.stack([dcx - dw / 2, dcy - dh / 2, dcx + dw / 2, dcy + dh / 2], 1)
    else:
        boxes = pb + pv * lc

    def iou(a, b):
        if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
            return 0.0
        iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
        if iw <= 0 or ih <= 0:
            return 0.0
        inter = iw * ih
        area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
        return inter / (area(a) + area(b) - inter)

    scores = conf.reshape(P, num_classes).T
    kept = {}
    for c in range(num_classes):
        if c == background:
            continue
        order = [i for i in sorted(range(P), key=lambda i: -scores[c, i]) if scores[c, i] > threshold][:top_k]
        keep = []
        for i in order:
            if all(iou(boxes[i], boxes[j]) <= nms_threshold for j in keep):
                keep.append(i)
        kept[c] = keep
    pairs = [(scores[c, i], c, i) for c, idx in kept.items() for i in idx]
    if keep_top_k > -1 and len(pairs) > keep_top_k:
        pairs = sorted(pairs, key=lambda t: -t[0])[:keep_top_k]
        kept = {}
        for s, c, i in pairs:
            kept.setdefault(c, []).append(i)
    rows = [[0, c, scores[c, i], *boxes[i]] for c in sorted(kept) for i in kept[c]]
    return np.array(rows or [[0, -1, -1, -1, -1, -1, -1]], f32).reshape(1, 1, -1, 7)


@pytest.mark.parametrize("code, keep_top_k, threshold", [(2, 7, 0.1), (2, -1, 0.2), (1, 20, 0.05), (2, 5, 0.99)])
def test_detection_output_matches_the_fork(code, keep_top_k, threshold):
    P, C = 60, 4
    rng = np.random.default_rng(code + keep_top_k)
    xy = rng.uniform(0, 0.8, (P, 2))
    priors = np.concatenate([xy, xy + rng.uniform(0.1, 0.3, (P, 2))], 1).astype(f32)
    var = np.tile(np.array([0.1, 0.1, 0.2, 0.2], f32), (P, 1))
    prior = np.stack([priors.reshape(-1), var.reshape(-1)])[None].astype(f32)
    loc = rng.standard_normal((1, P * 4)).astype(f32)
    logits = rng.standard_normal((P, C)) * 2
    conf = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(f32).reshape(1, P * C)
    ref = ssd_detection_output(loc, conf, prior, C, 0, 0.45, 30, keep_top_k, threshold, code)
    (y,) = run("DetectionOutput", [loc, conf, prior], [ref.shape],
               detection_output_param=NS(num_classes=C, share_location=True, background_label_id=0, code_type=code,
                                         keep_top_k=keep_top_k, confidence_threshold=threshold,
                                         nms_param=NS(nms_threshold=0.45, top_k=30)))
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ratio,scale_train", [(0.5, True), (0.3, False)])
def test_dropout_scale_train_false_scales_at_test_time(ratio, scale_train):
    # caffe-fast-rcnn's dropout_layer.cpp: TEST multiplies by 1 / scale_ = 1 - ratio when scale_train is false
    x = RNG.standard_normal((2, 5)).astype(f32)
    (y,) = run("Dropout", [x], [x.shape], dropout_param=NS(dropout_ratio=ratio, scale_train=scale_train))
    scale = f32(1.0 / (1.0 - np.float64(f32(ratio))))
    np.testing.assert_array_equal(y, x if scale_train else x * f32(1.0 / float(scale)))


def test_spatial_dropout_is_a_copy_at_test_time():
    # intel/caffe spatial_dropout_layer.cpp: TEST phase copies bottom to top
    x = RNG.standard_normal((2, 3, 4, 5)).astype(f32)
    (y,) = run("SpatialDropout", [x], [x.shape], dropout_param=NS(dropout_ratio=0.4))
    np.testing.assert_array_equal(y, x)


def test_refinedet_detection_output_is_refused_not_exported_without_its_arm_bottoms():
    """RefineDet's five-bottom DetectionOutput decodes from ARM-refined priors; an export that dropped
    arm_conf/arm_loc would give other detections, so it is refused, naming the layer."""
    P, C = 8, 3
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 0.8, (P, 2))
    prior = np.stack([np.concatenate([xy, xy + 0.1], 1).reshape(-1), np.full(P * 4, 0.1)])[None].astype(f32)
    inputs = [rng.standard_normal((1, P * 4)).astype(f32), rng.uniform(0, 1, (1, P * C)).astype(f32), prior,
              rng.uniform(0, 1, (1, P * 2)).astype(f32), rng.standard_normal((1, P * 4)).astype(f32)]
    with pytest.raises(Exception, match=r"layer 'l' \(DetectionOutput\).*anchor refinement bottoms \(arm_conf, "
                                        r"arm_loc\) are not exported"):
        run("DetectionOutput", inputs, [(1, 1, 5, 7)],
            detection_output_param=NS(num_classes=C, share_location=True, background_label_id=0, code_type=2,
                                      keep_top_k=5, confidence_threshold=0.01, visualize=False,
                                      nms_param=NS(nms_threshold=0.45, top_k=30)))
