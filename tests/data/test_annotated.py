"""SSD's annotated-data augmentations: the box arithmetic against the fork's loops, and the boxes that
come out of the whole pipeline (expansion, batch sampling, resize, mirror) against the pixels."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from neocaffe.data import annotated as an
from neocaffe.data.annotated_batches import AnnotatedBatchMaker, AnnotatedTransform
from neocaffe.data.datum import encode_array_to_datum
from neocaffe.data.db_writer import DBWriter
from neocaffe.proto import caffe_pb2


def _project_ref(src, b):
    """ProjectBBox of bbox_util.cpp."""
    if b[0] >= src[2] or b[2] <= src[0] or b[1] >= src[3] or b[3] <= src[1]:
        return None
    w, h = src[2] - src[0], src[3] - src[1]
    p = [min(max(v, 0.0), 1.0) for v in ((b[0] - src[0]) / w, (b[1] - src[1]) / h, (b[2] - src[0]) / w,
                                         (b[3] - src[1]) / h)]
    return p if (p[2] - p[0]) * (p[3] - p[1]) > 0 and p[2] >= p[0] and p[3] >= p[1] else None


def test_transform_boxes_matches_project_and_emit_loops():
    r = np.random.default_rng(0)
    xy = r.uniform(-0.3, 1.0, (200, 2))
    box = np.concatenate([xy, xy + r.uniform(0.0, 0.6, (200, 2))], 1).astype(np.float32)
    boxes = an.Boxes(box, np.arange(200), np.zeros(200, np.int64), np.zeros(200, bool))
    crop = np.array([0.2, 0.1, 0.7, 0.8], np.float32)
    for emit_text in ("emit_type: CENTER", "emit_type: MIN_OVERLAP emit_overlap: 0.5", None):
        emit = text_format.Parse(emit_text, caffe_pb2.EmitConstraint()) if emit_text else None
        out = an.transform_boxes(boxes, crop, emit, mirror=True)
        expect = []
        for b in box.astype(float):
            if emit is not None and emit.emit_type == 0:
                cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
                if not (crop[0] <= cx <= crop[2] and crop[1] <= cy <= crop[3]):
                    continue
            if emit is not None and emit.emit_type == 1:
                ix = max(0.0, min(b[2], crop[2]) - max(b[0], crop[0]))
                iy = max(0.0, min(b[3], crop[3]) - max(b[1], crop[1]))
                if not ix * iy / ((b[2] - b[0]) * (b[3] - b[1])) > 0.5:
                    continue
            p = _project_ref(crop.astype(float), b)
            if p is not None:
                expect.append([1 - p[2], p[1], 1 - p[0], p[3]])
        np.testing.assert_allclose(out.box, np.array(expect).reshape(-1, 4), atol=2e-6)


def test_sample_constraint_first_kind_decides():
    """The fork's SatisfySampleConstraint: with Jaccard and coverage constraints both set, passing the
    Jaccard test on any object is enough (its loop sets found before checking coverage)."""
    c = text_format.Parse("min_jaccard_overlap: 0.1 min_object_coverage: 0.99", caffe_pb2.SampleConstraint())
    sample = np.array([[0.0, 0.0, 0.5, 0.5]], np.float32)
    obj = np.array([[0.25, 0.25, 0.75, 0.75]], np.float32)   # IoU 1/7, object coverage 1/4
    assert an._satisfy(sample, obj, c).tolist() == [True]
    c = text_format.Parse("min_object_coverage: 0.99", caffe_pb2.SampleConstraint())
    assert an._satisfy(sample, obj, c).tolist() == [False]


def _red_square_db(path, n=6):
    r = np.random.default_rng(1)
    with DBWriter(str(path), "lmdb") as db:
        for i in range(n):
            h, w = 24 + 4 * (i % 3), 30 - 2 * (i % 2)
            img = np.zeros((h, w, 3), np.uint8)
            x0, y0 = int(r.integers(0, w - 12)), int(r.integers(0, h - 12))
            x1, y1 = x0 + int(r.integers(6, 12)), y0 + int(r.integers(6, 12))
            img[y0:y1, x0:x1] = (0, 0, 255)
            anno = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
            anno.datum.CopyFrom(encode_array_to_datum(img.transpose(2, 0, 1), -1, "png"))
            a = anno.annotation_group.add(group_label=1).annotation.add(instance_id=0)
            a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = x0 / w, y0 / h, x1 / w, y1 / h
            db.put(f"{i:08d}", anno.SerializeToString())


@pytest.mark.parametrize("k,sample", [(0, False), (1, False), (0, True), (1, True), (2, True)])
def test_pipeline_boxes_follow_the_pixels(tmp_path, k, sample):
    """Expansion offsets are whole pixels, so without batch sampling the boxes sit on the pixels (up to
    the nearest-neighbour resize); a sampled crop is cut at truncated pixel offsets while its boxes use
    the exact crop (the fork's CropImage), which moves them by up to one source pixel, here at most
    about two output pixels."""
    _red_square_db(tmp_path / "db")
    tp = text_format.Parse("""mirror: true
        resize_param { prob: 1 resize_mode: WARP height: 40 width: 40 interp_mode: NEAREST }
        emit_constraint { emit_type: CENTER } expand_param { prob: 0.7 max_expand_ratio: 2.0 }""",
                           caffe_pb2.TransformationParameter())
    samplers = [text_format.Parse("max_sample: 1 max_trials: 1", caffe_pb2.BatchSampler()),
                text_format.Parse("sampler { min_scale: 0.5 max_scale: 1 min_aspect_ratio: 0.5 max_aspect_ratio: 2 } "
                                  "sample_constraint { min_jaccard_overlap: 0.3 } max_sample: 1 max_trials: 30",
                                  caffe_pb2.BatchSampler())]
    maker = AnnotatedBatchMaker(str(tmp_path / "db"), "lmdb", 6, AnnotatedTransform(tp, 0, None),
                                samplers if sample else [],
                                seed=11, with_boxes=True, where="db")
    batch = maker.make(k)
    maker.close()
    data, rows = batch["data"], batch["label"].reshape(-1, 8)
    checked = 0
    for item in range(6):
        mine = rows[rows[:, 0] == item]
        red = (data[item, 2] > 127) & (data[item, 0] < 128)
        if not len(mine):
            continue
        ys, xs = np.nonzero(red)
        got = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 40.0
        np.testing.assert_allclose(mine[0, 3:7], got, atol=(3.0 if sample else 1.0) / 40)
        checked += 1
    assert checked >= 3
