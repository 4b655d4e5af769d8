"""classification: classify one image with a trained net and print its top 5 classes, as BVLC Caffe's
C++ example ``examples/cpp_classification/classification.cpp`` (built as ``classification.bin``).

    classification deploy.prototxt network.caffemodel mean.binaryproto labels.txt img.jpg

Any other number of arguments prints Caffe's usage line to stderr and exits with status 1. Then, as Caffe:

- the net is built in the TEST phase and the weights are copied in; it must have exactly one input and one
  output blob, and the input 1 or 3 channels (Caffe's legacy ``channels``/``height``/``width`` of the blob);
- the mean ``.binaryproto`` must have the input's channel count; its per-channel mean (``cv::mean`` of the
  mean image, in double, stored as float) is subtracted from every pixel: the mean's own size is irrelevant;
- ``labels.txt`` holds one label per line (``std::getline``: a trailing ``\\r`` stays part of the label);
  their count must equal the output blob's channels;
- the image is read as ``cv::imread(file, -1)`` (IMREAD_UNCHANGED: gray, BGR or BGRA, no EXIF rotation)
  and converted to the input's channels with the same ``cv::cvtColor`` codes (BGR2GRAY, BGRA2GRAY, BGRA2BGR,
  GRAY2BGR), resized with ``cv::resize`` (bilinear) when its size differs from the input's, converted to
  float32, the mean subtracted, split into planes and fed as a batch of one;
- stdout gets ``---------- Prediction for <img> ----------`` (printed before the image is read, as Caffe
  does) and the top ``min(5, #labels)`` classes as ``0.3134 - "n02123045 tabby, tabby cat"``
  (``std::fixed``, 4 decimals), highest score first.

Differences from Caffe:

- Device: Caffe's example runs on the GPU whenever Caffe was built with CUDA. This tool runs on the CPU
  unless ``NEOCAFFE_CLASSIFICATION_GPU=<device id>`` is set *and* that CUDA device exists (otherwise a
  warning and the CPU). On CUDA it computes in IEEE float32 (no TF32), as Caffe.
- Failures are one ``E`` log line on stderr naming the file, what it holds and what was expected, and exit
  status 1, where Caffe's CHECKs abort the process (``F`` line, SIGABRT).
- Equal scores are listed in class order (a stable sort); Caffe's ``std::partial_sort`` leaves their order
  unspecified.
- An image whose channels cannot be converted (e.g. 2-channel) is a clear error; Caffe fails inside
  ``cv::subtract``.
- Net construction logs glog INFO lines to stderr (``GLOG_minloglevel`` as for the other tools); Caffe's
  example leaves glog at its default (INFO to log files only).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

import numpy as np
import torch

from neocaffe.cli.log import run_logged
from neocaffe.tools.cpp_examples import (ERRORS, ClassificationError, ExampleNet, convert_channels, imread_unchanged,
                                         legacy_dim, preprocess, read_mean_values, select_device)

log = logging.getLogger("neocaffe.tools.classification")

__all__ = ["ClassificationError", "ExampleNet", "Classifier", "read_labels", "read_mean_values", "imread_unchanged",
           "convert_channels", "preprocess", "top_n", "format_predictions", "select_device", "main"]

GPU_ENV = "NEOCAFFE_CLASSIFICATION_GPU"
TOP_N = 5
USAGE_ARGS = " deploy.prototxt network.caffemodel mean.binaryproto labels.txt img.jpg"
Prediction = tuple[str, float]


def read_labels(path: str) -> list[str]:
    """The lines of ``path`` as ``std::getline`` reads them (split at ``\\n`` only; no empty last line for
    a final newline), decoded as UTF-8 with undecodable bytes kept (surrogateescape)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ClassificationError(f"Unable to open labels file {path}: {e.strerror or e}") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.decode("utf-8", "surrogateescape") for line in lines]


def top_n(scores: np.ndarray, n: int) -> list[int]:
    """Indices of the ``n`` highest scores, highest first (equal scores in index order)."""
    return [int(i) for i in np.argsort(-np.asarray(scores, np.float64), kind="stable")[:n]]


def format_predictions(predictions: Sequence[Prediction]) -> str:
    """Caffe's lines ``<score, fixed, 4 decimals> - "<label>"``, one per prediction."""
    return "".join(f'{float(score):.4f} - "{label}"\n' for label, score in predictions)


class Classifier(ExampleNet):
    """Caffe's example Classifier: an ``ExampleNet`` with the mean and the labels, checked against each
    other; ``classify(img)`` gives the top predictions as (label, score) pairs."""

    def __init__(self, model_file: str, trained_file: str, mean_file: str, label_file: str,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(model_file, trained_file, device)
        self.mean = read_mean_values(mean_file, self.channels)
        self.labels = read_labels(label_file)
        out_shape = self.net.blob_shapes[self.output]
        out_channels = legacy_dim(out_shape, 1, f"{model_file}: output blob '{self.output}'")
        if len(self.labels) != out_channels:
            raise ClassificationError(
                f"{label_file}: {len(self.labels)} labels; the net's output blob '{self.output}' (shape "
                f"{tuple(out_shape)}) has {out_channels} channels. Number of labels is different from the "
                "output layer dimension.")

    def predict(self, img: np.ndarray, where: str = "image") -> np.ndarray:
        """The output blob's first ``channels`` values (float32) for ``img``."""
        out = self.run(img, self.mean, where).reshape(-1).cpu().numpy()
        return out[: legacy_dim(self.net.blob_shapes[self.output], 1, self.output)].astype(np.float32)

    def classify(self, img: np.ndarray, n: int = TOP_N, where: str = "image") -> list[Prediction]:
        """The top ``min(n, #labels)`` (label, score) pairs for ``img``, highest score first."""
        scores = self.predict(img, where)
        return [(self.labels[i], float(scores[i])) for i in top_n(scores, min(n, len(self.labels)))]


def _emit(text: str) -> None:
    """Write ``text`` to stdout byte for byte: file names and labels that are not UTF-8 come out as given."""
    out = sys.stdout
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        out.write(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
        out.flush()
        return
    out.flush()
    buffer.write(text.encode("utf-8", "surrogateescape"))
    buffer.flush()


def run(model_file: str, trained_file: str, mean_file: str, label_file: str, file: str) -> None:
    """The example's main: build the classifier, print the header, read and classify ``file``, print."""
    classifier = Classifier(model_file, trained_file, mean_file, label_file, select_device(GPU_ENV))
    _emit(f"---------- Prediction for {file} ----------\n")
    img = imread_unchanged(file)
    if img is None or img.size == 0:
        reason = "no such file" if not os.path.exists(file) else "not an image OpenCV can decode"
        raise ClassificationError(f"Unable to decode image {file} ({reason})")
    _emit(format_predictions(classifier.classify(img, TOP_N, where=file)))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``classification deploy.prototxt network.caffemodel mean.binaryproto
    labels.txt img.jpg``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 5:
        prog = sys.argv[0] if argv is None and sys.argv and sys.argv[0] else "classification"
        sys.stderr.write(f"Usage: {prog}{USAGE_ARGS}\n")
        return 1
    return run_logged(lambda: run(*args), ERRORS, log)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
