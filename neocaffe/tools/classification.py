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

import cv2
import numpy as np
import torch
from torch import Tensor

from neocaffe.cli.log import run_logged
from neocaffe.data.datum import imread

log = logging.getLogger("neocaffe.tools.classification")

__all__ = ["ClassificationError", "ExampleNet", "Classifier", "read_labels", "read_mean_values", "imread_unchanged",
           "convert_channels", "preprocess", "top_n", "format_predictions", "select_device", "main"]

GPU_ENV = "NEOCAFFE_CLASSIFICATION_GPU"
TOP_N = 5
TEST = 1
USAGE_ARGS = " deploy.prototxt network.caffemodel mean.binaryproto labels.txt img.jpg"
# (image channels, net channels) -> the cv::cvtColor code Caffe's Preprocess uses; other pairs pass unchanged
CONVERSIONS = {
    (3, 1): cv2.COLOR_BGR2GRAY,
    (4, 1): cv2.COLOR_BGRA2GRAY,
    (4, 3): cv2.COLOR_BGRA2BGR,
    (1, 3): cv2.COLOR_GRAY2BGR,
}

Prediction = tuple[str, float]


class ClassificationError(ValueError):
    """A file the classifier cannot use; the message names it, what it holds and what was expected."""


# what the C++ example ports report as one error line (exit status 1) rather than a traceback
ERRORS = (ClassificationError, OSError, ValueError, RuntimeError, KeyError)


def legacy_dim(shape: Sequence[int], index: int, what: str) -> int:
    """Caffe's ``Blob::LegacyShape(index)``: the axis' size, 1 past the last axis; at most 4 axes."""
    if len(shape) > 4:
        raise ClassificationError(f"{what} has shape {tuple(shape)}; expected at most 4 axes (N x C x H x W)")
    return int(shape[index]) if index < len(shape) else 1


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


def read_mean_values(path: str, channels: int) -> np.ndarray:
    """Caffe's SetMean: the per-channel mean (float32, ``channels`` values) of the ``.binaryproto`` mean image
    at ``path``, whose channel count must be ``channels``."""
    from neocaffe.io.binaryproto import read_blobproto

    data = np.asarray(read_blobproto(path).data, np.float32)
    c, h, w = (legacy_dim(data.shape, i, f"{path}: the mean blob") for i in (1, 2, 3))
    if c != channels:
        raise ClassificationError(f"{path}: the mean has {c} channels; the net's input has {channels}. "
                                  "Number of channels of mean file doesn't match input layer.")
    if h * w == 0:
        raise ClassificationError(f"{path}: the mean blob of shape {tuple(data.shape)} holds no pixels")
    planes = data.reshape(-1)[: c * h * w].reshape(c, h, w)
    image = np.ascontiguousarray(planes.transpose(1, 2, 0)) if c > 1 else np.ascontiguousarray(planes[0])
    return np.array(cv2.mean(image)[:c], np.float32)  # cv::mean sums in double; the Mat stores float


def imread_unchanged(path: str) -> np.ndarray | None:
    """``cv::imread(path, -1)`` (IMREAD_UNCHANGED), also for names that are not UTF-8; None when the file
    cannot be read or decoded."""
    return imread(path, cv2.IMREAD_UNCHANGED)


def image_channels(img: np.ndarray) -> int:
    """The channel count of an OpenCV image (H x W is one channel)."""
    return 1 if img.ndim == 2 else int(img.shape[2])


def convert_channels(img: np.ndarray, channels: int, where: str = "image") -> np.ndarray:
    """Caffe's channel conversion of ``img`` (gray, BGR or BGRA) to the net's ``channels``."""
    code = CONVERSIONS.get((image_channels(img), channels))
    sample = cv2.cvtColor(img, code) if code is not None else img
    if image_channels(sample) != channels:
        raise ClassificationError(f"{where}: the image has {image_channels(img)} channels; the net's input takes "
                                  f"{channels} (1-, 3- and 4-channel images are converted)")
    return sample


