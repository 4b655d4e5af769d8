"""compute_image_mean: the per-pixel mean of a Datum database (Caffe's tool, same flags and output).

    compute_image_mean [FLAGS] INPUT_DB [OUTPUT_FILE]

Sums every datum (encoded ones decoded in their native channels) in float32, in key order, divides by
the count in float32 (Caffe's arithmetic, so the result is bit-identical), writes a BlobProto with
``num: 1, channels, height, width`` and packed ``data`` to OUTPUT_FILE when given, and logs the mean of
each channel.
"""
from __future__ import annotations

import logging
import sys
from typing import Sequence

import numpy as np

from neocaffe.cli.log import glog_to_stderr
from neocaffe.data.datum import DatumError, decode_datum
from neocaffe.flags import Flag, parse_command
from neocaffe.data.sources import DataSourceError, DBReader, detect_backend
from neocaffe.progress import Progress

log = logging.getLogger("neocaffe.tools.compute_image_mean")

FLAGS = {"backend": Flag(str, "lmdb", "The backend {leveldb, lmdb} containing the images")}
USAGE = ("Compute the mean_image of a set of images given by a leveldb/lmdb\nUsage:\n"
         "    compute_image_mean [FLAGS] INPUT_DB [OUTPUT_FILE]\n")


def compute_mean(db_path: str, backend: str = "lmdb") -> np.ndarray:
    """The mean of every datum in ``db_path`` as float32 (1, C, H, W), computed as Caffe does."""
    total: np.ndarray | None = None
    count = 0
    with DBReader(db_path, backend) as reader:
        known = reader.count() if reader.backend == "lmdb" else None  # LMDB: from its statistics, no walk
        with Progress(known, "compute_image_mean", "images", log) as bar:
            for key, value in reader.items():
                bar.update()
                where = f"{db_path}: record '{key.decode('utf-8', 'replace')}'"
                d = decode_datum(value, where=where)
                if total is None:
                    if d.encoded:
                        log.info("Decoding Datum")
                    total = np.zeros(d.array.shape, np.float32)
                    log.info("Starting Iteration")
                elif d.array.shape != total.shape:
                    shape = "x".join(map(str, d.array.shape))
                    first = "x".join(map(str, total.shape))
                    raise DatumError(f"{where}: datum is {shape} but the first datum is {first}; "
                                     "incorrect data field size")
                total += d.array.astype(np.float32)
                count += 1
                if count % 10000 == 0:
                    log.info("Processed %d files.", count)
    if count % 10000 != 0:
        log.info("Processed %d files.", count)
    assert total is not None
    return (total / np.float32(count))[None].astype(np.float32)


def channel_means(mean: np.ndarray) -> list[float]:
    """Caffe's logged ``mean_value channel [c]``: a float32 running sum over the pixels, over their count."""
    c = mean.shape[1]
    flat = mean.reshape(c, -1)
    return [float(np.cumsum(flat[i], dtype=np.float32)[-1] / np.float32(flat.shape[1])) for i in range(c)]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (returns the exit status); logs glog lines to stderr as Caffe's tool."""
    with glog_to_stderr():
        return run(list(sys.argv[1:] if argv is None else argv))


def run(argv: list[str]) -> int:
    """The tool on ``argv`` (without the program name), logging wherever ``neocaffe`` logs go."""
    parsed = parse_command("compute_image_mean", USAGE, FLAGS, argv, 1, 2)
    if parsed is None:
        return 1
    f, pos, given = parsed
    backend = f["backend"] if "backend" in given else (detect_backend(pos[0]) or f["backend"])
    try:
        mean = compute_mean(pos[0], backend)
        if len(pos) == 2:
            from neocaffe.io.binaryproto import write_blobproto

            log.info("Write to %s", pos[1])
            write_blobproto(pos[1], mean, legacy=True)
    except (DataSourceError, DatumError, OSError) as e:
        log.error("%s", e)
        return 1
    means = channel_means(mean)
    log.info("Number of channels: %d", len(means))
    for c, m in enumerate(means):
        log.info("mean_value channel [%d]:%g", c, m)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
