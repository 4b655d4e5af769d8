"""convert_annoset --anno_type=detection_with_segmentation (eric612/MobileNet-YOLO @ 69b4441c,
tools/convert_annoset.cpp and ReadRichImageToAnnotatedDatumWithSeg): the records against ones built by hand
the way the fork's tool builds them, the label image's re-encoded path, the list checks, create_annoset's
command line, and AnnotatedData's seg_label top on the written LMDB."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from neocaffe.data.sources import DataSourceError
from neocaffe.proto import caffe_pb2
from neocaffe.tools import convert_annoset, create_annoset
from tests.layers.test_yolo_seg import SEG_MAP, _data_net, _expected_seg
from tests.records import db_records

LABELS = 'item { name: "none_of_the_above" label: 0 }\nitem { name: "car" label: 1 }\nitem { name: "truck" label: 2 }\n'
SEG = "detection_with_segmentation"


def _dataset(folder, n=3, size=64, seed=0):
    """PNG images with one box each, VOC XML files, 8-bit grey label PNGs (value = item number of SEG_MAP;
    the last label image at twice the image's size), the three-field list and both label maps."""
    rng = np.random.default_rng(seed)
    (folder / "JPEGImages").mkdir()
    (folder / "Annotations").mkdir()
    lines, truth = [], []
    for i in range(n):
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        seg = np.zeros((size, size), np.uint8)
        seg[size * 3 // 4:] = 1                                       # road
        seg[: size // 5] = 4                                          # sky
        w, h = (int(v) for v in rng.integers(size // 5, size // 2, 2))
        x, y = (int(v) for v in rng.integers(0, size - max(w, h), 2))
        img[y:y + h, x:x + w] = (40, 40, 220)
        seg[y:y + h, x:x + w] = 2 + i % 2                             # car or truck: both class 2
        if i == n - 1:
            seg = cv2.resize(seg, (2 * size, 2 * size), interpolation=cv2.INTER_NEAREST)
        name = ("car", "truck")[i % 2]
        cv2.imwrite(str(folder / "JPEGImages" / f"{i}.png"), img)
        cv2.imwrite(str(folder / "Annotations" / f"{i}_binary.png"), seg)
        (folder / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><size><width>{size}</width><height>{size}</height><depth>3</depth></size><object>"
            f"<name>{name}</name><difficult>0</difficult><bndbox><xmin>{x}</xmin><ymin>{y}</ymin>"
            f"<xmax>{x + w}</xmax><ymax>{y + h}</ymax></bndbox></object></annotation>")
        lines.append(f"JPEGImages/{i}.png Annotations/{i}.xml Annotations/{i}_binary.png")
        truth.append((1 + i % 2, (x, y, x + w, y + h), seg))
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    (folder / "labelmap.prototxt").write_text(LABELS)
    (folder / "labelmap_seg.prototxt").write_text(SEG_MAP)
    return truth


def _convert(folder, db="db", **flags):
    flags = {"anno_type": SEG, "label_map_file": str(folder / "labelmap.prototxt"), "check_label": True,
             "encoded": True, "encode_type": "png", **flags}
    return convert_annoset.convert(str(folder) + "/", str(folder / "list.txt"), str(folder / db), **flags)


def _fork_record(folder, i, label, box, size=64):
    """The AnnotatedDatum the fork's tool writes for a .png image and .png label image without resizing:
    ReadFileToDatum's image bytes (label -1, encoded), ReadFileToDatumSeg's label bytes, and the datum's
    channels/height/width last set from the label image (cv::imread in colour: 3 channels)."""
    anno = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOXandSeg)
    d = anno.datum
    d.data = (folder / "JPEGImages" / f"{i}.png").read_bytes()
    d.label, d.encoded = -1, True
    seg_path = folder / "Annotations" / f"{i}_binary.png"
    d.seg_label = seg_path.read_bytes()
    rows, cols = cv2.imread(str(seg_path)).shape[:2]
    d.channels, d.height, d.width = 3, rows, cols
    a = anno.annotation_group.add(group_label=label).annotation.add(instance_id=0)
    f = np.float32
    a.bbox.xmin, a.bbox.ymin = f(box[0]) / f(size), f(box[1]) / f(size)
    a.bbox.xmax, a.bbox.ymax = f(box[2]) / f(size), f(box[3]) / f(size)
    a.bbox.difficult = False
    return anno.SerializeToString()


def test_records_are_the_forks_bytes(tmp_path):
    truth = _dataset(tmp_path)
    assert _convert(tmp_path) == 3
    records = db_records(tmp_path / "db")
    assert [k.decode() for k, _ in records] == [f"{i:08d}_JPEGImages/{i}.png" for i in range(3)]
    for i, ((_, value), (label, box, _)) in enumerate(zip(records, truth)):
        assert value == _fork_record(tmp_path, i, label, box)
    last = caffe_pb2.AnnotatedDatum.FromString(records[2][1]).datum
    assert (last.channels, last.height, last.width) == (3, 128, 128)   # the label image's, as the fork sets them
    # --gray: the label file's bytes still (one channel, read as grey), the datum's channels 1
    _convert(tmp_path, db="gray", gray=True)
    d = caffe_pb2.AnnotatedDatum.FromString(db_records(tmp_path / "gray")[0][1]).datum
    assert d.seg_label == (tmp_path / "Annotations" / "0_binary.png").read_bytes() and d.channels == 1


def test_resized_or_non_png_label_images_are_reencoded_as_png(tmp_path):
    _dataset(tmp_path)
    _convert(tmp_path, db="resized", resize_width=40, resize_height=24)
    for i, (_, value) in enumerate(db_records(tmp_path / "resized")):
        d = caffe_pb2.AnnotatedDatum.FromString(value).datum
        assert (d.encoded, d.channels, d.height, d.width) == (True, 3, 24, 40)   # EncodeCVMatToDatum's
        assert d.seg_label[:8] == b"\x89PNG\r\n\x1a\n"
        want = cv2.resize(cv2.imread(str(tmp_path / "Annotations" / f"{i}_binary.png")), (40, 24))  # bilinear
        np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(d.seg_label, np.uint8), cv2.IMREAD_UNCHANGED), want)
    bmp = tmp_path / "Annotations" / "0_binary.bmp"
    cv2.imwrite(str(bmp), cv2.imread(str(tmp_path / "Annotations" / "0_binary.png"), cv2.IMREAD_GRAYSCALE))
    (tmp_path / "list.txt").write_text("JPEGImages/0.png Annotations/0.xml Annotations/0_binary.bmp\n")
    _convert(tmp_path, db="bmp", min_dim=128)
    d = caffe_pb2.AnnotatedDatum.FromString(db_records(tmp_path / "bmp")[0][1]).datum
    want = cv2.resize(cv2.imread(str(bmp)), None, fx=2.0, fy=2.0)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(d.seg_label, np.uint8), cv2.IMREAD_UNCHANGED), want)


