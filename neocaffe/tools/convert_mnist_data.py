"""convert_mnist_data: MNIST's IDX image and label files into an LMDB/LevelDB of Caffe Datums
(Caffe's examples/mnist/convert_mnist_data.cpp, same flag and arguments).

    convert_mnist_data [FLAGS] input_image_file input_label_file output_db_file

As Caffe's tool: the image file must have the IDX magic 2051 and the label file 2049 (big-endian), the
two must hold the same number of items; each item becomes a raw Datum (channels 1, height rows, width
cols, the pixel bytes, the label) under the key ``%08d`` of its index, committed every 1000 records.
``--backend`` is ``lmdb`` (default) or ``leveldb``; the output must not exist yet (Caffe's ``db::NEW``).
Ours: gzip-compressed IDX files (as distributed, ``*.gz``) are read directly, so gunzip is optional,
and a truncated file is an error naming the file and the item, where Caffe would store garbage.
"""
from __future__ import annotations

import gzip
import logging
import sys
from typing import BinaryIO, Sequence

from neocaffe.cli.log import glog_to_stderr
from neocaffe.flags import Flag, run_tool
from neocaffe.data.sources import DataSourceError
from neocaffe.data.db_writer import DBWriter
from neocaffe.progress import Progress
from neocaffe.proto import caffe_pb2

__all__ = ["convert", "open_idx", "read_header", "read_headers", "main", "run", "IMAGE_MAGIC", "LABEL_MAGIC"]

log = logging.getLogger("neocaffe.tools.convert_mnist_data")

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
COMMIT_EVERY = 1000

FLAGS = {"backend": Flag(str, "lmdb", "The backend for storing the result")}
USAGE = ("This script converts the MNIST dataset to\nthe lmdb/leveldb format used by Caffe to load data.\n"
         "Usage:\n    convert_mnist_data [FLAGS] input_image_file input_label_file output_db_file\n"
         "The MNIST dataset could be downloaded at\n    http://yann.lecun.com/exdb/mnist/\n")


def open_idx(path: str) -> BinaryIO:
    """``path`` opened for reading bytes, through gzip when it starts with gzip's magic."""
    f = open(path, "rb")
    head = f.read(2)
    f.seek(0)
    if head == b"\x1f\x8b":
        f.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return f


def _read_exact(f: BinaryIO, n: int, path: str, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise DataSourceError(f"{path}: truncated IDX file: {what} needs {n} bytes, got {len(data)}")
    return data


def read_header(f: BinaryIO, path: str, magic: int, fields: int) -> list[int]:
    """The magic number checked, then ``fields`` big-endian uint32 values."""
    values = [int.from_bytes(_read_exact(f, 4, path, "the header"), "big") for _ in range(1 + fields)]
    if values[0] != magic:
        kind = "image" if magic == IMAGE_MAGIC else "label"
        raise DataSourceError(f"{path}: Incorrect {kind} file magic. Received: {values[0]}, expected {magic}")
    return values[1:]


def read_headers(images: BinaryIO, labels: BinaryIO, image_file: str, label_file: str) -> tuple[int, int, int]:
    """(items, rows, cols) from an image and a label IDX file's headers, magics and counts checked."""
    num_items, rows, cols = read_header(images, image_file, IMAGE_MAGIC, 3)
    (num_labels,) = read_header(labels, label_file, LABEL_MAGIC, 1)
    if num_items != num_labels:
        raise DataSourceError(f"{image_file} holds {num_items} images but {label_file} holds {num_labels} "
                              f"labels; they must be equal")
    return num_items, rows, cols


def convert(image_file: str, label_file: str, db_path: str, *, backend: str = "lmdb") -> int:
    """Write the database; return the number of items stored (see the module docstring)."""
    with open_idx(image_file) as images, open_idx(label_file) as labels:
        num_items, rows, cols = read_headers(images, labels, image_file, label_file)
        size = rows * cols
        datum = caffe_pb2.Datum(channels=1, height=rows, width=cols)
        log.info("A total of %d items.", num_items)
        log.info("Rows: %d Cols: %d", rows, cols)
        with DBWriter(db_path, backend, commit_every=COMMIT_EVERY) as db, Progress(num_items, "convert_mnist_data", "images", log) as bar:
            for item in range(num_items):
                bar.update()
                datum.data = _read_exact(images, size, image_file, f"image #{item}")
                label = _read_exact(labels, 1, label_file, f"label #{item}")[0]
                datum.label = label - 256 if label > 127 else label  # Caffe reads it as a (signed) char
                db.put(f"{item:08d}", datum.SerializeToString())
    log.info("Processed %d files.", db.written)
    return db.written


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (returns the exit status); logs glog lines to stderr as Caffe's tool."""
    with glog_to_stderr():
        return run(list(sys.argv[1:] if argv is None else argv))


def run(argv: list[str]) -> int:
    """The tool on ``argv`` (without the program name)."""
    return run_tool("convert_mnist_data", USAGE, FLAGS, argv, 3, convert, (DataSourceError, OSError), log)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
