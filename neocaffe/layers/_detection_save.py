"""DetectionOutput's result files: SSD's ``detection_output_param.save_output_param`` (lineage:
weiliu89/caffe, branch ssd; ``src/caffe/layers/detection_output_layer.cpp`` LayerSetUp, Reshape and
Forward_cpu, whose saving ``detection_output_layer.cu``'s Forward_gpu repeats line for line; ``OutputBBox``,
``ProjectBBox``, ``ClipBBox`` and ``ScaleBBox`` of ``src/caffe/util/bbox_util.cpp``).

Setup: ``output_directory`` is created (an existing one is kept); saving is on when it is set and both
``label_map_file`` (a LabelMap prototxt; a label listed twice is an error) and ``name_size_file`` (lines
``name height width``, one per test image in the order the data layer reads them, as SSD's
``get_image_size`` writes them) are given; an empty or absent one turns saving off with a warning. A
``num_test_image`` (default: the number of names) above the number of names is an error naming the file.

Per image of each forward (the ``name_count``-th since the cycle began): every detection of the top
(not the ``[i, -1, ...]`` rows of a batch without any) is kept, with the image's name and its box in
the pixels of the image's ``height`` x ``width`` (``OutputBBox``: clipped to [0, 1] and scaled; with
``resize_param`` ``FIT_LARGE_SIZE_AND_PAD`` first projected out of the letterbox, with ``FIT_SMALL_SIZE``
and ``height_scale``/``width_scale`` scaled by those and clipped to the image). Coordinates are kept as
Caffe's boost ptree keeps them: ``xmin``, ``ymin``, width and height, each ``round(v * 100) / 100`` as
float text. After ``num_test_image`` images (mid-batch if it falls there) the cycle's files are written,
replacing the last cycle's, and the count starts again at the first name:

* ``VOC``: ``<prefix><label name>.txt`` per class other than the background (the same files are
  emptied when the net is built and when a forward begins a cycle), lines
  ``<image name> <score> <xmin> <ymin> <xmax> <ymax>``: the score as C++ prints a float (``%g``),
  the box as ints (the stored values truncated toward zero; xmax = int xmin + int width);
* ``ILSVRC``: ``<prefix>.txt``, lines ``<image name> <label> <score> <xmin> <ymin> <xmax> <ymax>``;
* ``COCO``: ``<prefix>.json``, the layer's boost ``write_json`` text of ``{"detections": [...]}`` from
  its first ``[`` to before its last ``]``, then ``\\n]\\n`` (so the file ends ``}\\n    \\n]\\n``),
  objects ``image_id``, ``category_id`` (the label's name), ``bbox`` ``[x, y, w, h]``, ``score``;
  every value quoted unless it reads as ``null``, ``true``, ``false`` or a plain decimal
  (``-?[0-9]+(\\.[0-9]+)?``): numbers in exponent form (``1e-05``) stay strings, as do names that are
  not plain numbers, and a name with leading zeros (``000001``) becomes an invalid JSON number, all as
  in the fork's file;
* any other format: nothing is written (the fork's silence; neocaffe warns once at setup).

Float text is ptree's ``%.9g`` (``max_digits10``: Boost >= 1.58 built as C++11 or later, any current
build). Boost <= 1.57 wrote 7 significant digits and C++98 builds of 1.58+ write 8: the COCO text then
differs (``123.449997`` vs ``123.45``), and since the VOC and ILSVRC scores are printed (``%g``) from the
float read back from that text, a score's sixth digit can differ there too where the shorter text
rounded across a boundary; the boxes' ints are the same.

Where neocaffe parts from the fork: a COCO cycle without any detection is an error (the fork throws
``std::out_of_range`` there and aborts); an output file that cannot be opened is an error (the fork's
``std::ofstream`` fails silently); an existing ``output_directory`` draws no "Failed to create
directory" warning; the "Provide label_map_file/name_size_file" warnings come when ``output_directory``
is set and the file is absent or empty (the fork: when the field is present but empty, whatever the
directory); in ``name_size_file`` a height or width that is not an integer ends the list (C++'s ``>>``
would take its integer prefix); ``num_test_image: 0`` with saving on is an error at setup (the fork
divides by zero), and so is a ``resize_param`` without ``height``/``width`` (the fork's CHECK fails at
the first saved box); a label the label map lacks fails when an image first reaches it, with the fork's
rule for which labels an image checks (every class, or where keep_top_k cut the image's list only the
kept detections' labels), except that an image with exactly ``keep_top_k`` detections checks only
theirs (its top cannot tell whether the list was cut); ``Net.reshape()`` alone does not empty the VOC
files (a forward does). The count is not part of a snapshot (nor is it in Caffe: a resumed run starts
again at the first name).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from neocaffe.io.errors import CaffeFileError, PrototxtError
from neocaffe.io.prototxt import read_prototxt
from neocaffe.proto import caffe_pb2

log = logging.getLogger("neocaffe.layers.detection_output")

#: significant digits of boost ptree's float text (``std::numeric_limits<float>::max_digits10``)
PTREE_FLOAT_DIGITS = 9
FORMATS = ("VOC", "COCO", "ILSVRC")
_F = np.float32
_RP = caffe_pb2.ResizeParameter
_INT = re.compile(r"[+-]?[0-9]+")
_JSON_LITERAL = re.compile(r'"(null|true|false|-?[0-9]+(\.[0-9]+)?)"')
_JSON_SPECIAL = re.compile(r'[\x00-\x1f"/\\]')  # what create_escapes does not copy as it is
_JSON_SHORT = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "/": "\\/", '"': '\\"', "\\": "\\\\"}


# -- OutputBBox, in float32 as the fork's NormalizedBBox, one row per box ------------------------------
def _min(a: np.ndarray, b: Any) -> np.ndarray:  # std::min (NaN in ``a`` kept)
    return np.where(b < a, b, a)


def _max(a: np.ndarray, b: Any) -> np.ndarray:  # std::max
    return np.where(a < b, b, a)


def _clip(b: np.ndarray, hi: Any = _F(1)) -> np.ndarray:
    """ClipBBox: each coordinate to [0, hi] (``hi``: 1, or per row (w, h, w, h))."""
    return _max(_min(b, hi), _F(0)).astype(_F)


def _xyxy(height: Any, width: Any) -> np.ndarray:
    """Per row (width, height, width, height) as float32."""
    h, w = np.broadcast_arrays(np.asarray(height, _F), np.asarray(width, _F))
    return np.stack([w, h, w, h], axis=-1)


def _project(src: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ProjectBBox: ``b`` in the frame of ``src``, clipped; ``b`` itself where they do not overlap."""
    apart = (b[:, 0] >= src[:, 2]) | (b[:, 2] <= src[:, 0]) | (b[:, 1] >= src[:, 3]) | (b[:, 3] <= src[:, 1])
    span = np.stack([src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]] * 2, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = _clip((b - src[:, [0, 1, 0, 1]]) / span)
    return np.where(apart[:, None], b, proj)


