"""extract_image_features: C3D-v1.0's feature extractor, one binary blob file per clip and feature blob
(facebookarchive/C3D @ 71336a2, ``C3D-v1.0/tools/extract_image_features.cpp``; the files are its
``save_blob_to_binary`` of ``src/caffe/util/image_io.cpp``; same positional arguments).

    extract_image_features <feature_extractor_prototxt_file> <c3d_pre_trained_model> <gpu_id> \\
        <mini_batch_size> <number_of_mini_batches> <output_prefix_file> <feature_name1> [<feature_name2> ...]

As the fork's tool: the net is built in the TEST phase (its data layer, C3D's ``VideoData``, reads the clip
list), the weights copied in by layer name (a C3D ``.caffemodel`` of 5-D blobs loads as it is), ``gpu_id``
>= 0 runs on that CUDA device and a negative one on the CPU. For each of ``number_of_mini_batches`` forward
passes it reads the next ``mini_batch_size`` lines of ``output_prefix_file`` (one output prefix per clip;
it stops when the file has none left) and writes, for each feature blob and each item ``n`` of the blob's
batch that has a prefix, ``<prefix>.<feature_name>``: five int32 (1, channels, length, height, width: the
blob's C3D dims, our 2-D ``fc6-1`` of shape (N, 4096) being the fork's N x 4096 x 1 x 1 x 1) and then the
item's values as float32, in the machine's byte order (the fork's ``fwrite``; its
``read_binary_blob.m`` reads them, as does :func:`read_c3d_blob` here). The log lines keep the fork's words
and its ERROR severity (``Using CPU``, ``Extracting features for N batches``, ``Extracted features of N
images.`` every 100 batches, ``Successfully extracted N features!``).

Ours, where the fork goes on silently or crashes: an output file that cannot be written (its folder
missing; the fork ignores fopen's failure) is an error naming it; a ``gpu_id`` with no such device, a
count that is not an integer, and a feature blob of more than five axes are errors. Errors are one ``F``
line; exit status 1.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Sequence

import numpy as np

from neocaffe.cli.log import glog_to_stderr

__all__ = ["ExtractImageFeaturesError", "extract_image_features", "c3d_dims", "write_c3d_blob", "read_c3d_blob",
           "main", "USAGE"]

log = logging.getLogger("neocaffe.tools.extract_image_features")

USAGE = ("\nUsage: extract_image_features.bin <feature_extractor_prototxt_file> <c3d_pre_trained_model> <gpu_id> "
         "<mini_batch_size> <number_of_mini_batches> <output_prefix_file> feature_name1> [<feature_name2>, ..]\n")


class ExtractImageFeaturesError(ValueError):
    """The tool cannot run as asked; the message names the argument, what was received and expected."""


def c3d_dims(name: str, shape: Sequence[int]) -> tuple[int, int, int, int, int]:
    """A blob's dims as C3D-v1.0's (num, channels, length, height, width): trailing axes of 1 added (our
    (N, 4096) is the fork's N x 4096 x 1 x 1 x 1; a scalar is 1 x 1 x 1 x 1 x 1)."""
    if len(shape) > 5:
        raise ExtractImageFeaturesError(f"feature blob '{name}' has {len(shape)} axes (shape {tuple(shape)}); "
                                        "C3D's blobs have at most 5 (num, channels, length, height, width)")
    dims = [int(d) for d in shape] or [1]
    return tuple(dims + [1] * (5 - len(dims)))  # type: ignore[return-value]


def write_c3d_blob(path: str, item: np.ndarray, dims: Sequence[int]) -> None:
    """save_blob_to_binary with ``num_index`` >= 0: the header (1, c, l, h, w) as int32, then the floats."""
    header = np.asarray([1, *dims[1:]], dtype=np.int32)
    try:
        with open(path, "wb") as f:
            f.write(header.tobytes())
            f.write(np.ascontiguousarray(item, dtype=np.float32).tobytes())
    except OSError as e:
        raise ExtractImageFeaturesError(f"cannot write feature file '{path}' ({e.strerror or e}); the fork's "
                                        "scripts create the output folders first (mkdir -p)") from None


def read_c3d_blob(path: str) -> np.ndarray:
    """A blob file of C3D's save_blob_to_binary (as its ``read_binary_blob.m``): the values, shaped
    (num, channels, length, height, width)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size < 20:
        raise ValueError(f"{path}: {raw.size} bytes; a C3D blob file starts with 5 int32 dims")
    dims = tuple(int(d) for d in raw[:20].view(np.int32))
    data = raw[20:].view(np.float32)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: dims {dims} need {int(np.prod(dims))} floats; the file holds {data.size}")
    return data.reshape(dims)


def _count(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ExtractImageFeaturesError(f"{what}: expected an integer. Received: '{text}'") from None


def _device(gpu_id: int) -> str:
    if gpu_id < 0:
        log.error("Using CPU")
        return "cpu"
    log.error("Using GPU #%d", gpu_id)
    import torch

    if not torch.cuda.is_available() or gpu_id >= torch.cuda.device_count():
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ExtractImageFeaturesError(f"gpu_id {gpu_id}: this machine has {have} CUDA device(s); give a "
                                        "negative gpu_id to run on the CPU")
    return f"cuda:{gpu_id}"


def _build_net(proto: str, weights: str, device: str) -> Any:
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net_with_source
    from neocaffe.layers.base import TEST

    net_param, source = read_net_with_source(proto)
    net = Net(net_param, TEST, source=source, device=device, keep_blob_diffs=False)
    net.copy_from(weights)
    return net


def extract_image_features(proto: str, weights: str, gpu_id: str, mini_batch_size: str,
                           number_of_mini_batches: str, prefix_file: str, *features: str) -> int:
    """Run the tool (see the module docstring); return the number of clips whose features were written."""
    import torch

    batch_size = _count(mini_batch_size, "mini_batch_size")
    batches = _count(number_of_mini_batches, "number_of_mini_batches")
    device = _device(_count(gpu_id, "gpu_id"))
    net = _build_net(proto, weights, device)
    try:
        for name in features:
            if name not in net.blob_names:
                raise ExtractImageFeaturesError(f"Unknown feature blob name {name} in the network {proto}; its "
                                                f"blobs: {', '.join(net.blob_names)}")
        log.error("Extracting features for %d batches", batches)
        done = 0
        with open(prefix_file, encoding="utf-8") as listing:
            prefixes = iter(listing.read().split())
            for batch_index in range(batches):
                with torch.no_grad():
                    net.forward()
                names = [p for _, p in zip(range(batch_size), prefixes)]
                if not names:
                    break
                for feature in features:
                    value = net.blob(feature).detach().to("cpu", torch.float32)
                    dims = c3d_dims(feature, tuple(value.shape))
                    items = value.reshape(dims[0], -1).numpy()
                    for n in range(min(dims[0], len(names))):
                        write_c3d_blob(f"{names[n]}.{feature}", items[n], dims)
                done += len(names)
                if batch_index % 100 == 0:
                    log.error("Extracted features of %d images.", done)
    finally:
        net.close()
    log.error("Successfully extracted %d features!", done)
    return done


def run(argv: list[str]) -> int:
    """The tool on ``argv`` (without the program name); returns the exit status."""
    if len(argv) < 6:
        log.error("%s", USAGE)
        return 1
    try:
        extract_image_features(*argv)
    except (ValueError, OSError, RuntimeError) as e:
        log.critical("%s", e)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (returns the exit status); logs glog lines to stderr as the fork's tool."""
    with glog_to_stderr():
        return run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
