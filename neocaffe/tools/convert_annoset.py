"""convert_annoset: images and their box annotations into an LMDB/LevelDB of AnnotatedDatums (SSD's tool,
weiliu89/caffe ``tools/convert_annoset.cpp`` with ``ReadRichImageToAnnotatedDatum`` and the XML / JSON /
TXT readers of ``src/caffe/util/io.cpp``; same flags).

    convert_annoset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME

``--anno_type=detection``: LISTFILE lines are ``image annotation`` (both under ROOTFOLDER), the
annotation a VOC XML (``--label_type=xml``), a COCO-style JSON (``json``: ``image {height width}``,
``annotation [{category_id iscrowd bbox [x y w h]}]``) or ``label xmin ymin xmax ymax`` lines
(``txt``); names map to labels through ``--label_map_file`` (a LabelMap prototxt). Boxes are stored
normalized by the annotation's image size, grouped by label with per-group instance ids.
``--anno_type=classification``: ``image label`` lines, as convert_imageset. Keys are ``%08d_<image>``.

TextBoxes++ (MhLiao/TextBoxes_plusplus @ 39d4898, ``ReadXMLToAnnotatedDatum`` of ``src/caffe/util/io.cpp``; its
``data/text/create_data.sh`` runs ``--anno_type=detection``): a VOC ``bndbox`` that also holds the quadrilateral
``x1 y1 x2 y2 x3 y3 x4 y4`` (pixels, top-left first, clockwise; a missing or unreadable one reads 0, as boost's
``get(key, 0)``) gives its annotation a ``polygon`` of those corners over the annotation's width and height
(float32 division), which AnnotatedData turns into 16-column label rows (:mod:`neocaffe.data.polygon_anno`).
Deviation: a bndbox with none of these keys gets no polygon (the fork writes one of zeros for every box), so
SSD's records stay SSD's byte for byte. The ``content`` (transcription) element is read by the fork and stored
nowhere; it is ignored here too.

``--anno_type=detection_with_segmentation`` (eric612/MobileNet-YOLO @ 69b4441c: ``tools/convert_annoset.cpp``,
``ReadRichImageToAnnotatedDatumWithSeg`` / ``ReadImageToDatumSeg`` of ``src/caffe/util/io.cpp``): LISTFILE lines
are ``image annotation label_image`` (the fork's ``data/cityscapes/create_list.sh``); records are typed
``BBOXandSeg`` and carry the boxes as above plus the label image in ``Datum.seg_label``, always as PNG: the
label file's own bytes when it is a ``.png`` and no resize flag is set (the datum's channels/height/width are
then the label image's, as the fork sets them), else the label image read as the data image is (colour unless
``--gray``; ``--min_dim``/``--max_dim``/``--resize_*`` with a bilinear resize) and ``cv2.imencode``d as PNG.
AnnotatedData's ``seg_label`` top reads it, and needs ``--encoded`` images. As the fork, a label image that
cannot be read skips its record with a warning. Deviations: a line must hold exactly these three fields (an
error naming the list file and line; the fork reads the tokens three at a time); ``--shuffle`` shuffles (the
fork's shuffles the other, empty, list); a record whose annotation file is missing still gets its own label
image (the fork returns before reading it and keeps the previous record's ``seg_label``).

``--anno_type=lane_detection`` (eric612/MobileNet-YOLO @ 69b4441c: ``tools/convert_annoset.cpp``,
``ReadRichImageToAnnotatedDatum``'s ``LANE`` case; the fork's ``data/tusimple/create_data.sh``): LISTFILE lines
are ``image annotation`` (a TuSimple lane label as JSON, :func:`neocaffe.data.lane_anno.read_lane_json`: one
group per lane, one ``lanes {x y}`` annotation per point, normalized by the original image's size); records are
typed ``LANE``, no label map is read, and an image whose annotation file does not exist is stored without
annotations, as for detection. LaneData (:mod:`neocaffe.layers.lane_data`) reads them. Deviations: a line must
hold exactly these two fields (an error naming the list file and line; the fork reads the tokens two at a
time); ``--label_type`` must be ``json`` (an error; the fork skips every image whose annotation file exists with
"Failed to read", and writes the others empty); a malformed annotation file is an error naming it and the list
line (the fork aborts on boost's exception or ``CHECK_EQ``); ``--shuffle`` shuffles (the fork's shuffles the
other, empty, list).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import xml.etree.ElementTree as ET
from typing import Sequence

import cv2
import numpy as np

from neocaffe.cli.log import glog_to_stderr
from neocaffe.data.datum import array_to_datum, encode_array_to_datum, file_to_datum, hwc_to_chw
from neocaffe.data.datum import read_image as read_raw_image
from neocaffe.flags import Flag, run_tool
from neocaffe.data.sources import DataSourceError
from neocaffe.data.db_writer import DBWriter
from neocaffe.data.lane_anno import read_lane_json
from neocaffe.data.polygon_anno import QUAD_KEYS, set_quad
from neocaffe.progress import Progress
from neocaffe.io.prototxt import read_prototxt
from neocaffe.proto import caffe_pb2

log = logging.getLogger("neocaffe.tools.convert_annoset")
SEG = "detection_with_segmentation"  # MobileNet-YOLO's anno_types
LANE = "lane_detection"

FLAGS = {
    "gray": Flag(bool, False, "When this option is on, treat images as grayscale ones"),
    "shuffle": Flag(bool, False, "Randomly shuffle the order of images and their labels"),
    "backend": Flag(str, "lmdb", "The backend {lmdb, leveldb} for storing the result"),
    "anno_type": Flag(str, "classification", "The type of annotation {classification, detection}."),
    "label_type": Flag(str, "xml", "The type of annotation file format."),
    "label_map_file": Flag(str, "", "A file with LabelMap protobuf message."),
    "check_label": Flag(bool, False, "When this option is on, check that there is no duplicated name/label."),
    "min_dim": Flag(int, 0, "Minimum dimension images are resized to (keep same aspect ratio)"),
    "max_dim": Flag(int, 0, "Maximum dimension images are resized to (keep same aspect ratio)"),
    "resize_width": Flag(int, 0, "Width images are resized to"),
    "resize_height": Flag(int, 0, "Height images are resized to"),
    "check_size": Flag(bool, False, "When this option is on, check that all the datum have the same size"),
    "encoded": Flag(bool, False, "When this option is on, the encoded image will be save in datum"),
    "encode_type": Flag(str, "", "Optional: What type should we encode the image as ('png','jpg',...)."),
}
USAGE = ("Convert a set of images and annotations to the leveldb/lmdb format used as input for Caffe.\n"
         "Usage:\n    convert_annoset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME\n")


def read_image(path: str, height: int, width: int, min_dim: int, max_dim: int, is_color: bool) -> np.ndarray | None:
    """The fork's ReadImageToCVMat: ``min_dim`` / ``max_dim`` rescale keeping the aspect ratio, else a
    resize to ``height`` x ``width`` when both are set."""
    img = read_raw_image(path, is_color=is_color)  # cv2.imread, also for file names that are not UTF-8
    if img is None:
        return None
    if min_dim > 0 or max_dim > 0:
        lo, hi = min(img.shape[:2]), max(img.shape[:2])
        scale = np.float32(1)
        if min_dim > 0 and lo < min_dim:
            scale = np.float32(min_dim) / np.float32(lo)
        if max_dim > 0 and int(scale * np.float32(hi)) > max_dim:
            scale = np.float32(max_dim) / np.float32(hi)
        return img if scale == 1 else cv2.resize(img, None, fx=float(scale), fy=float(scale))
    if height > 0 and width > 0:
        return cv2.resize(img, (width, height))
    return img


def image_datum(path: str, label: int, height: int, width: int, min_dim: int, max_dim: int, is_color: bool,
                encoding: str) -> caffe_pb2.Datum | None:
    """The fork's ReadImageToDatum (its extension test compares the extension without its dot to the
    encoding as given, so ``--encoded`` without ``--encode_type`` always re-encodes)."""
    img = read_image(path, height, width, min_dim, max_dim, is_color)
    if img is None:
        return None
    if encoding:
        ext = path[path.rfind(".") + 1:].lower()
        enc = encoding.lower()
        channels = 1 if img.ndim == 2 else img.shape[2]
        if ((channels == 3) == is_color and not height and not width and not min_dim and not max_dim
                and (ext == enc or (enc == "jpg" and ext == "jpeg"))):
            datum = file_to_datum(path, label)
            datum.channels, datum.height, datum.width = channels, img.shape[0], img.shape[1]
            return datum
        datum = encode_array_to_datum(hwc_to_chw(img), label, encoding.lstrip("."))
        datum.channels, datum.height, datum.width = channels, img.shape[0], img.shape[1]  # EncodeCVMatToDatum's
        return datum
    return array_to_datum(hwc_to_chw(img), label)


def seg_label_png(path: str, height: int, width: int, min_dim: int, max_dim: int,
                  is_color: bool) -> tuple[bytes, tuple[int, int, int] | None] | None:
    """The fork's ReadImageToDatumSeg with encoding ``png``: the PNG bytes of the label image and, when they
    are the file's own bytes, the (channels, height, width) the fork then writes into the datum; None when
    the file cannot be read."""
    img = read_image(path, height, width, min_dim, max_dim, is_color)
    if img is None:
        return None
    channels = 1 if img.ndim == 2 else img.shape[2]
    if ((channels == 3) == is_color and not height and not width and not min_dim and not max_dim
            and path[path.rfind(".") + 1:].lower() == "png"):
        with open(path, "rb") as f:
            return f.read(), (channels, img.shape[0], img.shape[1])
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        return None
    return buf.tobytes(), None


_STRICT_LINES = {SEG: "'image annotation label_image' (--anno_type=detection_with_segmentation)",
                 LANE: "'image annotation.json' (--anno_type=lane_detection)"}


def read_list(list_file: str, fields: int, anno_type: str = SEG) -> list[tuple[int, list[str]]]:
    """LISTFILE's entries as (line number, ``fields`` tokens). For the anno types of ``_STRICT_LINES`` each
    non-blank line must hold exactly ``fields``; for the others (two fields) the tokens are read two at a time,
    as the fork reads them (a trailing odd one ignored)."""
    with open(list_file, encoding="utf-8", errors="surrogateescape") as f:  # file names are bytes to Caffe
        rows = [(n, line.split()) for n, line in enumerate(f, 1)]
    if anno_type not in _STRICT_LINES:
        tokens = [(n, t) for n, toks in rows for t in toks]
        return [(tokens[i][0], [tokens[i][1], tokens[i + 1][1]]) for i in range(0, len(tokens) - 1, 2)]
    for n, toks in rows:
        if toks and len(toks) != fields:
            raise DataSourceError(f"{list_file}:{n}: received {len(toks)} fields {toks}; expected "
                                  f"{_STRICT_LINES[anno_type]}")
    return [(n, toks) for n, toks in rows if toks]


class _Groups:
    """Annotations added in order, grouped by label; instance ids count up per group (io.cpp's rule)."""

    def __init__(self, anno: caffe_pb2.AnnotatedDatum) -> None:
        self.anno = anno

    def add(self, label: int) -> caffe_pb2.Annotation:
        for g in self.anno.annotation_group:
            if g.group_label == label:
                instance = g.annotation[-1].instance_id + 1 if len(g.annotation) else 0
                a = g.annotation.add()
                a.instance_id = instance
                return a
        g = self.anno.annotation_group.add()
        g.group_label = label
        a = g.annotation.add()
        a.instance_id = 0
        return a


def _label(name: str, name_to_label: dict[str, int], where: str) -> int:
    if name not in name_to_label:
        raise DataSourceError(f"{where}: Unknown name: {name}")
    return name_to_label[name]


def _set_box(a: caffe_pb2.Annotation, box: Sequence[float], w: float, h: float, difficult: bool, where: str) -> None:
    x0, y0, x1, y1 = box
    if min(x0, y0, x1, y1) < 0 or x0 > w or x1 > w or y0 > h or y1 > h:
        log.warning("%s bounding box exceeds image boundary.", where)
    if x0 > x1 or y0 > y1:
        log.warning("%s bounding box irregular.", where)
    f32 = np.float32
    a.bbox.xmin, a.bbox.ymin = f32(x0) / f32(w), f32(y0) / f32(h)
    a.bbox.xmax, a.bbox.ymax = f32(x1) / f32(w), f32(y1) / f32(h)
    a.bbox.difficult = bool(difficult)


def _size(declared: tuple[int, int] | None, image: tuple[int, int], where: str) -> tuple[int, int]:
    h, w = declared if declared is not None else image
    if declared is None:
        log.warning("When parsing %s: no image size; using the image's", where)
    if h != image[0]:
        log.warning("%s inconsistent image height.", where)
    if w != image[1]:
        log.warning("%s inconsistent image width.", where)
    if not h or not w:
        raise DataSourceError(f"{where}: no valid image width/height")
    return h, w


def _int(text: str | None) -> int:
    try:
        return int(text) if text is not None else 0
    except ValueError:
        return 0   # boost's ptree get<int>(key, 0) on a value it cannot read


def read_xml(path: str, image_hw: tuple[int, int], name_to_label: dict[str, int], anno: caffe_pb2.AnnotatedDatum) -> None:
    """ReadXMLToAnnotatedDatum (VOC/ILSVRC): ``difficult`` counts only when it precedes ``bndbox``; a bndbox with
    TextBoxes++'s corners ``x1 y1 .. x4 y4`` also gives the annotation its ``polygon``."""
    root = ET.parse(path).getroot()
    sz = root.find("size")
    declared = None
    if sz is not None and sz.find("height") is not None and sz.find("width") is not None:
        declared = (_int(sz.findtext("height")), _int(sz.findtext("width")))
    h, w = _size(declared, image_hw, path)
    groups = _Groups(anno)
    for obj in root.findall("object"):
        a, difficult = None, False
        for child in obj:
            if child.tag == "name":
                a = groups.add(_label((child.text or "").strip(), name_to_label, path))
            elif child.tag == "difficult":
                difficult = (child.text or "").strip() == "1"
            elif child.tag == "bndbox":
                if a is None:
                    raise DataSourceError(f"{path}: an object's bndbox comes before its name")
                _set_box(a, [_int(child.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")], w, h, difficult, path)
                if any(child.find(k) is not None for k in QUAD_KEYS):
                    set_quad(a, [_int(child.findtext(k)) for k in QUAD_KEYS], w, h)


def read_json(path: str, image_hw: tuple[int, int], name_to_label: dict[str, int], anno: caffe_pb2.AnnotatedDatum) -> None:
    """ReadJSONToAnnotatedDatum (COCO style): bbox ``[x, y, width, height]``, ``iscrowd`` as difficult."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    img = doc.get("image", {})
    declared = (int(img["height"]), int(img["width"])) if "height" in img and "width" in img else None
    h, w = _size(declared, image_hw, path)
    groups = _Groups(anno)
    for obj in doc.get("annotation", []):
        a = groups.add(_label(str(obj["category_id"]), name_to_label, path))
        x, y, bw, bh = (np.float32(v) for v in obj["bbox"])
        _set_box(a, [x, y, x + bw, y + bh], w, h, bool(int(obj.get("iscrowd", 0))), path)


def read_txt(path: str, image_hw: tuple[int, int], anno: caffe_pb2.AnnotatedDatum) -> None:
    """ReadTxtToAnnotatedDatum: ``label xmin ymin xmax ymax`` per line, in pixels."""
    h, w = image_hw
    groups = _Groups(anno)
    tokens = open(path, encoding="utf-8").read().split()
    for i in range(0, len(tokens) - 4, 5):
        a = groups.add(int(tokens[i]))
        _set_box(a, [np.float32(t) for t in tokens[i + 1: i + 5]], w, h, False, path)


def label_map(path: str, strict: bool) -> dict[str, int]:
    """MapNameToLabel of a LabelMap prototxt."""
    lm = read_prototxt(path, caffe_pb2.LabelMap)
    out: dict[str, int] = {}
    for item in lm.item:
        if strict and item.name in out:
            raise DataSourceError(f"{path}: There are many duplicates of name: {item.name}")
        out[item.name] = int(item.label)
    return out


def convert(root: str, list_file: str, db_name: str, *, gray: bool = False, shuffle: bool = False,
            backend: str = "lmdb", anno_type: str = "classification", label_type: str = "xml",
            label_map_file: str = "", check_label: bool = False, min_dim: int = 0, max_dim: int = 0,
            resize_width: int = 0, resize_height: int = 0, check_size: bool = False, encoded: bool = False,
            encode_type: str = "") -> int:
    """Write the database; return the number of images stored (see the module docstring)."""
    if anno_type not in ("classification", "detection", SEG, LANE):
        raise DataSourceError(f"--anno_type must be classification, detection, {SEG} or {LANE}; received "
                              f"'{anno_type}'")
    boxes = anno_type in ("detection", SEG)
    if boxes and label_type not in ("xml", "json", "txt"):
        raise DataSourceError(f"Unknown label file type '{label_type}'; expected xml, json or txt")
    if anno_type == LANE and label_type != "json":
        raise DataSourceError(f"--anno_type={LANE} reads TuSimple lane labels: --label_type=json; received "
                              f"'{label_type}' (the fork skips every image whose annotation file exists)")
    names = label_map(label_map_file, check_label) if boxes else {}
    lines = read_list(list_file, 3 if anno_type == SEG else 2, anno_type)
    if shuffle:
        from neocaffe import rng

        log.info("Shuffling data")
        lines = [lines[int(i)] for i in rng.numpy_rng().permutation(len(lines))]
    log.info("A total of %d images.", len(lines))
    if encode_type and not encoded:
        log.info("encode_type specified, assuming encoded=true.")
    if anno_type == SEG and not (encoded or encode_type):
        log.warning("%s without --encoded: AnnotatedData's seg_label top reads only encoded records", SEG)
    sizes = dict(height=max(0, resize_height), width=max(0, resize_width), min_dim=max(0, min_dim),
                 max_dim=max(0, max_dim), is_color=not gray)
    data_size = None
    with DBWriter(db_name, backend, commit_every=1000, report=True) as db, Progress(len(lines), "convert_annoset", "images", log) as bar:
        for line_id, (line_no, (image, second, *seg_name)) in enumerate(lines):
            bar.update()
            enc = encode_type
            if encoded and not enc:
                p = image.rfind(".")
                if p < 0:
                    log.warning("Failed to guess the encoding of '%s'", image)
                enc = image[p:].lower() if p >= 0 else image.lower()
            path = root + image
            anno = caffe_pb2.AnnotatedDatum()
            if anno_type == "classification":
                datum = image_datum(path, int(second), encoding=enc, **sizes)
            elif anno_type == LANE:
                datum = image_datum(path, -1, encoding=enc, **sizes)
                anno.type = caffe_pb2.AnnotatedDatum.LANE
                if datum is not None and os.path.exists(root + second):
                    orig = read_raw_image(path)
                    assert orig is not None  # datum was read from it
                    try:
                        read_lane_json(root + second, (orig.shape[0], orig.shape[1]), anno)
                    except DataSourceError as e:
                        raise DataSourceError(f"{e} (listed at {list_file}:{line_no})") from None
            else:
                datum = image_datum(path, -1, encoding=enc, **sizes)
                anno.type = caffe_pb2.AnnotatedDatum.BBOXandSeg if seg_name else caffe_pb2.AnnotatedDatum.BBOX
                label_file = root + second
                if datum is not None and os.path.exists(label_file):
                    orig = read_raw_image(path)
                    assert orig is not None  # datum was read from it
                    hw = (orig.shape[0], orig.shape[1])
                    if label_type == "xml":
                        read_xml(label_file, hw, names, anno)
                    elif label_type == "json":
                        read_json(label_file, hw, names, anno)
                    else:
                        read_txt(label_file, hw, anno)
                if datum is not None and seg_name:
                    seg = seg_label_png(root + seg_name[0], **sizes)
                    if seg is None:
                        log.warning("Failed to read %s (%s:%d: the label image %s is missing or not an image "
                                    "OpenCV decodes; record skipped)", image, list_file, line_no, root + seg_name[0])
                        continue
                    datum.seg_label = seg[0]
                    if seg[1] is not None:
                        datum.channels, datum.height, datum.width = seg[1]
            if datum is None:
                log.warning("Failed to read %s", image)
                continue
            anno.datum.CopyFrom(datum)
            if check_size:
                n = datum.channels * datum.height * datum.width
                if data_size is None:
                    data_size = n
                elif len(datum.data) != data_size:
                    raise DataSourceError(f"{list_file}: Incorrect data field size {len(datum.data)} for {image}")
            db.put(f"{line_id:08d}_{image}", anno.SerializeToString())
    return db.written


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (returns the exit status); logs glog lines to stderr as Caffe's tool."""
    with glog_to_stderr():
        return run(list(sys.argv[1:] if argv is None else argv))


def run(argv: list[str]) -> int:
    """The tool on ``argv`` (without the program name)."""
    return run_tool("convert_annoset", USAGE, FLAGS, argv, 3, convert,
                    (DataSourceError, OSError, ET.ParseError, ValueError, KeyError), log)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