def output_bbox(boxes: Any, height: Any, width: Any, resize: Any = None) -> np.ndarray:
    """OutputBBox: normalized ``boxes`` (K, 4: xmin, ymin, xmax, ymax) in the pixels of images of
    ``height`` x ``width`` (scalars or one per box), as float32 (K, 4); ``resize``: the
    ResizeParameter, or None."""
    b = np.asarray(boxes, _F).reshape(-1, 4)
    size = _xyxy(height, width).reshape(-1, 4)
    mode = resize.resize_mode if resize is not None else _RP.WARP
    if mode == _RP.FIT_LARGE_SIZE_AND_PAD:
        rh, rw = _F(resize.height), _F(resize.width)
        aspect = size[:, 0] / size[:, 1]
        wide = aspect > rw / rh
        one, zero = np.ones_like(aspect), np.zeros_like(aspect)
        pad_h = (rh - rw / aspect) / _F(2)   # letterbox bars above and below (wide images)
        pad_w = (rw - rh * aspect) / _F(2)   # or left and right
        top, left = pad_h / rh, pad_w / rw
        src = np.stack([np.where(wide, zero, left), np.where(wide, top, zero),
                        np.where(wide, one, (1.0 - left.astype(np.float64)).astype(_F)),
                        np.where(wide, (1.0 - top.astype(np.float64)).astype(_F), one)], axis=1)
        return _clip(_project(src, b)) * size
    if mode == _RP.FIT_SMALL_SIZE and resize.height_scale != 0 and resize.width_scale != 0:
        return _clip(b * _xyxy(resize.height_scale, resize.width_scale), size)
    return _clip(b) * size


