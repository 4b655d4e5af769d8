"""TextBoxes++'s AnnotatedData (MhLiao/TextBoxes_plusplus @ 39d4898): its quadrilaterals through the fork's
augmentation (ProjectBBoxPolygon + ClipPolygon at every crop, UpdateBBoxByResizePolicy's first_point roll,
ExtrapolateBBoxPolygon, TransformAnnotation's unmirrored polygon) against the loop ports of
tests/layers/textboxes_reference.py, then the layer's 16-column label rows on an LMDB convert_annoset writes from
the fork's XML, and SSD's rows unchanged beside them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.data import annotated as an
from neocaffe.data import polygon_anno as pa
from neocaffe.data.annotated_batches import AnnotatedTransform
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TEST, TRAIN
from neocaffe.proto import caffe_pb2
from tests.layers import textboxes_reference as ref
from tests.layers.textboxes_data import convert, write_dataset

F32 = np.float32
ULP = 1e-6      # equal here bit for bit; a machine's float libm (cos, atan2) may differ by an ulp


def _quads(r, n, spread=(-0.25, 1.25)):
    """Rotated rectangles and skewed quadrilaterals (corners tl, tr, br, bl), some across the unit square's
    sides, some axis-aligned, some with their corners rolled (another corner first)."""
    out = []
    for k in range(n):
        cx, cy = r.uniform(*spread, 2)
        w, h, a = r.uniform(0.05, 0.7), r.uniform(0.02, 0.3), (0.0 if k % 5 == 0 else r.uniform(-1.2, 1.2))
        c, s = np.cos(a), np.sin(a)
        q = []
        for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            q += [cx + sx * w / 2 * c - sy * h / 2 * s, cy + sx * w / 2 * s + sy * h / 2 * c]
        q = np.array(q) + (0 if k % 5 == 0 else r.normal(0, 0.01, 8))
        roll = k % 4 if k % 3 == 0 else 0
        out.append(np.roll(q, -2 * roll))
    return np.array(out, F32)


def _bounds(q):
    return np.stack([q[:, 0::2].min(1), q[:, 1::2].min(1), q[:, 0::2].max(1), q[:, 1::2].max(1)], 1).astype(F32)


@pytest.mark.parametrize("src", [(0, 0, 1, 1), (0.2, 0.1, 0.7, 0.8), (-0.5, -0.25, 1.5, 1.75)])
def test_project_and_clip_quads_match_the_forks_loops(src):
    """ProjectBBoxPolygon's polygon + ClipPolygon (PolygonToRboxTheta, ray_length_in_bbox, RboxThetaToPolygon):
    the crop box of a sampler, the unit box of the final transform, an expansion's box."""
    q = _quads(np.random.default_rng(1), 400)
    got = pa.project_quads(np.array(src, F32), q)
    s = ref.bbox(*src)
    expect = np.array([ref.project_bbox_polygon(s, ref.bbox(-9, -9, 9, 9), list(row))[2] for row in q], F32)
    np.testing.assert_allclose(got, expect, rtol=0, atol=ULP)
    # the fork's observable reshaping: the output is a rectangle (opposite sides equal), even where nothing is cut
    top = np.hypot(got[:, 2] - got[:, 0], got[:, 3] - got[:, 1])
    np.testing.assert_allclose(top, np.hypot(got[:, 4] - got[:, 6], got[:, 5] - got[:, 7]), atol=1e-5)


def test_clip_polygon_cuts_along_the_width_only():
    """A word hanging over the right side keeps its height and loses the part outside, its centre moved by half
    of what was cut; one inside is only made a rectangle; the fork's rectangle of a skewed quadrilateral."""
    over = np.array([[0.75, 0.4, 1.15, 0.4, 1.15, 0.5, 0.75, 0.5]], F32)
    np.testing.assert_allclose(pa.clip_quads(over), [[0.75, 0.4, 1.0, 0.4, 1.0, 0.5, 0.75, 0.5]], atol=1e-6)
    # the fork's edge case: a centre on the side (x = 1) meets it at -0.0 >= 0 both ways: the width goes to 0
    edge = np.array([[0.8, 0.4, 1.2, 0.4, 1.2, 0.5, 0.8, 0.5]], F32)
    np.testing.assert_allclose(pa.clip_quads(edge), [[1.0, 0.4, 1.0, 0.4, 1.0, 0.5, 1.0, 0.5]], atol=1e-6)
    np.testing.assert_allclose(pa.clip_quads(edge)[0], ref.clip_polygon(list(edge[0])), atol=1e-7)
    skew = np.array([[0.1, 0.1, 0.5, 0.1, 0.6, 0.3, 0.2, 0.3]], F32)      # a parallelogram
    np.testing.assert_allclose(pa.clip_quads(skew), [[0.15, 0.1, 0.55, 0.1, 0.55, 0.3, 0.15, 0.3]], atol=1e-6)


