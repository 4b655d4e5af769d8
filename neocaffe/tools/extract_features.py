"""extract_features: blobs of a trained net, batch after batch, into LMDB/LevelDB databases of Datums
(BVLC Caffe's tools/extract_features.cpp, same positional arguments).

    extract_features pretrained_net_param feature_extraction_proto_file \\
        extract_feature_blob_name1[,name2,...] save_feature_dataset_name1[,name2,...] \\
        num_mini_batches db_type [CPU/GPU] [DEVICE_ID=0]

As Caffe's tool: the net of ``feature_extraction_proto_file`` is built in the TEST phase and the weights of
``pretrained_net_param`` are copied in by layer name (as ``caffe test`` does); its data layer feeds it. Blob
names and dataset names are comma-separated lists of equal length, blob *i* going to dataset *i*. Each of
``num_mini_batches`` forward passes writes, for every blob and every item *n* of its batch (the blob's first
axis), one Datum: ``channels``/``height``/``width`` the blob's legacy (4-D) shape, ``float_data`` the item's
``count / num`` values, no ``data``, no ``label``; its key is the running item index of that dataset as
``%010d``. Each dataset commits every 1000 items and at the end. ``db_type`` is ``lmdb`` or ``leveldb``;
each output must not exist yet (Caffe's ``db::NEW``). ``GPU`` runs on CUDA device ``DEVICE_ID`` (default 0);
``CPU`` (or no mode) on the CPU. The log lines keep Caffe's wording and Caffe's severities: ``Using CPU``,
``Extracting Features``, ``Extracted features of N query images for feature blob X`` and
``Successfully extracted the features!`` are ERROR-level (``E``) lines in Caffe's log, so they are here too.

Ours, where Caffe would crash or go on silently: the command line is checked before the net is built
(a mode other than ``CPU``/``GPU``, a ``num_mini_batches`` or ``DEVICE_ID`` that is not a non-negative
integer, more than eight arguments, two datasets of one path, an unknown ``db_type``: Caffe reads ``gpu``
as CPU, ``10x`` as 10 and ignores extra arguments; ``db_type`` is read case-insensitively); every output
path is checked before any database is created (Caffe creates the first ones, then stops at the first that
exists); ``GPU`` without CUDA or without that device is an error naming what this machine has; a blob of
more than four axes is an error naming the blob and its shape (Caffe's legacy accessors abort on it). The
usage text (an ``E`` line when fewer than six or more than eight arguments are given) has Caffe's synopsis
line; its prose is ours. Errors are one ``F`` line; exit status 1.
"""
from __future__ import annotations

import logging
import os
import sys
from contextlib import ExitStack
from typing import Any, Sequence

import numpy as np

from neocaffe.cli.log import glog_to_stderr
from neocaffe.data.db_writer import DBWriter
from neocaffe.data.sources import backend_name
from neocaffe.progress import Progress
from neocaffe.proto import caffe_pb2

__all__ = ["ExtractFeaturesError", "extract_features", "legacy_shape", "feature_key", "main", "USAGE",
           "COMMIT_EVERY"]

log = logging.getLogger("neocaffe.tools.extract_features")

COMMIT_EVERY = 1000
MODES = ("CPU", "GPU")
USAGE = ("Runs a trained net over the batches of its data layer and stores the chosen blobs, one Datum per "
         "item, in new databases.\n"
         "Usage: extract_features  pretrained_net_param  feature_extraction_proto_file  "
         "extract_feature_blob_name1[,name2,...]  save_feature_dataset_name1[,name2,...]  num_mini_batches  "
         "db_type  [CPU/GPU] [DEVICE_ID=0]\n"
         "Several blobs are extracted in one pass when blob names and dataset names are given as lists "
         "separated by ',' (no spaces); both lists must have the same length.")


class ExtractFeaturesError(ValueError):
    """The tool cannot run as asked; the message names the argument, what was received and expected."""


def feature_key(index: int) -> str:
    """The key of a dataset's ``index``-th item: ten digits, zero-padded (Caffe's ``format_int(i, 10)``)."""
    return f"{index:010d}"


def legacy_shape(name: str, shape: Sequence[int]) -> tuple[int, int, int, int]:
    """(num, channels, height, width) of blob ``name``: its shape padded with 1s to four axes, as Caffe's
    legacy accessors read it; more than four axes is an error naming the blob."""
    if len(shape) > 4:
        raise ExtractFeaturesError(f"feature blob '{name}' has {len(shape)} axes (shape "
                                   f"{tuple(int(d) for d in shape)}); a Datum holds at most 4 "
                                   "(num, channels, height, width)")
    dims = [int(d) for d in shape] + [1] * (4 - len(shape))
    return dims[0], dims[1], dims[2], dims[3]