def preprocess(img: np.ndarray, channels: int, height: int, width: int, mean: np.ndarray,
               where: str = "image") -> np.ndarray:
    """Caffe's Preprocess: the C x H x W float32 input for ``img`` (channels converted, resized bilinearly
    when its size differs, converted to float32, the per-channel ``mean`` subtracted)."""
    sample = convert_channels(img, channels, where)
    if sample.shape[:2] != (height, width):
        sample = cv2.resize(sample, (width, height))  # cv::resize's default: INTER_LINEAR
    sample = sample.astype(np.float32).reshape(height, width, channels)
    return np.ascontiguousarray((sample - mean.astype(np.float32)).transpose(2, 0, 1))


def top_n(scores: np.ndarray, n: int) -> list[int]:
    """Indices of the ``n`` highest scores, highest first (equal scores in index order)."""
    return [int(i) for i in np.argsort(-np.asarray(scores, np.float64), kind="stable")[:n]]


def format_predictions(predictions: Sequence[Prediction]) -> str:
    """Caffe's lines ``<score, fixed, 4 decimals> - "<label>"``, one per prediction."""
    return "".join(f'{float(score):.4f} - "{label}"\n' for label, score in predictions)


class ExampleNet:
    """What Caffe's C++ examples (classification, SSD's ssd_detect) share: a TEST-phase net with weights,
    exactly one input (1 or 3 channels) and one output; ``channels``, ``height``, ``width`` of the input."""

    def __init__(self, model_file: str, trained_file: str, device: torch.device | str = "cpu") -> None:
        from neocaffe.graph.net import Net
        from neocaffe.io.prototxt import read_net_with_source

        param, source = read_net_with_source(model_file)
        self.net = Net(param, TEST, source=source, device=device, keep_blob_diffs=False)
        self.net.copy_from(trained_file)
        net = self.net
        if len(net.inputs) != 1:
            raise ClassificationError(f"{model_file}: the net has {len(net.inputs)} input blobs "
                                      f"({', '.join(net.inputs) or 'none'}); Network should have exactly one input.")
        if len(net.outputs) != 1:
            raise ClassificationError(f"{model_file}: the net has {len(net.outputs)} output blobs "
                                      f"({', '.join(net.outputs) or 'none'}); Network should have exactly one output.")
        self.input, self.output = net.inputs[0], net.outputs[0]
        in_shape = net.blob_shapes[self.input]
        what = f"{model_file}: input blob '{self.input}'"
        self.channels = legacy_dim(in_shape, 1, what)
        if self.channels not in (1, 3):
            raise ClassificationError(f"{what} has {self.channels} channels (shape {tuple(in_shape)}); "
                                      "Input layer should have 1 or 3 channels.")
        self.height, self.width = legacy_dim(in_shape, 2, what), legacy_dim(in_shape, 3, what)
        net.set_blob(self.input, torch.zeros((1, self.channels, self.height, self.width)))
        net.reshape()

    def run(self, img: np.ndarray, mean: np.ndarray, where: str = "image") -> Tensor:
        """The output blob for ``img`` preprocessed as Caffe's examples do (see ``preprocess``)."""
        x = preprocess(img, self.channels, self.height, self.width, mean, where)
        with torch.no_grad():
            self.net.forward({self.input: torch.from_numpy(x[None])})
            return self.net.blob(self.output).detach()


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


def select_device(env: str = GPU_ENV) -> torch.device:
    """CUDA device ``$<env>`` (``NEOCAFFE_CLASSIFICATION_GPU``) when it is set (not -1) and exists, else the CPU."""
    value = os.environ.get(env, "").strip()
    if value in ("", "-1"):
        return torch.device("cpu")
    try:
        gpu = int(value)
    except ValueError:
        raise ClassificationError(f"{env}={value!r}: expected a CUDA device id (e.g. 0) or -1 for the CPU") from None
    if gpu < 0:
        return torch.device("cpu")
    if not torch.cuda.is_available() or gpu >= torch.cuda.device_count():
        log.warning("%s=%d: no such CUDA device (%d available); running on the CPU", env, gpu,
                    torch.cuda.device_count() if torch.cuda.is_available() else 0)
        return torch.device("cpu")
    return torch.device(f"cuda:{gpu}")


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
    classifier = Classifier(model_file, trained_file, mean_file, label_file, select_device())
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