@pytest.mark.parametrize("mode,new_hw", [(1, (40, 24)), (2, (30, 30)), (3, (40, 24)), (3, (24, 40))])
def test_resize_rolls_and_scales_quads_as_the_fork(mode, new_hw):
    """UpdateBBoxByResizePolicy: corners rolled by first_point, scaled in WARP, left in the old pixels over the
    new size otherwise (the fork's); its box half is SSD's (an.resize_update)."""
    r = np.random.default_rng(2)
    q = np.clip(_quads(r, 200, (0.2, 0.8)), 0, 1)
    box = _bounds(q)
    rp = caffe_pb2.ResizeParameter(resize_mode=mode, height=new_hw[0], width=new_hw[1])
    got = pa.resize_quads(q, rp, 64, 48)
    expect_q, expect_b = [], []
    for b, row in zip(box, q):
        rb, rq = ref.update_bbox_by_resize_policy(mode, *new_hw, 64, 48, ref.bbox(*b), list(row))
        expect_q.append(rq)
        expect_b.append([rb["xmin"], rb["ymin"], rb["xmax"], rb["ymax"]])
    np.testing.assert_array_equal(got, np.array(expect_q, F32))
    np.testing.assert_array_equal(an.resize_update(box, rp, 64, 48), np.array(expect_b, F32))
    rolled = [k for k in range(len(q)) if pa.first_point(q[k:k + 1] * F32(64))[0] != 0]
    assert rolled, "no quadrilateral exercised the roll"


def test_extrapolate_quads_as_the_fork():
    rp = caffe_pb2.ResizeParameter(resize_mode=2, height=20, width=30, height_scale=12, width_scale=18)
    q = _quads(np.random.default_rng(3), 20)
    crop = np.array([0.1, 0.2, 0.9, 0.7], F32)
    got = an.extrapolate_quads(q, rp, 48, 64, crop)
    c = ref.bbox(*crop)
    unit = ref.bbox(0, 0, 1, 1)
    expect = [ref.extrapolate_bbox_polygon(2, 20, 30, 12, 18, 48, 64, c, unit, list(row))[1] for row in q]
    np.testing.assert_array_equal(got, np.array(expect, F32))
    rp.resize_mode = 1
    assert an.extrapolate_quads(q, rp, 48, 64, crop) is q


def _groups(boxes):
    """an.Boxes as the reference's groups (one group per label, in order of first appearance)."""
    groups: dict = {}
    for k in range(len(boxes.label)):
        b = ref.bbox(*boxes.box[k], difficult=boxes.difficult[k])
        groups.setdefault(int(boxes.label[k]), []).append((int(boxes.instance[k]), b, list(boxes.quad[k])))
    return list(groups.items())


def _rows(out):
    return np.array([[lab, inst, *b, *q] for lab, inst, b, q in zip(out.label, out.instance, out.box, out.quad)],
                    np.float64).reshape(-1, 14)


def _ref_rows(groups):
    return np.array([[lab, inst, b["xmin"], b["ymin"], b["xmax"], b["ymax"], *q]
                     for lab, annos in groups for inst, b, q in annos], np.float64).reshape(-1, 14)


def _transform(text, phase=TRAIN):
    tp = text_format.Parse(text, caffe_pb2.TransformationParameter())
    return AnnotatedTransform(tp, phase, None)


def _sample_boxes(r, n=24):
    q = np.clip(_quads(r, n, (0.1, 0.9)), -0.1, 1.1)
    box = np.clip(_bounds(q), 0, 1)
    half = n // 2           # a record's annotations come group by group
    return an.Boxes(box, 1 + (np.arange(n) >= half), np.arange(n) % half, np.arange(n) % 3 == 0, q)