def _count(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ExtractFeaturesError(f"{what}: expected a non-negative integer. Received: '{text}'")
    return value


def _device(mode: str, device_id: str | None) -> str:
    """The torch device for the ``[CPU/GPU] [DEVICE_ID]`` arguments, logged as Caffe logs them."""
    if mode not in MODES:
        raise ExtractFeaturesError(f"mode: expected CPU or GPU. Received: '{mode}'")
    if mode == "CPU":
        log.error("Using CPU")
        return "cpu"
    log.error("Using GPU")
    gpu = _count(device_id, "DEVICE_ID") if device_id is not None else 0
    log.error("Using Device_id=%d", gpu)
    import torch

    if not torch.cuda.is_available():
        raise ExtractFeaturesError(f"GPU device {gpu} asked for, but CUDA is not available on this machine "
                                   "(give CPU as the mode to run on the CPU)")
    count = torch.cuda.device_count()
    if gpu >= count:
        raise ExtractFeaturesError(f"DEVICE_ID: no CUDA device {gpu}; this machine has {count} "
                                   f"(ids 0..{count - 1})")
    return f"cuda:{gpu}"


def _check_outputs(datasets: Sequence[str]) -> None:
    seen: set[str] = set()
    for path in datasets:
        real = os.path.realpath(path)
        if real in seen:
            raise ExtractFeaturesError(f"save_feature_dataset_name '{path}' is given twice; each blob needs a "
                                       "database of its own")
        seen.add(real)
        if os.path.exists(path):
            raise ExtractFeaturesError(f"save_feature_dataset_name '{path}' already exists; the output must be "
                                       "a new database (remove it or choose another name)")


def _build_net(proto: str, weights: str, device: str) -> Any:
    """The TEST-phase net of ``proto`` with ``weights`` copied in (``caffe test``'s way)."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net_with_source
    from neocaffe.layers.base import TEST

    net_param, source = read_net_with_source(proto)
    net = Net(net_param, TEST, source=source, device=device, keep_blob_diffs=False)
    try:
        net.copy_from(weights)
    except (OSError, ValueError) as e:
        msg = str(e)
        raise ExtractFeaturesError(msg if weights in msg else f"pretrained_net_param '{weights}': {msg}") from e
    return net


def _features(net: Any, name: str) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """(legacy shape, the blob's values as float32 rows, one per item) after a forward."""
    import torch

    value = net.blob(name).detach()
    shape = legacy_shape(name, tuple(value.shape))
    rows = value.reshape(shape[0], -1) if shape[0] else value.reshape(0, 0)
    return shape, rows.to("cpu", torch.float32).numpy()


def _write_batch(db: DBWriter, name: str, shape: tuple[int, int, int, int], rows: np.ndarray) -> None:
    _, channels, height, width = shape
    for row in rows:
        datum = caffe_pb2.Datum(channels=channels, height=height, width=width, float_data=row.tolist())
        db.put(feature_key(db.written), datum.SerializeToString())
        if db.written % COMMIT_EVERY == 0:  # DBWriter committed it
            log.error("Extracted features of %d query images for feature blob %s", db.written, name)


def extract_features(weights: str, proto: str, blob_names: str, dataset_names: str, num_mini_batches: str,
                     db_type: str, mode: str = "CPU", device_id: str | None = None) -> int:
    """Run the tool (see the module docstring); return the number of items written to each dataset."""
    blobs, datasets = blob_names.split(","), dataset_names.split(",")
    if len(blobs) != len(datasets):
        raise ExtractFeaturesError(f"the number of blob names and dataset names must be equal. Received: "
                                   f"{len(blobs)} blob names ({blob_names}) and {len(datasets)} dataset "
                                   f"names ({dataset_names})")
    batches = _count(num_mini_batches, "num_mini_batches")
    try:
        backend = backend_name(db_type)
    except ValueError as e:
        raise ExtractFeaturesError(f"db_type: {e}") from None
    device = _device(mode, device_id)
    _check_outputs(datasets)
    if not os.path.isfile(weights):
        raise ExtractFeaturesError(f"pretrained_net_param '{weights}': no such file (expected a .caffemodel "
                                   "or .caffemodel.h5 file)")
    net = _build_net(proto, weights, device)
    try:
        known = set(net.blob_names)
        for name in blobs:
            if name not in known:
                raise ExtractFeaturesError(f"Unknown feature blob name '{name}' in the network {proto}; its "
                                           f"blobs: {', '.join(net.blob_names)}")
        return _extract(net, blobs, datasets, batches, backend)
    finally:
        net.close()


def _extract(net: Any, blobs: list[str], datasets: list[str], batches: int, backend: str) -> int:
    import torch

    with ExitStack() as stack:
        dbs: list[DBWriter] = []
        for path in datasets:
            log.info("Opening dataset %s", path)
            dbs.append(stack.enter_context(DBWriter(path, backend, commit_every=COMMIT_EVERY)))
        log.error("Extracting Features")
        with Progress(batches, "extract_features", "batches", log) as bar:
            for _ in range(batches):
                with torch.no_grad():
                    net.forward()
                for name, db in zip(blobs, dbs):
                    _write_batch(db, name, *_features(net, name))
                bar.update()
    for name, db in zip(blobs, dbs):  # each closed (its last records committed) as the stack unwound
        log.error("Extracted features of %d query images for feature blob %s", db.written, name)
    log.error("Successfully extracted the features!")
    return dbs[0].written if dbs else 0


def run(argv: list[str]) -> int:
    """The tool on ``argv`` (without the program name); returns the exit status."""
    if not 6 <= len(argv) <= 8:
        log.error("%s", USAGE)
        return 1
    try:
        extract_features(*argv)
    except (ValueError, OSError, RuntimeError) as e:
        log.critical("%s", e)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (returns the exit status); logs glog lines to stderr as Caffe's tool."""
    with glog_to_stderr():
        return run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
