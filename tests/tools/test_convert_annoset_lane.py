"""convert_annoset --anno_type=lane_detection (eric612/MobileNet-YOLO @ 69b4441c, tools/convert_annoset.cpp and
io.cpp's lane ReadJSONToAnnotatedDatum): the records against the fork's wire bytes built by hand from its
caffe.proto numbers, the TuSimple JSON's edge cases, the list and annotation errors, create_annoset's command
line for the type (which the fork's script cannot run), and the written LMDB read back by LaneData (AnnotatedData
refuses it, as the fork's does)."""
from __future__ import annotations

import json
import logging
import struct

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from neocaffe.data.sources import DataSourceError
from neocaffe.layers.base import TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from neocaffe.tools import convert_annoset, create_annoset
from tests.records import db_records, varint

LANE = "lane_detection"
H, W = 36, 64
ROWS = [6, 12, 18, 24, 30]                            # h_samples, top to bottom
LANES = [[-2, 20, 16, 12, 8], [-2, -2, 40, 46, 52], [30, 31, 32, 33, -2]]   # x per row, -2: no point


def _dataset(folder, n=3, seed=0):
    """TuSimple-style files: JPEGs under tusimple/JPEGImages, one lane JSON per image under
    tusimple/Annotations (the last also with an image {height width} of its own), and the fork's two-field list."""
    rng = np.random.default_rng(seed)
    (folder / "tusimple" / "JPEGImages").mkdir(parents=True)
    (folder / "tusimple" / "Annotations").mkdir()
    lines = []
    for i in range(n):
        img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / "tusimple" / "JPEGImages" / f"clips_{i}.jpg"), img)
        doc = {"lanes": LANES[: 2 + i % 2], "h_samples": ROWS, "raw_file": f"clips/{i}/20.jpg"}
        if i == n - 1:
            doc["image"] = {"height": 2 * H, "width": 2 * W}
        (folder / "tusimple" / "Annotations" / f"clips_{i}.json").write_text(json.dumps(doc))
        lines.append(f"tusimple/JPEGImages/clips_{i}.jpg tusimple/Annotations/clips_{i}.json")
    (folder / "train.txt").write_text("\n".join(lines) + "\n")


def _convert(folder, db="db", **flags):
    flags = {"anno_type": LANE, "label_type": "json", "encoded": True, "encode_type": "jpg", **flags}
    return convert_annoset.convert(str(folder) + "/", str(folder / "train.txt"), str(folder / db), **flags)


# -- the fork's wire format, from its caffe.proto numbers (not from our schema) ------------------------------
def _len(field: int, payload: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def _int(field: int, v: int) -> bytes:
    return varint(field << 3) + varint(v)


def _f32(field: int, v) -> bytes:
    return varint(field << 3 | 5) + struct.pack("<f", float(v))


def _fork_record(folder, i, width=W, height=H) -> bytes:
    """The AnnotatedDatum the fork's tool serializes for image i: the datum of ReadImageToDatum's file path
    (Datum channels 1, height 2, width 3, data 4, label 5 = -1, encoded 7), type 2 = LANE (2), then per lane an
    AnnotationGroup 3 (no group_label) of Annotations 2: instance_id 1, lanes 3 = LaneInfo {x 1, y 2} as float32
    x / (float)width and h_sample / (float)height."""
    jpg = (folder / "tusimple" / "JPEGImages" / f"clips_{i}.jpg").read_bytes()
    datum = _int(1, 3) + _int(2, H) + _int(3, W) + _len(4, jpg) + _int(5, -1) + _int(7, 1)
    out = _len(1, datum) + _int(2, 2)
    for lane in LANES[: 2 + i % 2]:
        group = b""
        for k, (x, y) in enumerate(zip(lane, ROWS)):
            info = _f32(1, np.float32(x) / np.float32(width)) + _f32(2, np.float32(y) / np.float32(height))
            group += _len(2, _int(1, k) + _len(3, info))
        out += _len(3, group)
    return out


def test_records_are_the_forks_bytes(tmp_path, caplog):
    _dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="neocaffe.data"):
        assert _convert(tmp_path) == 3
    records = db_records(tmp_path / "db")
    assert [k.decode() for k, _ in records] == [f"{i:08d}_tusimple/JPEGImages/clips_{i}.jpg" for i in range(3)]
    assert records[0][1] == _fork_record(tmp_path, 0)
    assert records[1][1] == _fork_record(tmp_path, 1)
    # the last JSON's own image size normalizes its points, with the fork's warnings
    assert records[2][1] == _fork_record(tmp_path, 2, width=2 * W, height=2 * H)
    assert "clips_2.json inconsistent image height." in caplog.text and "inconsistent image width." in caplog.text
    anno = caffe_pb2.AnnotatedDatum.FromString(records[1][1])
    assert anno.type == caffe_pb2.AnnotatedDatum.LANE and len(anno.annotation_group) == 3
    g = anno.annotation_group[2]
    assert not g.HasField("group_label") and [a.instance_id for a in g.annotation] == [0, 1, 2, 3, 4]
    assert not g.annotation[0].HasField("bbox") and not g.annotation[0].lanes.HasField("id")
    assert g.annotation[4].lanes.x == np.float32(-2) / np.float32(W)     # TuSimple's "no point" kept, negative