@pytest.mark.parametrize("emit", ["", "emit_constraint { emit_type: CENTER }",
                                  "emit_constraint { emit_type: MIN_OVERLAP emit_overlap: 0.3 }"])
def test_transform_annotation_matches_the_fork(emit):
    """The final transform (WARP resize, mirror drawn per image, emit constraint) against TransformAnnotation with
    the unit crop box: the box is mirrored, the quadrilateral never."""
    r = np.random.default_rng(4)
    t = _transform(f"mirror: true resize_param {{ prob: 1 resize_mode: WARP height: 20 width: 30 }} {emit}")
    emit_ref = {"": None, "c": ("center",), "m": ("min_overlap", 0.3)}[emit and emit.split()[3][0].lower()]
    img = np.zeros((48, 64, 3), np.uint8)
    seen = set()
    for k in range(8):
        boxes = _sample_boxes(r)
        _, out, mirror = t.apply(img, boxes, np.random.default_rng(k))
        seen.add(mirror)
        expect = ref.transform_annotation(_groups(boxes), 48, 64, (1, 20, 30, 0, 0), ref.bbox(0, 0, 1, 1), mirror,
                                          emit_ref)
        np.testing.assert_allclose(_rows(out), _ref_rows(expect), rtol=0, atol=ULP)
        assert out.rows(0).shape[1] == 16
    assert seen == {True, False}


def test_expand_and_crop_project_quads_as_the_fork():
    """ExpandImage's and CropImage's TransformAnnotation (no resize, no mirror): the expansion's box read back
    from the canvas, the sampler's box clipped."""
    r = np.random.default_rng(5)
    t = _transform("mean_value: 0 expand_param { prob: 1 max_expand_ratio: 3 } emit_constraint { emit_type: CENTER }")
    img = np.full((24, 32, 3), 200, np.uint8)
    for k in range(5):
        boxes = _sample_boxes(r)
        canvas, out = t.expand(img, boxes, np.random.default_rng(k))
        ys, xs = np.nonzero(canvas[..., 0])
        x0, y0 = F32(xs.min()), F32(ys.min())
        eh, ew = canvas.shape[:2]
        src = ref.bbox(-x0 / F32(32), -y0 / F32(24), (F32(ew) - x0) / F32(32), (F32(eh) - y0) / F32(24))
        expect = ref.transform_annotation(_groups(boxes), 24, 32, None, src, False, ("center",))
        np.testing.assert_allclose(_rows(out), _ref_rows(expect), rtol=0, atol=ULP)
        crop = np.array([r.uniform(-0.1, 0.3), r.uniform(-0.1, 0.3), r.uniform(0.6, 1.1), r.uniform(0.6, 1.1)], F32)
        _, out, _ = t.crop(img, boxes, crop)
        c = ref.clip_bbox(ref.bbox(*crop))
        expect = ref.transform_annotation(_groups(boxes), 24, 32, None, c, False, ("center",))
        np.testing.assert_allclose(_rows(out), _ref_rows(expect), rtol=0, atol=ULP)


_DATA = """layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: {phase} }}
  transform_param {{ {transform} mean_value: 104 mean_value: 117 mean_value: 123
    resize_param {{ prob: 1 resize_mode: WARP height: 24 width: 24 interp_mode: LINEAR }} }}
  data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }}
  annotated_data_param {{ label_map_file: "{map}" {samplers} }} }}
layer {{ name: "s" type: "Silence" bottom: "data" bottom: "label" }}
"""
_TRAIN_AUG = ("mirror: true emit_constraint { emit_type: CENTER } "
              "distort_param { brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5 contrast_lower: 0.5 "
              "contrast_upper: 1.5 } expand_param { prob: 0.5 max_expand_ratio: 2 }")
_SAMPLERS = ("batch_sampler { max_sample: 1 max_trials: 1 } batch_sampler { sampler { min_scale: 0.3 max_scale: 1 "
             "min_aspect_ratio: 0.5 max_aspect_ratio: 2 } sample_constraint { min_jaccard_overlap: 0.1 } "
             "max_sample: 1 max_trials: 50 }")


