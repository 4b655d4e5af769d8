"""FaceBoxes' data-side changes (sfzhang15/FaceBoxes @ b52cc92: sampler.cpp's square crops, bbox_util.cpp's
16-pixel CENTER emit test; neocaffe/data/faceboxes_sampling.py) against a port of the fork's code, and
AnnotatedData in a net of lineage "faceboxes"."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from neocaffe.data import annotated as an
from neocaffe.data import faceboxes_sampling as fbs
from neocaffe.data.annotated_batches import AnnotatedTransform
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TRAIN
from neocaffe.proto import caffe_pb2
from neocaffe.tools import convert_annoset
from tests.layers import faceboxes_reference as ref

F32 = np.float32


@pytest.mark.parametrize("height,width", [(48, 96), (120, 80), (64, 64)])
def test_samples_are_square_in_pixels_as_the_fork_sizes_them(height, width):
    sampler = caffe_pb2.Sampler(min_scale=0.3, max_scale=1.0, min_aspect_ratio=0.5, max_aspect_ratio=2.0)
    boxes = fbs.square_samples(sampler, 200, np.random.default_rng(0), height, width)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    scale = np.maximum(w, h)   # the fork's drawn scale is the longer side's fraction
    want = np.array([ref.sample_bbox_size(s, width, height) for s in scale], F32)
    np.testing.assert_allclose(np.stack([w, h], 1), want, rtol=0, atol=2e-7)  # x0 + w - x0 in float
    np.testing.assert_allclose(w * width, h * height, rtol=1e-5)
    assert (boxes >= 0).all() and (boxes <= 1 + 1e-6).all() and (scale >= 0.3 - 1e-6).all()


def test_center_emit_keeps_only_faces_over_16_pixels_as_the_fork():
    r = np.random.default_rng(1)
    x0, y0 = r.uniform(0, 0.8, (400, 2)).T
    side = r.uniform(0.0, 0.25, (400, 2))
    box = np.stack([x0, y0, x0 + side[:, 0], y0 + side[:, 1]], 1).astype(F32)
    box[:8] = [[0.1, 0.1, 0.1 + 15 / 96, 0.4], [0.1, 0.1, 0.1 + 16 / 96, 0.4], [0.1, 0.1, 0.1 + 17 / 96, 0.4],
               [0.2, 0.2, 0.5, 0.2 + 16 / 64], [0.2, 0.2, 0.5, 0.2 + 15.5 / 64], [0.0, 0.0, 1.0, 1.0],
               [0.9, 0.9, 1.0, 1.0], [0.3, 0.3, 0.3 + 16.001 / 96, 0.3 + 16.001 / 64]]
    src = np.array([0.05, 0.1, 0.9, 0.95], F32)
    emit = caffe_pb2.EmitConstraint(emit_type=caffe_pb2.EmitConstraint.CENTER)
    got = an.meet_emit(src, box, emit, faces_in=(64, 96))
    want = np.array([ref.meet_emit_center(64, 96, list(src), list(b)) for b in box])
    assert np.array_equal(got, want) and 0 < want.sum() < len(want)
    assert np.array_equal(an.meet_emit(src, box[:3], emit), [True, True, True])   # SSD's: the centre only


def test_transform_sample_crops_a_pixel_square():
    tp = caffe_pb2.TransformationParameter()
    bs = caffe_pb2.BatchSampler(max_sample=1, max_trials=50)
    bs.sampler.CopyFrom(caffe_pb2.Sampler(min_scale=0.4, max_scale=0.9, min_aspect_ratio=1, max_aspect_ratio=1))
    img = np.zeros((60, 150, 3), np.uint8)
    boxes = an.Boxes(np.array([[0.4, 0.3, 0.6, 0.7]], F32), np.array([1]), np.array([0]), np.array([False]))
    for faceboxes in (True, False):
        t = AnnotatedTransform(tp, TRAIN, None, faceboxes=faceboxes)
        crop, _, box = t.sample(img, boxes, [bs], np.random.default_rng(3))
        assert box is not None
        if faceboxes:
            assert abs(crop.shape[0] - crop.shape[1]) <= 1, crop.shape
        else:   # SSD's: square as fractions, so 2.5 times wider than high here
            assert crop.shape[1] > 2 * crop.shape[0], crop.shape


def _lmdb(folder) -> str:
    """Two 96 x 48 images, each with a 40-pixel face and a 10-pixel one."""
    (folder / "img").mkdir()
    lines = []
    for i in range(2):
        img = np.random.default_rng(i).integers(0, 255, (48, 96, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / "img" / f"{i}.png"), img)
        objs = [(10 + i, 4, 50 + i, 44), (60, 10 + i, 70, 20 + i)]
        xml = "".join(f"<object><name>face</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
                      f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>" for a, b, c, d in objs)
        (folder / "img" / f"{i}.xml").write_text("<annotation><size><width>96</width><height>48</height><depth>3"
                                                 f"</depth></size>{xml}</annotation>")
        lines.append(f"img/{i}.png img/{i}.xml")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    (folder / "labelmap.prototxt").write_text('item { name: "none_of_the_above" label: 0 }\n'
                                              'item { name: "face" label: 1 }\n')
    convert_annoset.convert(f"{folder}/", str(folder / "list.txt"), str(folder / "db"), anno_type="detection",
                            label_map_file=str(folder / "labelmap.prototxt"), encoded=True, encode_type="png")
    return str(folder / "db")


@pytest.mark.parametrize("lineage,faces", [('lineage: "faceboxes"', 2), ("", 4)])
def test_annotated_data_drops_small_faces_in_a_faceboxes_net(tmp_path, lineage, faces):
    db = _lmdb(tmp_path)
    text = (f'{lineage}\nlayer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"\n'
            '  transform_param { resize_param { prob: 1 resize_mode: WARP height: 48 width: 96 interp_mode: LINEAR }\n'
            '    emit_constraint { emit_type: CENTER } }\n'
            f'  data_param {{ source: "{db}" batch_size: 2 backend: LMDB }} }}\n'
            'layer { name: "s" type: "Silence" bottom: "data" bottom: "label" }')
    net = Net(read_net(text), TRAIN)
    net.forward()
    rows = net.blob("label").numpy().reshape(-1, 8)
    assert len(rows) == faces
    big = ((rows[:, 5] - rows[:, 3]) * 96 + 1 > 16) & ((rows[:, 6] - rows[:, 4]) * 48 + 1 > 16)
    assert big.all() if lineage else big.sum() == 2