# -- boost ptree's text ------------------------------------------------------------------------------
def stored_values(v: np.ndarray) -> np.ndarray:
    """``put<float>(round(v * 100) / 100.)`` of float32 ``v`` (C's round: halves away from zero)."""
    x = (np.asarray(v, _F) * _F(100)).astype(np.float64)
    return (np.copysign(np.floor(np.abs(x) + 0.5), x) / 100.0).astype(_F)


def ptree_float(v: Any) -> str:
    """``ptree::put<float>``'s text of ``v`` (converted to float first)."""
    return "%.*g" % (PTREE_FLOAT_DIGITS, float(_F(v)))


def _read_back(v: np.ndarray) -> np.ndarray:
    """``get_value<float>()`` of ``put<float>(v)``: ``v`` itself at 9 digits, else parsed from the text."""
    if PTREE_FLOAT_DIGITS >= 9:
        return v
    return np.array([float(ptree_float(x)) for x in v.ravel()], np.float64).astype(_F).reshape(v.shape)


def _json_escape(s: str) -> str:
    """boost ``create_escapes``: JSON escapes, ``/`` as ``\\/``, other control characters as ``\\u00XX``."""
    if not _JSON_SPECIAL.search(s):
        return s
    return "".join(_JSON_SHORT.get(ch) or "\\u%04X" % ord(ch) if _JSON_SPECIAL.match(ch) else ch for ch in s)


def _join(directory: str, name: str) -> str:
    """boost::filesystem's ``directory / name``."""
    return directory + name if directory.endswith("/") or name.startswith("/") else directory + "/" + name


# -- setup -----------------------------------------------------------------------------------------
def label_names(path: str, error: Callable[[str], Exception], field: str = "name") -> dict[int, str]:
    """Label -> ``field`` (``name`` or ``display_name``) of a LabelMap prototxt (MapLabelToName /
    MapLabelToDisplayName, strict: a label listed twice is an error)."""
    try:
        label_map = read_prototxt(Path(path), caffe_pb2.LabelMap)
    except (CaffeFileError, PrototxtError, OSError) as e:
        raise error(f"save_output_param: Failed to read label map file: {path} ({e})") from None
    names: dict[int, str] = {}
    for item in label_map.item:
        if item.label in names:  # MapLabelToName's strict check
            raise error(f"save_output_param.label_map_file {path}: There are many duplicates of label: {item.label}")
        names[int(item.label)] = getattr(item, field)
    return names