def _label(tmp_path, db, phase=TEST, batch=4, transform="", samplers="", seed=None):
    text = _DATA.format(phase="TEST" if phase == TEST else "TRAIN", transform=transform, db=tmp_path / db,
                        batch=batch, map=tmp_path / "labelmap.prototxt", samplers=samplers)
    if seed is not None:
        from neocaffe import rng
        rng.set_seed(seed)
    net = Net(read_net(text), phase)
    net.forward()
    return net.blob_data["data"].clone(), net.blob_data["label"].clone()


def test_annotated_data_writes_the_forks_16_column_rows(tmp_path):
    """The fork's XML -> convert_annoset -> AnnotatedData (TEST: WARP resize only): rows [item, label, instance,
    box, difficult, x1..y4] as TransformAnnotation makes them from the records (corners over the image size,
    resized, clipped to the fork's rectangles); the first record without words does not make it SSD's; a batch
    without words gives one row of 16 -1."""
    truth = write_dataset(tmp_path, n=5, size=32, empty_first=True)
    convert(tmp_path)
    _, label = _label(tmp_path, "db", batch=5)
    assert label.shape[:2] == (1, 1) and label.shape[3] == 16
    expect = []
    for item, objs in enumerate(truth):
        groups = [(1, [(k, ref.bbox(*(np.array([min(q[0::2]), min(q[1::2]), max(q[0::2]), max(q[1::2])], F32)
                                       / F32(32)), difficult=d), [F32(v) / F32(32) for v in q])
                       for k, (d, q) in enumerate(objs)])] if objs else []
        kept = ref.transform_annotation(groups, 32, 32, (1, 24, 24, 0, 0), ref.bbox(0, 0, 1, 1), False)
        expect += ref.label_rows(item, kept)
    np.testing.assert_allclose(label.reshape(-1, 16).numpy(), np.array(expect, np.float64), rtol=0, atol=ULP)
    _, label = _label(tmp_path, "db", batch=1)        # record 0 alone: no words
    assert label.shape == (1, 1, 1, 16) and (label == -1).all()


def test_ssd_records_keep_ssds_rows_and_the_boxes_are_bit_identical(tmp_path):
    """The same images and boxes without corners (VOC XML) give SSD's 8 columns; under one seed and the full
    TRAIN augmentation (distortion, expansion, samplers, mirror) the polygon records' data and first 8 columns
    equal SSD's exactly (the quadrilaterals draw nothing from the random stream), and each output quadrilateral
    of an axis-aligned word is its box (x clipped, y not; never mirrored)."""
    (tmp_path / "ssd").mkdir()
    write_dataset(tmp_path / "ssd", n=6, seed=7, polygons=False, axis_aligned=True)
    write_dataset(tmp_path, n=6, seed=7, axis_aligned=True)
    convert(tmp_path)
    convert(tmp_path / "ssd")
    flips = []
    for seed in (3, 11):
        d16, l16 = _label(tmp_path, "db", TRAIN, 6, _TRAIN_AUG, _SAMPLERS, seed)
        d8, l8 = _label(tmp_path, "ssd/db", TRAIN, 6, _TRAIN_AUG, _SAMPLERS, seed)
        assert l8.shape[3] == 8 and l16.shape[3] == 16
        assert torch.equal(d16, d8) and torch.equal(l16[..., :8], l8)
        rows = l16.reshape(-1, 16).numpy()
        rows = rows[rows[:, 0] >= 0]
        qx = np.stack([rows[:, 8::2].min(1), rows[:, 8::2].max(1)], 1)
        qy = np.stack([rows[:, 9::2].min(1), rows[:, 9::2].max(1)], 1)
        plain = np.abs(qx - rows[:, [3, 5]]).max(1) < 2e-5
        mirrored = np.abs(qx - (1 - rows[:, [5, 3]])).max(1) < 2e-5     # the box flipped, the quadrilateral not
        assert (plain | mirrored).all(), rows
        assert ((qy[:, 0] <= rows[:, 4] + 2e-5) & (qy[:, 1] >= rows[:, 6] - 2e-5)).all()
        flips += list(mirrored & ~plain) + [not p for p in plain if False]
    assert any(flips) and not all(flips)
