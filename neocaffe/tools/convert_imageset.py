"""convert_imageset: a list of images into an LMDB/LevelDB of Caffe Datums (Caffe's tool, same flags).

    convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME

LISTFILE holds ``subfolder1/file1.JPEG 7`` lines. Images are read with ``cv2.imread`` (BGR, or gray with
``--gray``) and resized with ``cv2.resize`` INTER_LINEAR to ``--resize_height`` x ``--resize_width``
(bit-exact with Caffe's OpenCV); keys are ``%08d_<file>`` in list order (after ``--shuffle``); records
are committed every 1000 images. As in Caffe, an image that cannot be read is reported (one ERROR line
naming the list line and the file) and skipped. ``--num_workers`` (ours) decodes in parallel
processes; the output does not depend on it.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

from neocaffe.cli.log import glog_to_stderr
from neocaffe.data.datum import read_image_to_datum
from neocaffe.flags import Flag, run_tool
from neocaffe.data.sources import DataSourceError, ListEntry, read_image_list
from neocaffe.data.db_writer import DBWriter
from neocaffe.progress import Progress

log = logging.getLogger("neocaffe.tools.convert_imageset")

FLAGS = {
    "gray": Flag(bool, False, "When this option is on, treat images as grayscale ones"),
    "shuffle": Flag(bool, False, "Randomly shuffle the order of images and their labels"),
    "backend": Flag(str, "lmdb", "The backend {lmdb, leveldb} for storing the result"),
    "resize_width": Flag(int, 0, "Width images are resized to"),
    "resize_height": Flag(int, 0, "Height images are resized to"),
    "check_size": Flag(bool, False, "When this option is on, check that all the datum have the same size"),
    "encoded": Flag(bool, False, "When this option is on, the encoded image will be save in datum"),
    "encode_type": Flag(str, "", "Optional: What type should we encode the image as ('png','jpg',...)."),
    "crop": Flag(bool, False, "When this option is on, scale and crop central portion of images"),
    "num_workers": Flag(int, -1, "Processes decoding images (0: none; -1: automatic); the output is the same"),
}
USAGE = ("Convert a set of images to the leveldb/lmdb\nformat used as input for Caffe.\nUsage:\n"
         "    convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME\n")


def _encoding_for(filename: str, encoded: bool, encode_type: str) -> str:
    """Caffe's rule: ``--encode_type`` as given, else (``--encoded``) the file's extension with its dot."""
    if encode_type or not encoded:
        return encode_type
    p = filename.rfind(".")
    if p < 0:
        log.warning("Failed to guess the encoding of '%s'", filename)
        return filename.lower()
    return filename[p:].lower()


def _convert_one(job: tuple) -> tuple[bytes | None, int, int]:
    """(serialized datum or None, data size, channels*height*width) for one list entry."""
    path, label, h, w, is_color, enc, crop = job
    datum = read_image_to_datum(path, label, h, w, is_color, enc, crop)
    if datum is None:
        return None, 0, 0
    return datum.SerializeToString(), len(datum.data), datum.channels * datum.height * datum.width


def convert(root: str, list_file: str, db_name: str, *, gray: bool = False, shuffle: bool = False,
            backend: str = "lmdb", resize_height: int = 0, resize_width: int = 0, check_size: bool = False,
            encoded: bool = False, encode_type: str = "", crop: bool = False, num_workers: int = -1) -> int:
    """Write the database; return the number of images stored (see the module docstring)."""
    lines: list[ListEntry] = read_image_list(list_file, what="LISTFILE")
    if shuffle:
        from neocaffe import rng

        log.info("Shuffling data")
        order = rng.numpy_rng().permutation(len(lines))
        lines = [lines[int(i)] for i in order]
    log.info("A total of %d images.", len(lines))
    if encode_type and not encoded:
        log.info("encode_type specified, assuming encoded=true.")
    h, w = max(0, resize_height), max(0, resize_width)
    jobs = [(root + e.path, e.label, h, w, not gray, _encoding_for(e.path, encoded, encode_type), crop) for e in lines]
    if num_workers < 0:
        num_workers = 0 if len(jobs) < 2000 else min(8, os.cpu_count() or 1)
    data_size = None
    pool = None
    try:
        if num_workers > 0:
            import multiprocessing as mp

            pool = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(num_workers)
            results = pool.imap(_convert_one, jobs, chunksize=16)
        else:
            results = map(_convert_one, jobs)
        with DBWriter(db_name, backend, commit_every=1000, report=True) as db, Progress(len(jobs), "convert_imageset", "images", log) as bar:
            for line_id, (entry, (value, size, chw)) in enumerate(zip(lines, results)):
                bar.update()
                if value is None:
                    log.error("Could not open or find file %s (%s line %d)", root + entry.path, list_file, entry.line)
                    continue
                if check_size and size:
                    if data_size is None:
                        data_size = chw
                    elif size != data_size:
                        raise DataSourceError(
                            f"{list_file}:{entry.line}: '{root + entry.path}' gives {size} bytes of data; the first "
                            f"image gave {data_size} (--check_size: every datum must have the same size)"
                        )
                db.put(f"{line_id:08d}_{entry.path}", value)
    finally:
        if pool is not None:
            pool.terminate()
    return db.written


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (returns the exit status); logs glog lines to stderr as Caffe's tool."""
    with glog_to_stderr():
        return run(list(sys.argv[1:] if argv is None else argv))


def run(argv: list[str]) -> int:
    """The tool on ``argv`` (without the program name), logging wherever ``neocaffe`` logs go."""
    return run_tool("convert_imageset", USAGE, FLAGS, argv, 3, convert, (DataSourceError, OSError), log)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
