"""convert_mnist_siamese_data: MNIST's IDX files into a LevelDB of random image pairs for a siamese net
(Caffe's examples/siamese/convert_mnist_siamese_data.cpp, same arguments; examples/siamese/
create_mnist_siamese.sh runs it on the training and the test files).

    convert_mnist_siamese_data [FLAGS] input_image_file input_label_file output_db_file

As Caffe's tool: the IDX magics (2051 images, 2049 labels) and item counts are checked as in
convert_mnist_data; then for each index ``k`` in ``0 .. num_items-1`` two generator draws ``a``, ``b``
pick the images ``i = a % num_items`` and ``j = b % num_items``, and the key ``%08d`` of ``k`` gets a raw
Datum of channels 2 (image ``i`` then image ``j``), height rows, width cols, label 1 when the two digits'
labels are equal, else 0. The output must be a new database.

The draws: Caffe's ``caffe_rng_rand()`` is one raw 32-bit output of its boost::mt19937. The tool never
calls ``Caffe::set_random_seed``, so ``Caffe::rng_stream()`` builds that generator on first use from
``cluster_seedgen()``: 8 bytes of /dev/urandom (a time/pid hash where that cannot be read), of which the
generator keeps the low 32 bits. Caffe's pairs thus differ from run to run and no run can be repeated.
Ours draws from the same generator (mt19937 with its standard seeding, the outputs used in the same order),
seeded from /dev/urandom likewise by default; ``--seed=S`` (ours) seeds it with S instead, and gives the
very pairs Caffe's tool would give with its generator seeded S. The seed used is logged either way, so any
run can be repeated.

Ours too: ``--backend`` (default ``leveldb``, the only one Caffe's tool writes; ``lmdb`` needs no plyvel);
gzip-compressed IDX files are read directly; a truncated file is an error naming the file and the item
(Caffe would store garbage); records are committed every 1000 (Caffe: one write each, same result); a
wrong argument count prints the usage and exits with 1 (Caffe: 0).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import BinaryIO, Sequence

import numpy as np

from neocaffe.cli.log import glog_to_stderr
from neocaffe.data.db_writer import DBWriter
from neocaffe.data.sources import DataSourceError
from neocaffe.flags import Flag, run_tool
from neocaffe.progress import Progress
from neocaffe.proto import caffe_pb2
from neocaffe.tools.convert_mnist_data import open_idx, read_headers

__all__ = ["convert", "mt19937", "draw_pairs", "main", "run"]

log = logging.getLogger("neocaffe.tools.convert_mnist_siamese_data")

COMMIT_EVERY = 1000
RANDOM_SEED = -1

FLAGS = {
    "backend": Flag(str, "leveldb", "The backend for storing the result (Caffe's tool: leveldb only)"),
    "seed": Flag(int, RANDOM_SEED, "Seed of the pair generator, 0..4294967295; -1: from /dev/urandom as Caffe"),
}
USAGE = ("Writes random pairs of MNIST images as Caffe Datums for training a siamese net; a pair's label is 1\n"
         "when both images show the same digit, else 0.\n"
         "Usage:\n    convert_mnist_siamese_data [FLAGS] input_image_file input_label_file output_db_file\n"
         "The inputs are MNIST's IDX files, gzipped or not: http://yann.lecun.com/exdb/mnist/\n")


def mt19937(seed: int) -> np.random.MT19937:
    """A 32-bit Mersenne Twister seeded as boost::mt19937(seed) and std::mt19937(seed) are (Knuth's
    linear recurrence over the 624 state words); ``random_raw`` gives its outputs in order."""
    if not 0 <= seed < 1 << 32:
        raise DataSourceError(f"the seed must be in 0..4294967295; received {seed}")
    key = [seed]
    for i in range(1, 624):
        prev = key[-1]
        key.append((1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF)
    gen = np.random.MT19937()
    gen.state = {"bit_generator": "MT19937", "state": {"key": np.array(key, np.uint32), "pos": 624}}
    return gen


def draw_pairs(seed: int, num_items: int) -> np.ndarray:
    """The (num_items, 2) image indices Caffe's tool picks with its generator seeded ``seed``."""
    raw = mt19937(seed).random_raw(2 * num_items).astype(np.uint64)
    return (raw % max(num_items, 1)).astype(np.int64).reshape(num_items, 2)


def _read_all(f: BinaryIO, path: str, count: int, size: int, what: str) -> bytes:
    """``count`` items of ``size`` bytes; a short file is an error naming the first incomplete item."""
    data = f.read(count * size)
    if len(data) < count * size:
        item, got = divmod(len(data), size)
        raise DataSourceError(f"{path}: truncated IDX file: {what} #{item} needs {size} bytes, got {got}")
    return data


def convert(image_file: str, label_file: str, db_path: str, *, backend: str = "leveldb",
            seed: int = RANDOM_SEED) -> int:
    """Write the database of pairs; return the number of pairs stored (see the module docstring)."""
    with open_idx(image_file) as images, open_idx(label_file) as labels:
        num_items, rows, cols = read_headers(images, labels, image_file, label_file)
        size = rows * cols
        pixels = _read_all(images, image_file, num_items, size, "image")
        label_bytes = _read_all(labels, label_file, num_items, 1, "label")
    if seed == RANDOM_SEED:
        seed = int.from_bytes(os.urandom(8), "little") & 0xFFFFFFFF  # what mt19937 keeps of cluster_seedgen()
    pairs = draw_pairs(seed, num_items)
    datum = caffe_pb2.Datum(channels=2, height=rows, width=cols)
    log.info("A total of %d items.", num_items)
    log.info("Rows: %d Cols: %d", rows, cols)
    log.info("Pairs drawn with mt19937 seeded %d (--seed=%d draws them again)", seed, seed)
    with DBWriter(db_path, backend, commit_every=COMMIT_EVERY) as db, \
            Progress(num_items, "convert_mnist_siamese_data", "pairs", log) as bar:
        for k, (i, j) in enumerate(pairs.tolist()):
            datum.data = pixels[i * size:(i + 1) * size] + pixels[j * size:(j + 1) * size]
            datum.label = 1 if label_bytes[i] == label_bytes[j] else 0
            db.put(f"{k:08d}", datum.SerializeToString())
            bar.update()
    return db.written


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (returns the exit status); logs glog lines to stderr as Caffe's tool."""
    with glog_to_stderr():
        return run(list(sys.argv[1:] if argv is None else argv))


def run(argv: list[str]) -> int:
    """The tool on ``argv`` (without the program name)."""
    return run_tool("convert_mnist_siamese_data", USAGE, FLAGS, argv, 3, convert, (DataSourceError, OSError),
                    log)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
