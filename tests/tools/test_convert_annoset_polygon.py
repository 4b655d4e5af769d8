"""convert_annoset on TextBoxes++'s XML (MhLiao/TextBoxes_plusplus @ 39d4898, io.cpp's ReadXMLToAnnotatedDatum
with x1..y4): each annotation group against the fork's wire bytes built by hand from its caffe.proto numbers, the
corner keys' edge cases, VOC boxes left SSD's, and the fork's data/text/create_data.sh flags through
scripts/create_annoset.py."""
from __future__ import annotations

import struct
import subprocess
import sys

import cv2
import numpy as np

from neocaffe.data.annotated import parse_annotated
from neocaffe.proto import caffe_pb2
from tests.conftest import REPO
from tests.layers.textboxes_data import LABEL_MAP, convert, fork_xml
from tests.records import db_records, varint


def _len(field: int, payload: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def _int(field: int, v: int) -> bytes:
    return varint(field << 3) + varint(v)


def _f32(field: int, v) -> bytes:
    return varint(field << 3 | 5) + struct.pack("<f", float(v))


def _fork_group(label: int, objects, w: int, h: int) -> bytes:
    """An AnnotationGroup as the fork serializes it: group_label 1, annotation 2 {instance_id 1, bbox 2
    {xmin 1, ymin 2, xmax 3, ymax 4, difficult 6}, polygon 4 {x1 1 .. y4 8}}, values float(v) / size."""
    out = _int(1, label)
    for k, (difficult, q, box) in enumerate(objects):
        bbox = b"".join(_f32(i + 1, np.float32(v) / np.float32((w, h)[i % 2])) for i, v in enumerate(box))
        bbox += _int(6, int(difficult))
        poly = b"".join(_f32(i + 1, np.float32(v) / np.float32((w, h)[i % 2])) for i, v in enumerate(q))
        out += _len(2, _int(1, k) + _len(2, bbox) + (_len(4, poly) if poly else b""))
    return out


def _files(tmp_path, docs):
    (tmp_path / "img").mkdir()
    for i, (size, xml) in enumerate(docs):
        cv2.imwrite(str(tmp_path / "img" / f"{i}.jpg"), np.full((size[0], size[1], 3), 90, np.uint8))
        (tmp_path / "img" / f"{i}.xml").write_text(xml)
    (tmp_path / "list.txt").write_text("".join(f"img/{i}.jpg img/{i}.xml\n" for i in range(len(docs))))
    (tmp_path / "labelmap.prototxt").write_text(LABEL_MAP)


def test_records_carry_the_forks_polygons(tmp_path):
    words = [(1, [261, 138, 284, 140, 279, 158, 260, 158]), (0, [288, 138, 417, 140, 416, 161, 290, 157])]
    partial = ('<annotation><size><width>640</width><height>480</height></size><object><name>text</name>'
               '<difficult>0</difficult><bndbox><x1>10</x1><y1>20</y1><x3>x</x3><xmin>10</xmin><ymin>20</ymin>'
               '<xmax>40</xmax><ymax>30</ymax></bndbox></object></annotation>')
    _files(tmp_path, [((720, 1280), fork_xml(words, 1280).replace("<height>1280</height>", "<height>720</height>")),
                      ((480, 640), partial), ((480, 640), fork_xml(words, 640, polygons=False))])
    convert(tmp_path)
    records = [parse_annotated(v, "db") for _, v in db_records(tmp_path / "db")]
    assert [r.type for r in records] == [caffe_pb2.AnnotatedDatum.BBOX] * 3
    objs = [(d, q, [min(q[0::2]), min(q[1::2]), max(q[0::2]), max(q[1::2])]) for d, q in words]
    (group,) = records[0].annotation_group
    assert group.SerializeToString() == _fork_group(1, objs, 1280, 720)
    # corners missing or unreadable read 0, as boost's get(key, 0)
    (group,) = records[1].annotation_group
    assert group.SerializeToString() == _fork_group(1, [(0, [10, 20, 0, 0, 0, 0, 0, 0], [10, 20, 40, 30])], 640, 480)
    # a VOC bndbox gets no polygon (the fork writes zeros): SSD's record
    (group,) = records[2].annotation_group
    assert all(not a.HasField("polygon") for a in group.annotation) and len(group.annotation) == 2


def test_the_forks_create_data_flags(tmp_path):
    """data/text/create_data.sh's call: --anno-type=detection --label-map-file=... --min-dim=0 --max-dim=0
    --resize-width=0 --resize-height=0 --check-label --encode-type=jpg --encoded --redo."""
    words = [(0, [4, 6, 20, 5, 21, 12, 5, 13])]
    _files(tmp_path, [((32, 32), fork_xml(words, 32))])
    out = tmp_path / "data" / "lmdb" / "lmdb" / "text_train_lmdb"
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "create_annoset.py"), "--anno-type=detection",
                          f"--label-map-file={tmp_path / 'labelmap.prototxt'}", "--min-dim=0", "--max-dim=0",
                          "--resize-width=0", "--resize-height=0", "--check-label", "--encode-type=jpg", "--encoded",
                          "--redo", f"{tmp_path}/", str(tmp_path / "list.txt"), str(out),
                          str(tmp_path / "examples" / "text")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    ((key, value),) = db_records(out)
    anno = parse_annotated(value, "db")
    assert key == b"00000000_img/0.jpg" and anno.datum.encoded
    assert anno.datum.data == (tmp_path / "img" / "0.jpg").read_bytes()      # the file's own bytes (jpg)
    p = anno.annotation_group[0].annotation[0].polygon
    assert [p.x1, p.y1, p.x4, p.y4] == [np.float32(4) / 32, np.float32(6) / 32, np.float32(5) / 32, np.float32(13) / 32]
    convert(tmp_path, "direct")        # convert_annoset itself (png re-encoding aside) writes the same annotations
    ((_, direct),) = db_records(tmp_path / "direct")
    assert parse_annotated(direct, "d").annotation_group == anno.annotation_group