def test_json_edge_cases_follow_boost_ptree(tmp_path):
    _dataset(tmp_path, n=1)
    ann = tmp_path / "tusimple" / "Annotations" / "clips_0.json"
    # integers written as strings, a repeated key (its first occurrence counts), an unreadable image size
    # (both sides then come from the image)
    ann.write_text('{"h_samples": ["6", " 12 ", 18, 24, 30], "h_samples": [1, 2], "lanes": [["-2", 20, 16, 12, 8]],'
                   ' "image": {"height": 72.5, "width": 128}}')
    _convert(tmp_path)
    a = caffe_pb2.AnnotatedDatum.FromString(db_records(tmp_path / "db")[0][1]).annotation_group[0].annotation
    assert [p.lanes.y for p in a] == [np.float32(r) / np.float32(H) for r in ROWS]
    assert a[0].lanes.x == np.float32(-2) / np.float32(W)
    # an image without its annotation file: stored unannotated, as the fork (and for detection)
    ann.unlink()
    _convert(tmp_path, db="none")
    anno = caffe_pb2.AnnotatedDatum.FromString(db_records(tmp_path / "none")[0][1])
    assert anno.type == caffe_pb2.AnnotatedDatum.LANE and not anno.annotation_group


@pytest.mark.parametrize("text, message", [
    ('{"h_samples": [6, 12], "lanes": [[1, 2], [3]]}',
     r"clips_0\.json: lanes\[1\] holds 1 x values; expected 2, one per h_samples entry"),
    ('{"h_samples": [6, 12], "lanes": [[1, 2.5]]}', r"clips_0\.json: lanes\[0\]\[1\] is 2\.5; expected an integer"),
    ('{"h_samples": [6, 12],\n "lanes": [[1, 2]', r"clips_0\.json:2:18: Expecting ',' delimiter; expected a TuSimple"),
    ('{"lanes": []}', r"clips_0\.json: no 'h_samples'; expected a TuSimple lane label"),
    ('{"h_samples": 6, "lanes": []}', r"clips_0\.json: h_samples is int 6; expected an array of integers"),
    ('{"h_samples": [], "lanes": [], "image": {"height": 0, "width": 5}}', r"no valid image width/height"),
])
def test_bad_annotation_files_name_the_file_and_the_list_line(tmp_path, text, message):
    _dataset(tmp_path, n=2)
    (tmp_path / "tusimple" / "Annotations" / "clips_0.json").write_text(text)
    with pytest.raises(DataSourceError, match=message) as e:
        _convert(tmp_path)
    assert "(listed at " in str(e.value) and "train.txt:1)" in str(e.value)


def test_list_and_flag_errors(tmp_path):
    _dataset(tmp_path)
    lst = tmp_path / "train.txt"
    lines = lst.read_text().splitlines()
    lst.write_text(f"{lines[0]}\n\n{lines[1]} extra\n")
    with pytest.raises(DataSourceError, match=r"train\.txt:3: received 3 fields .*expected 'image annotation\.json'"):
        _convert(tmp_path)
    lst.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataSourceError, match=r"--anno_type=lane_detection reads TuSimple lane labels: "
                                              r"--label_type=json; received 'xml'"):
        _convert(tmp_path, label_type="xml")
    # the command line: exit status 1, and no label map is asked for
    assert convert_annoset.main([f"--anno_type={LANE}", str(tmp_path) + "/", str(lst), str(tmp_path / "cli")]) == 1
    assert convert_annoset.main([f"--anno_type={LANE}", "--label_type=json", "--encoded", "--encode_type=jpg",
                                 str(tmp_path) + "/", str(lst), str(tmp_path / "cli")]) == 0
    _convert(tmp_path)
    assert db_records(tmp_path / "cli") == db_records(tmp_path / "db")


