"""convert_cifar_data: the binary CIFAR-10 batches into two LMDBs/LevelDBs of Caffe Datums
(Caffe's examples/cifar10/convert_cifar_data.cpp, same arguments; examples/cifar10/create_cifar10.sh runs it).

    convert_cifar_data [FLAGS] input_folder output_folder db_type [pad]

``input_folder`` holds the "CIFAR-10 binary version" files ``data_batch_1.bin`` .. ``data_batch_5.bin`` and
``test_batch.bin``; each is 10000 records of 3073 bytes: one label byte, then the 32x32 image as 1024 red,
1024 green and 1024 blue bytes (rows top to bottom). ``db_type`` is ``lmdb`` or ``leveldb``. As Caffe's tool,
``<output_folder>/cifar10_train_<db_type>`` gets the five training batches in order, each record a raw
Datum (channels 3, height 32, width 32, the 3072 pixel bytes unchanged, so CHW in RGB order; the label
byte read as a signed char) under the key ``%05d`` of its index over the five files (``00000`` ..
``49999``), then ``<output_folder>/cifar10_test_<db_type>`` gets ``test_batch.bin`` under ``00000`` ..
``09999``. Both databases must be new (Caffe's ``db::NEW``); the log has Caffe's lines (``Writing Training
data``, ``Training Batch 1`` .. ``5``, ``Writing Testing data``).

``pad`` (the "Learning Structured Sparsity" fork's ``scnn`` branch, whose
``examples/cifar10/create_padded_cifar10.sh`` passes 4): every image is stored zero-padded by ``pad`` pixels on
each side, a Datum of 3 x (32 + 2 pad) x (32 + 2 pad), for ResNet's pad-and-crop augmentation. 0 (the
default) is BVLC's tool.

Ours: all six files are checked before anything is written, and a missing file, a file that ends inside a
record, or one longer than its records is an error naming the file and the record (Caffe checks only that
a file opens, and would store garbage); the output folder must exist. ``--records_per_file`` (default
10000, Caffe's constant) converts batches of another size, e.g. a small subset; keys still run over the
five files. Records are committed every 1000 (Caffe: one transaction per database), which changes
nothing in the result. A wrong argument count prints the usage and exits with 1 (Caffe: 0).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

import numpy as np

from neocaffe.cli.log import glog_to_stderr
from neocaffe.data.db_writer import DBWriter
from neocaffe.data.sources import DataSourceError, backend_name
from neocaffe.flags import Flag, run_tool
from neocaffe.progress import Progress
from neocaffe.proto import caffe_pb2

__all__ = ["convert", "main", "run", "SIZE", "IMAGE_BYTES", "RECORD_BYTES", "BATCH_SIZE", "TRAIN_BATCHES"]

log = logging.getLogger("neocaffe.tools.convert_cifar_data")

SIZE = 32
IMAGE_BYTES = 3 * SIZE * SIZE
RECORD_BYTES = 1 + IMAGE_BYTES
BATCH_SIZE = 10000
TRAIN_BATCHES = 5
COMMIT_EVERY = 1000

FLAGS = {"records_per_file": Flag(int, BATCH_SIZE, "Records in each batch file (CIFAR-10: 10000; ours)")}
USAGE = ("Converts the binary CIFAR-10 batches into two Caffe databases, one for training, one for testing.\n"
         "Usage:\n    convert_cifar_data [FLAGS] input_folder output_folder db_type [pad]\n"
         "input_folder: the unpacked cifar-10-batches-bin (data_batch_1.bin .. data_batch_5.bin, test_batch.bin)\n"
         "db_type: lmdb or leveldb; written: output_folder/cifar10_train_<db_type>, cifar10_test_<db_type>\n"
         "pad: zero pixels added on each side of every image (default 0; the scnn branch's padded CIFAR-10)\n"
         "The data set (its \"binary version\"): http://www.cs.toronto.edu/~kriz/cifar.html\n")


def batch_files(input_folder: str) -> tuple[list[str], str]:
    """(the five training batch paths, the test batch path) in ``input_folder``."""
    train = [os.path.join(input_folder, f"data_batch_{k + 1}.bin") for k in range(TRAIN_BATCHES)]
    return train, os.path.join(input_folder, "test_batch.bin")


def check_batch(path: str, what: str, records: int) -> None:
    """Raise DataSourceError unless ``path`` is a file of exactly ``records`` records."""
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise DataSourceError(f"Unable to open {what} {path}: {e.strerror or e}") from None
    if not os.path.isfile(path):
        raise DataSourceError(f"Unable to open {what} {path}: not a regular file")
    expected = records * RECORD_BYTES
    if size < expected:
        item, got = divmod(size, RECORD_BYTES)
        raise DataSourceError(f"{path}: truncated CIFAR-10 batch: record #{item} needs {RECORD_BYTES} bytes "
                              f"(1 label + {IMAGE_BYTES} pixels), got {got}; expected {records} records = "
                              f"{expected} bytes, the file has {size}")
    if size > expected:
        raise DataSourceError(f"{path}: {size} bytes is more than {records} records of {RECORD_BYTES} bytes "
                              f"({expected} bytes): not a CIFAR-10 binary batch (other record counts: "
                              f"--records_per_file)")


def padded(pixels: bytes, pad: int) -> bytes:
    """The CHW 3x32x32 image ``pixels`` with ``pad`` zero pixels on each side (the scnn branch's layout)."""
    if not pad:
        return pixels
    chw = np.frombuffer(pixels, np.uint8).reshape(3, SIZE, SIZE)
    return np.pad(chw, ((0, 0), (pad, pad), (pad, pad))).tobytes()


def _write_batch(path: str, records: int, first_key: int, db: DBWriter, datum: caffe_pb2.Datum,
                 bar: Progress, pad: int) -> None:
    with open(path, "rb") as f:
        for item in range(records):
            rec = f.read(RECORD_BYTES)
            if len(rec) != RECORD_BYTES:  # the file changed since it was checked
                raise DataSourceError(f"{path}: truncated CIFAR-10 batch: record #{item} needs {RECORD_BYTES} "
                                      f"bytes, got {len(rec)}")
            label = rec[0]
            datum.label = label - 256 if label > 127 else label  # Caffe reads it as a (signed) char
            datum.data = padded(rec[1:], pad)
            db.put(f"{first_key + item:05d}", datum.SerializeToString())
            bar.update()


def convert(input_folder: str, output_folder: str, db_type: str, pad: int | str = 0, *,
            records_per_file: int = BATCH_SIZE) -> tuple[int, int]:
    """Write both databases; return (training records, test records). See the module docstring."""
    backend = backend_name(db_type)
    pad = _pad(pad)
    if records_per_file < 1:
        raise DataSourceError(f"--records_per_file must be at least 1; received {records_per_file}")
    train, test = batch_files(input_folder)
    for k, path in enumerate(train):
        check_batch(path, f"train file #{k + 1}", records_per_file)
    check_batch(test, "test file", records_per_file)
    if not os.path.isdir(output_folder):
        raise DataSourceError(f"output folder '{output_folder}' does not exist (or is not a folder)")
    datum = caffe_pb2.Datum(channels=3, height=SIZE + 2 * pad, width=SIZE + 2 * pad)

    train_db = os.path.join(output_folder, f"cifar10_train_{db_type}")
    with DBWriter(train_db, backend, commit_every=COMMIT_EVERY) as db, \
            Progress(TRAIN_BATCHES * records_per_file, "convert_cifar_data", "images", log) as bar:
        log.info("Writing Training data")
        for k, path in enumerate(train):
            log.info("Training Batch %d", k + 1)
            _write_batch(path, records_per_file, k * records_per_file, db, datum, bar, pad)
    n_train = db.written

    log.info("Writing Testing data")
    test_db = os.path.join(output_folder, f"cifar10_test_{db_type}")
    with DBWriter(test_db, backend, commit_every=COMMIT_EVERY) as db, \
            Progress(records_per_file, "convert_cifar_data", "images", log) as bar:
        _write_batch(test, records_per_file, 0, db, datum, bar, pad)
    return n_train, db.written


def _pad(pad: int | str) -> int:
    try:
        value = int(pad)
    except ValueError:
        raise DataSourceError(f"pad must be a whole number of pixels (0 or more); received '{pad}'") from None
    if value < 0:
        raise DataSourceError(f"pad must be 0 or more pixels; received {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (returns the exit status); logs glog lines to stderr as Caffe's tool."""
    with glog_to_stderr():
        return run(list(sys.argv[1:] if argv is None else argv))


def run(argv: list[str]) -> int:
    """The tool on ``argv`` (without the program name)."""
    return run_tool("convert_cifar_data", USAGE, FLAGS, argv, 3, convert, (DataSourceError, OSError), log, most=4)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
