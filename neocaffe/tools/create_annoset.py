"""create_annoset: SSD's ``scripts/create_annoset.py`` (weiliu89/caffe, branch ssd; run by
``data/VOC0712/create_data.sh`` and the COCO/ILSVRC ones), same arguments; the script is kept at that path.

    python scripts/create_annoset.py [--anno-type detection] [--label-map-file F] [--redo] ... \\
        ROOT LISTFILE OUTDIR EXAMPLEDIR

As SSD's script: checks that ROOT and LISTFILE exist and that the list's first line names an existing image
(and, for detection, annotation file) under ROOT, and for detection that the label map parses; refuses an
existing OUTDIR unless ``--redo`` (then removes it); prints the ``build/tools/convert_annoset`` command line
with its flags (``--anno_type``, ``--label_type``, ``--label_map_file``, ``--check_label``, ``--min_dim``,
``--max_dim``, ``--resize_height``, ``--resize_width``, ``--backend``, ``--shuffle``, ``--check_size``,
``--encode_type``, ``--encoded``, ``--gray``) and runs it; then links ``EXAMPLEDIR/<OUTDIR's name>`` to
OUTDIR. Ours: convert_annoset runs in this process; a failed check or conversion exits with status 1 (SSD's
exits 0) and a failed conversion makes no link.

MobileNet-YOLO's copy (eric612/MobileNet-YOLO @ 69b4441c, run by ``data/cityscapes/create_data.sh`` and
``data/bdd100k/create_data.sh``) adds ``--anno-type=detection_with_segmentation``: the detection flags and
checks, on ``image annotation label_image`` lines (it checks the annotation file, not the label image; its
check splits every first line into three fields, which we ask only of this type).

Its ``data/tusimple/create_data.sh`` runs it with ``--anno-type=lane_detection --label-type=json``, which the
fork's script cannot run (its first-line check wants three fields of TuSimple's two-field list, and it builds no
command for that type). Ours checks that the list's first line holds two fields and reports a missing image, as
for the other types, reads no label map and does not ask for the annotation file (convert_annoset stores an image
without one unannotated), then runs ``convert_annoset --anno_type=lane_detection --label_type=...`` with the
common flags.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Sequence

__all__ = ["convert_argv", "main"]
_BOXES = ("detection", "detection_with_segmentation")  # the anno types with a label map
_LANE = "lane_detection"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Create AnnotatedDatum database")
    ap.add_argument("root", help="The root directory which contains the images and annotations.")
    ap.add_argument("listfile", help="The file which contains image paths and annotation info.")
    ap.add_argument("outdir", help="The output directory which stores the database file.")
    ap.add_argument("exampledir", help="The directory to store the link of the database files.")
    ap.add_argument("--redo", action="store_true", help="Recreate the database.")
    ap.add_argument("--anno-type", default="classification", help="The type of annotation {classification, detection, detection_with_segmentation, lane_detection}.")
    ap.add_argument("--label-type", default="xml", help="The type of label file format for detection {xml, json, txt}.")
    ap.add_argument("--backend", default="lmdb", help="The backend {lmdb, leveldb} for storing the result")
    ap.add_argument("--check-size", action="store_true", help="Check that all the datum have the same size.")
    ap.add_argument("--encode-type", default="", help="What type should we encode the image as ('png','jpg',...).")
    ap.add_argument("--encoded", action="store_true", help="The encoded image will be save in datum.")
    ap.add_argument("--gray", action="store_true", help="Treat images as grayscale ones.")
    ap.add_argument("--label-map-file", default="", help="A file with LabelMap protobuf message.")
    ap.add_argument("--min-dim", default=0, type=int, help="Minimum dimension images are resized to.")
    ap.add_argument("--max-dim", default=0, type=int, help="Maximum dimension images are resized to.")
    ap.add_argument("--resize-height", default=0, type=int, help="Height images are resized to.")
    ap.add_argument("--resize-width", default=0, type=int, help="Width images are resized to.")
    ap.add_argument("--shuffle", action="store_true", help="Randomly shuffle the order of images and their labels.")
    ap.add_argument("--check-label", action="store_true", help="Check that there is no duplicated name/label.")
    return ap


def convert_argv(a: argparse.Namespace, root: str) -> list[str]:
    """convert_annoset's flags and arguments, in SSD's order (booleans as Python prints them)."""
    flags = [("anno_type", a.anno_type)]
    if a.anno_type in _BOXES:
        flags += [("label_type", a.label_type), ("label_map_file", a.label_map_file), ("check_label", a.check_label)]
    elif a.anno_type == _LANE:
        flags += [("label_type", a.label_type)]
    flags += [("min_dim", a.min_dim), ("max_dim", a.max_dim), ("resize_height", a.resize_height),
              ("resize_width", a.resize_width), ("backend", a.backend), ("shuffle", a.shuffle),
              ("check_size", a.check_size), ("encode_type", a.encode_type), ("encoded", a.encoded), ("gray", a.gray)]
    return [f"--{k}={v}" for k, v in flags] + [root, a.listfile, a.outdir]


def _check(a: argparse.Namespace, root: str) -> str | None:
    """SSD's checks; the message of the first that fails."""
    if not os.path.exists(a.root):
        return f"root directory: {a.root} does not exist"
    if not os.path.exists(a.listfile):
        return f"list file: {a.listfile} does not exist"
    with open(a.listfile, encoding="utf-8", errors="surrogateescape") as f:
        first = f.readline().strip("\n").split()
    fields = 3 if a.anno_type == "detection_with_segmentation" else 2
    if len(first) == fields:
        image, anno = first[:2]
        if not os.path.exists(root + image):
            print(f"image file: {root + image} does not exist")  # SSD's warning; convert_annoset skips it
        if a.anno_type == "classification" and not anno.isdigit():
            print(f"annotation: {anno} is not an integer")
        elif a.anno_type in _BOXES and not os.path.exists(root + anno):
            return f"annofation file: {root + anno} does not exist"
    elif first:
        expected = "'image annotation label_image'" if fields == 3 else "'image annotation'"
        return f"list file: {a.listfile}:1: the first line holds {len(first)} fields; expected {expected}"
    if a.anno_type in _BOXES:
        if not os.path.exists(a.label_map_file):
            return f"label map file: {a.label_map_file} does not exist"
        from neocaffe.io.prototxt import read_prototxt
        from neocaffe.proto import caffe_pb2

        try:
            read_prototxt(a.label_map_file, caffe_pb2.LabelMap)
        except Exception as e:  # the parser's errors name the file, line and column
            return f"Cannot parse label map file: {a.label_map_file} ({e})"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    root = a.root if a.root.endswith("/") else a.root + "/"
    problem = _check(a, root)
    if problem is not None:
        print(problem)
        return 1
    parent = os.path.dirname(a.outdir)
    if parent:
        os.makedirs(parent, exist_ok=True)
    if os.path.exists(a.outdir):
        if not a.redo:
            print(f"{a.outdir} already exists and I do not hear redo")
            return 1
        shutil.rmtree(a.outdir)
    args = convert_argv(a, root)
    caffe_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    print(" ".join([f"{caffe_root}/build/tools/convert_annoset", *args]))
    sys.stdout.flush()
    from neocaffe.tools import convert_annoset

    if convert_annoset.main(args) != 0:
        return 1
    os.makedirs(a.exampledir, exist_ok=True)
    link = os.path.join(a.exampledir, os.path.basename(a.outdir))
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(a.outdir, link)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