def read_name_sizes(path: str, error: Callable[[str], Exception],
                    what: str = "save_output_param") -> list[tuple[str, int, int]]:
    """``while (infile >> name >> height >> width)``: the triples up to the first that does not read
    (SSD's name_size_file, as get_image_size writes it); ``what`` names the field in errors."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            tokens = f.read().split()
    except OSError as e:
        raise error(f"{what}: Failed to open name size file: {path} ({e.strerror or e})") from None
    out = []
    for i in range(0, len(tokens) - 2, 3):
        name, h, w = tokens[i: i + 3]
        if not (_INT.fullmatch(h) and _INT.fullmatch(w)):
            break
        out.append((name, int(h), int(w)))
    return out


def make_saver(p: Any, *, num_classes: int, background: int, keep_top_k: int, layer_name: str,
               error: Callable[[str], Exception]) -> "DetectionSaver | None":
    """DetectionOutput's LayerSetUp for ``save_output_param`` ``p``: the directory made, the files read
    and checked; the saver, or None where nothing is saved."""
    directory = p.output_directory
    if directory and not os.path.isdir(directory):
        try:
            os.makedirs(directory)
        except OSError as e:
            raise error(f"save_output_param.output_directory: cannot create {directory} ({e.strerror or e})") from None
    need_save = bool(directory)
    label_to_name: dict[int, str] = {}
    if p.label_map_file:
        label_to_name = label_names(p.label_map_file, error)
    elif need_save:
        log.warning("layer '%s' (DetectionOutput): Provide label_map_file if output results to files.", layer_name)
        need_save = False
    names: list[tuple[str, int, int]] = []
    num_test_image = 0
    if p.name_size_file:
        names = read_name_sizes(p.name_size_file, error)
        num_test_image = int(p.num_test_image) if p.HasField("num_test_image") else len(names)
        if num_test_image > len(names):
            raise error(f"save_output_param.num_test_image ({num_test_image}) exceeds the {len(names)} images "
                        f"listed in name_size_file {p.name_size_file}")
    elif need_save:
        log.warning("layer '%s' (DetectionOutput): Provide name_size_file if output results to files.", layer_name)
        need_save = False
    if not need_save:
        return None
    if num_test_image == 0:
        raise error(f"save_output_param.num_test_image must be positive; received 0 "
                    f"(name_size_file {p.name_size_file} lists {len(names)} images)")
    resize = p.resize_param if p.HasField("resize_param") else None
    if resize is not None and (resize.height == 0 or resize.width == 0):
        raise error("save_output_param.resize_param: height and width must be positive; "
                    f"received {resize.height} x {resize.width}")
    if p.output_format not in FORMATS:
        log.warning("layer '%s' (DetectionOutput): save_output_param.output_format '%s' is none of %s: "
                    "nothing is written (as in SSD's Caffe)", layer_name, p.output_format, ", ".join(FORMATS))
    saver = DetectionSaver(directory, p.output_name_prefix, p.output_format, label_to_name, names[:num_test_image],
                           resize, num_classes=num_classes, background=background, keep_top_k=keep_top_k,
                           error=error)
    saver.begin_forward()  # Caffe's SetUp ends with a Reshape
    return saver


# -- the running state -----------------------------------------------------------------------------
#: one image's share of a cycle: its name, and per detection the label, the score and the stored
#: (x, y, width, height) in pixels (float32, as ptree holds them)
_Entry = tuple[str, np.ndarray, np.ndarray, np.ndarray]


class DetectionSaver:
    """The cycle's detections and the image count; ``save`` once per forward with the top's rows."""

    def __init__(self, directory: str, prefix: str, output_format: str, label_to_name: dict[int, str],
                 names: list[tuple[str, int, int]], resize: Any, *, num_classes: int, background: int,
                 keep_top_k: int, error: Callable[[str], Exception]) -> None:
        self.directory, self.prefix, self.format = directory, prefix, output_format
        self.label_to_name = label_to_name
        self.names = [n for n, _, _ in names]  # the cycle's images: num_test_image of them
        self.heights = np.array([h for _, h, _ in names], np.int64)
        self.widths = np.array([w for _, _, w in names], np.int64)
        self.resize = resize
        self.background = background
        self.classes = [c for c in range(num_classes) if c != background]
        self.keep_top_k = keep_top_k
        self.error = error
        #: images of this cycle seen so far (the fork's name_count_)
        self.name_count = 0
        #: the cycle's detections so far, image by image (the fork's ``detections_`` ptree)
        self.entries: list[_Entry] = []

    def _open(self, name: str) -> Any:
        path = _join(self.directory, name)
        try:
            return open(path, "w", encoding="utf-8", errors="surrogateescape", newline="\n")
        except OSError as e:
            raise self.error(f"save_output_param: cannot write {path} ({e.strerror or e})") from None

    def begin_forward(self) -> None:
        """The fork's Reshape: a VOC cycle's files are emptied before its first image."""
        if self.name_count == 0 and self.format == "VOC":
            for label in sorted(self.label_to_name):
                if label != self.background:
                    self._open(self.prefix + self.label_to_name[label] + ".txt").close()

    def save(self, rows: np.ndarray, num_images: int) -> None:
        """Forward's saving: ``rows`` the top's (D, 7) rows of a batch of ``num_images`` images."""
        self.begin_forward()
        rows = np.asarray(rows)
        rows = rows[rows[:, 1] != -1].astype(_F)  # not the [i, -1, ...] rows of a batch without detections
        image, label = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
        slot = (self.name_count + image) % len(self.names)
        px = output_bbox(rows[:, 3:7], self.heights[slot], self.widths[slot], self.resize)
        box = stored_values(np.stack([px[:, 0], px[:, 1], px[:, 2] - px[:, 0], px[:, 3] - px[:, 1]], axis=1))
        for i in range(num_images):
            mine = image == i
            self._check_labels(label[mine])
            self.entries.append((self.names[self.name_count], label[mine], rows[mine, 2], box[mine]))
            self.name_count += 1
            if self.name_count == len(self.names):
                self._write()
                self.name_count = 0
                self.entries = []

    def _check_labels(self, labels: np.ndarray) -> None:
        """The fork checks every label its per-image index map holds: every class when keep_top_k did not
        cut the image's list (fewer detections than keep_top_k), else those it kept."""
        check = self.classes if self.keep_top_k == -1 or len(labels) < self.keep_top_k else labels.tolist()
        for c in check:
            if c not in self.label_to_name:
                raise self.error(f"save_output_param: Cannot find label: {c} in the label map.")

    def _write(self) -> None:
        writer = {"VOC": self._write_voc, "COCO": self._write_coco, "ILSVRC": self._write_ilsvrc}.get(self.format)
        if writer is not None:
            writer()

    def _lines(self) -> list[tuple[str, int, str]]:
        """(image name, label, ``<score> <xmin> <ymin> <xmax> <ymax>``) per detection, as the fork reads
        them back from its ptree: the score printed as a float, the box as ints."""
        out = []
        for name, labels, scores, boxes in self.entries:
            xywh = np.trunc(_read_back(boxes)).astype(np.int64)    # static_cast<int>: toward zero
            for label, score, (x, y, w, h) in zip(labels.tolist(), _read_back(scores).tolist(), xywh.tolist()):
                out.append((name, label, f"{'%g' % score} {x} {y} {x + w} {y + h}\n"))
        return out

    def _write_voc(self) -> None:
        files: dict[str, Any] = {}
        for c in self.classes:
            label_name = self.label_to_name.setdefault(c, "")  # std::map::operator[]
            if label_name not in files:
                files[label_name] = self._open(self.prefix + label_name + ".txt")
        try:
            for name, label, tail in self._lines():
                files[self.label_to_name[label]].write(f"{name} {tail}")
        finally:
            for f in files.values():
                f.close()

    def _write_ilsvrc(self) -> None:
        with self._open(self.prefix + ".txt") as f:
            f.writelines(f"{name} {label} {tail}" for name, label, tail in self._lines())

    def _write_coco(self) -> None:
        if not any(len(labels) for _, labels, _, _ in self.entries):
            raise self.error(f"save_output_param: no detection in the last {len(self.names)} images to write as "
                             "COCO (SSD's Caffe aborts here with std::out_of_range)")
        text = _JSON_LITERAL.sub(r"\1", coco_json(self.entries, self.label_to_name))
        with self._open(self.prefix + ".json") as f:
            f.write(text[text.find("["): text.rfind("]")] + "\n]\n")


def coco_json(entries: list[_Entry], label_to_name: dict[int, str]) -> str:
    """boost ``write_json`` (pretty) of ``{"detections": [...]}``: every value a quoted string."""
    def q(s: str) -> str:
        return '"' + _json_escape(s) + '"'

    def num(v: float) -> str:  # v: a float32 value
        return '"%.*g"' % (PTREE_FLOAT_DIGITS, v)

    categories = {label: q(name) for label, name in label_to_name.items()}
    objects = []
    for name, labels, scores, boxes in entries:
        image = q(name)
        for label, score, box in zip(labels.tolist(), scores.tolist(), boxes.tolist()):
            coords = ",\n".join(" " * 16 + num(v) for v in box)
            objects.append(" " * 8 + "{\n"
                           + " " * 12 + '"image_id": ' + image + ",\n"
                           + " " * 12 + '"category_id": ' + categories[label] + ",\n"
                           + " " * 12 + '"bbox": [\n' + coords + "\n" + " " * 12 + "],\n"
                           + " " * 12 + '"score": ' + num(score) + "\n"
                           + " " * 8 + "}")
    return '{\n    "detections": [\n' + ",\n".join(objects) + "\n    ]\n}\n"