def test_list_errors_missing_label_images_and_annotations(tmp_path, caplog):
    truth = _dataset(tmp_path)
    lst = tmp_path / "list.txt"
    lines = lst.read_text().splitlines()
    lst.write_text(lines[0] + "\n\nJPEGImages/1.png Annotations/1.xml\n")
    with pytest.raises(DataSourceError, match=r"list\.txt:3: received 2 fields .*expected 'image annotation label_image'"):
        _convert(tmp_path)
    assert convert_annoset.main([f"--anno_type={SEG}", f"--label_map_file={tmp_path / 'labelmap.prototxt'}",
                                 str(tmp_path) + "/", str(lst), str(tmp_path / "cli")]) == 1
    # a missing label image skips its record with a warning naming the list line (the fork: Failed to read)
    lst.write_text(f"{lines[0]}\nJPEGImages/1.png Annotations/1.xml Annotations/nowhere.png\n{lines[2]}\n")
    with caplog.at_level(logging.WARNING, logger="neocaffe.tools.convert_annoset"):
        assert _convert(tmp_path, db="skip") == 2
    assert "list.txt:2: the label image" in caplog.text and "nowhere.png is missing" in caplog.text
    assert [k.decode()[:8] for k, _ in db_records(tmp_path / "skip")] == ["00000000", "00000002"]
    # a missing annotation file: no boxes, and the record's own label image
    (tmp_path / "Annotations" / "1.xml").unlink()
    lst.write_text(lines[1] + "\n")
    _convert(tmp_path, db="noxml")
    anno = caffe_pb2.AnnotatedDatum.FromString(db_records(tmp_path / "noxml")[0][1])
    assert not anno.annotation_group and anno.datum.seg_label == (tmp_path / "Annotations/1_binary.png").read_bytes()
    assert truth


def test_create_annoset_runs_the_segmentation_type(tmp_path, capsys):
    _dataset(tmp_path)
    out = tmp_path / "lmdb" / "city_train_lmdb"
    args = [f"--anno-type={SEG}", f"--label-map-file={tmp_path / 'labelmap.prototxt'}", "--check-label",
            "--encode-type=png", "--encoded", str(tmp_path), str(tmp_path / "list.txt"), str(out), str(tmp_path / "ex")]
    assert create_annoset.main(args) == 0
    printed = capsys.readouterr().out.splitlines()[0]
    assert f"convert_annoset --anno_type={SEG} --label_type=xml --label_map_file=" in printed
    _convert(tmp_path, db="direct")
    assert db_records(out) == db_records(tmp_path / "direct")
    (tmp_path / "list2.txt").write_text("JPEGImages/0.png Annotations/0.xml\n")
    assert create_annoset.main(args[:6] + [str(tmp_path / "list2.txt"), str(tmp_path / "o2"), str(tmp_path / "ex")]) == 1
    assert "expected 'image annotation label_image'" in capsys.readouterr().out


def test_annotated_data_seg_label_top_reads_the_written_lmdb(tmp_path):
    truth = _dataset(tmp_path)
    _convert(tmp_path)
    net = _data_net(tmp_path, 3, anno="single_class: false seg_scales: 4")
    net.forward()
    seg = net.blob_data["seg_label"].numpy()
    assert seg.shape == (3, 2, 8, 8)
    for b, (label, box, img) in enumerate(truth):
        np.testing.assert_array_equal(seg[b], _expected_seg(img, [0, 1, 2, 2, 0], (8, 8)))
    rows = net.blob_data["label"].numpy()[:, 0, 0]
    np.testing.assert_allclose(rows[:, 0], [t[0] - 1 for t in truth])
    np.testing.assert_allclose(rows[:, 1], [(t[1][0] + t[1][2]) / 128 for t in truth], atol=1e-6)
