"""caffe_ocr's convert_imageset: a list of images with several labels a line into a LevelDB/LMDB of Datums whose
``label`` is repeated (senlinuc/caffe_ocr @ 81642f61ea8f888e360cca30e08e05b7bc6d4556, ``tools/convert_imageset.cpp``
``convert_db`` and ``src/caffe/util/io.cpp``; its ``read_db`` is not called by its ``main``).

    python -m neocaffe.tools.convert_imageset_ocr [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME

The fork's list syntax and defaults, which is why this is a tool of its own rather than a flag of
``convert_imageset`` (the fork's tool has no such flag: it always reads its own syntax): the file name runs to the
first ' ' after the line's last '.', then every int that reads (``neocaffe.data.multilabel.parse_convert_line``); a
line without '.' is reported and skipped. Flags as the fork's: ``--shuffle`` (default true), ``--backend``
(default leveldb), ``--encoded`` (default true: the file's own bytes where the extension is the encoding and nothing
is resized, else re-encoded by its extension), ``--encode_type``, ``--gray``, ``--check_size``, and
``--resize_height``/``--resize_width`` passed as given (the fork dropped BVLC's clamp to >= 0): both positive resize
to them, height with width -1 keeps the aspect ratio, one positive alone brings the shorter side to it
(``fork_read_image``). Keys ``%08d_<file>`` in list order after the shuffle (neocaffe's draws; the fork's from
Caffe's RNG); each record is the Datum with its labels written as the fork's C++ serializer writes them
(:func:`neocaffe.data.multilabel.multilabel_record`); commits every 1000 records. An unreadable image is reported and
skipped (the fork skips it silently after ReadImageToCVMat's log line).
"""
from __future__ import annotations

import logging
import sys
from typing import Sequence

from neocaffe.cli.log import glog_to_stderr
from neocaffe.data.db_writer import DBWriter
from neocaffe.data.multilabel import read_lines, fork_image_to_datum, multilabel_record, parse_convert_line
from neocaffe.data.sources import DataSourceError
from neocaffe.flags import Flag, run_tool

log = logging.getLogger("neocaffe.tools.convert_imageset_ocr")

FLAGS = {
    "gray": Flag(bool, False, "When this option is on, treat images as grayscale ones"),
    "shuffle": Flag(bool, True, "Randomly shuffle the order of images and their labels"),
    "backend": Flag(str, "leveldb", "The backend {lmdb, leveldb} for storing the result"),
    "resize_width": Flag(int, 0, "Width images are resized to"),
    "resize_height": Flag(int, 0, "Height images are resized to"),
    "check_size": Flag(bool, False, "When this option is on, check that all the datum have the same size"),
    "encoded": Flag(bool, True, "When this option is on, the encoded image will be save in datum"),
    "encode_type": Flag(str, "", "Optional: What type should we encode the image as ('png','jpg',...)."),
}
USAGE = ("Convert a set of images to the leveldb/lmdb\nformat used as input for Caffe.\nUsage:\n"
         "    convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME\n")


def convert(root: str, list_file: str, db_name: str, *, gray: bool = False, shuffle: bool = True,
            backend: str = "leveldb", resize_height: int = 0, resize_width: int = 0, check_size: bool = False,
            encoded: bool = True, encode_type: str = "") -> int:
    """Write the database; return the number of images stored (see the module docstring)."""
    lines = []
    for no, raw in enumerate(read_lines(list_file, "LISTFILE"), 1):
        parsed = parse_convert_line(raw)
        if parsed is None:
            log.info("wrong format:%s", raw.decode("utf-8", "surrogateescape"))
            continue
        lines.append((no, *parsed))
    log.info("found %d images", len(lines))
    if shuffle:
        from neocaffe import rng

        log.info("Shuffling data")
        lines = [lines[int(i)] for i in rng.numpy_rng().permutation(len(lines))]
    log.info("A total of %d images.", len(lines))
    if encode_type and not encoded:
        log.info("encode_type specified, assuming encoded=true.")
    data_size = None
    with DBWriter(db_name, backend, commit_every=1000, report=True) as db:
        for line_id, (no, name, labels) in enumerate(lines):
            enc = encode_type
            if encoded and not enc:
                enc = name[name.rfind("."):].lower()  # the fork's guess: the extension with its dot
            datum = fork_image_to_datum(root + name, resize_height, resize_width, not gray, enc)
            if datum is None:
                log.error("Could not open or find file %s (%s line %d)", root + name, list_file, no)
                continue
            if check_size and not datum.encoded:
                size = datum.channels * datum.height * datum.width
                if data_size is None:
                    data_size = size
                elif len(datum.data) != data_size:
                    raise DataSourceError(f"{list_file}:{no}: Incorrect data field size {len(datum.data)} "
                                          f"(the first image gave {data_size}; --check_size)")
            db.put(f"{line_id:08d}_{name}", multilabel_record(datum, labels))
    return db.written


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (returns the exit status); logs glog lines to stderr as Caffe's tool."""
    with glog_to_stderr():
        return run(list(sys.argv[1:] if argv is None else argv))


def run(argv: list[str]) -> int:
    """The tool on ``argv`` (without the program name), logging wherever ``neocaffe`` logs go."""
    return run_tool("convert_imageset_ocr", USAGE, FLAGS, argv, 3, convert, (DataSourceError, OSError), log)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