def test_create_annoset_runs_the_lane_type(tmp_path, capsys):
    """data/tusimple/create_data.sh's call (less --check-label's label map, which nothing reads)."""
    _dataset(tmp_path)
    out = tmp_path / "tusimple" / "lmdb" / "tusimple_train_lmdb"
    args = [f"--anno-type={LANE}", "--min-dim=0", "--max-dim=0", "--resize-width=0", "--label-type=json",
            "--resize-height=0", "--check-label", "--encode-type=jpg", "--encoded", "--redo",
            str(tmp_path), str(tmp_path / "train.txt"), str(out), str(tmp_path / "examples" / "tusimple")]
    assert create_annoset.main(args) == 0
    printed = capsys.readouterr().out.splitlines()[0]
    assert f"convert_annoset --anno_type={LANE} --label_type=json --min_dim=0 " in printed
    assert "label_map_file" not in printed and printed.endswith(f"{tmp_path}/ {tmp_path / 'train.txt'} {out}")
    _convert(tmp_path, db="direct")
    assert db_records(out) == db_records(tmp_path / "direct")
    assert (tmp_path / "examples" / "tusimple" / "tusimple_train_lmdb").is_symlink()


def _layer(type_name, folder, tops=("data", "label", "seg_label"), extra="", db="db"):
    text = (f'name: "data" type: "{type_name}" ' + " ".join(f'top: "{t}"' for t in tops) +
            f' data_param {{ source: "{folder / db}" batch_size: 3 backend: LMDB }}'
            ' transform_param { mean_value: 127.5 scale: 0.007843 resize_param { prob: 1 resize_mode: WARP'
            f' height: 24 width: 32 }} }} annotated_data_param {{ {extra} }}')
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(type_name)(param, [], TRAIN)


def test_lane_data_reads_the_written_lmdb(tmp_path):
    """The whole-image crop (a batch sampler of scale 1): the label holds the record's points bottom-up, the
    segmentation label the lines between them; AnnotatedData refuses the records when asked for a label."""
    from tests.layers.test_lane_data import fork_loop

    _dataset(tmp_path)
    _convert(tmp_path)
    layer = _layer("LaneData", tmp_path, extra="seg_scales: 4 batch_sampler { max_sample: 1 max_trials: 1 }")
    data, label, seg = layer()
    assert tuple(data.shape) == (3, 3, 24, 32) and tuple(label.shape) == (3, 5, 64, 3)
    assert tuple(seg.shape) == (3, 1, 6, 8)
    for i, value in enumerate(db_records(tmp_path / "db")):
        anno = caffe_pb2.AnnotatedDatum.FromString(value[1])
        lanes = [np.array([[a.lanes.x, a.lanes.y] for a in g.annotation], np.float32) for g in anno.annotation_group]
        want_label, want_seg = fork_loop(lanes, [0, 0, 1, 1], (6, 8))
        np.testing.assert_array_equal(label[i].numpy(), want_label)
        np.testing.assert_array_equal(seg[i, 0].numpy(), want_seg)
        jpeg = cv2.imdecode(cv2.imencode(".jpg", cv2.imread(str(tmp_path / f"tusimple/JPEGImages/clips_{i}.jpg")))[1],
                            cv2.IMREAD_COLOR)     # CropImage re-encodes the sampled image as JPEG
        want = (cv2.resize(jpeg, (32, 24)).astype(np.float32) - np.float32(127.5)) * np.float32(0.007843)
        np.testing.assert_allclose(data[i].numpy(), want.transpose(2, 0, 1), atol=1e-6)
    f = np.float32
    assert label[0, 1, 0].tolist() == [f(52) / f(W), f(30) / f(H), 1]     # lane 1's last point first
    assert label[0, 0, 4, 2] == -1 and label[0, 2].abs().sum() == 0   # "no point" out of the box; two lanes
    with pytest.raises(LayerSetupError, match="annotation type LANE.*read by the LaneData layer"):
        _layer("AnnotatedData", tmp_path, tops=("data", "label"))
    assert _layer("AnnotatedData", tmp_path, tops=("data",))  # images only: the fork reads them too
