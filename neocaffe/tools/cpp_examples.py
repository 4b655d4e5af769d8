"""What BVLC's and SSD's C++ examples (``examples/cpp_classification/classification.cpp``,
``examples/ssd/ssd_detect.cpp``) share, for their ports ``classification`` and ``ssd_detect``: a TEST net with
one input and one output, Caffe's ``SetMean`` from a mean file, the image read unchanged and converted to the
net's channels, resized (bilinear), mean-subtracted (``Preprocess``), and the device choice.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from neocaffe.data.datum import imread

__all__ = ["ClassificationError", "ERRORS", "ExampleNet", "legacy_dim", "read_mean_values", "imread_unchanged",
           "image_channels", "convert_channels", "preprocess", "select_device"]

log = logging.getLogger("neocaffe.tools.cpp_examples")

TEST = 1

# (image channels, net channels) -> the cv::cvtColor code Caffe's Preprocess uses; other pairs pass unchanged
CONVERSIONS = {
    (3, 1): cv2.COLOR_BGR2GRAY,
    (4, 1): cv2.COLOR_BGRA2GRAY,
    (4, 3): cv2.COLOR_BGRA2BGR,
    (1, 3): cv2.COLOR_GRAY2BGR,
}


class ClassificationError(ValueError):
    """A file the classifier cannot use; the message names it, what it holds and what was expected."""


# what the C++ example ports report as one error line (exit status 1) rather than a traceback
ERRORS = (ClassificationError, OSError, ValueError, RuntimeError, KeyError)


def legacy_dim(shape: Sequence[int], index: int, what: str) -> int:
    """Caffe's ``Blob::LegacyShape(index)``: the axis' size, 1 past the last axis; at most 4 axes."""
    if len(shape) > 4:
        raise ClassificationError(f"{what} has shape {tuple(shape)}; expected at most 4 axes (N x C x H x W)")
    return int(shape[index]) if index < len(shape) else 1


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


def select_device(env: str) -> torch.device:
    """CUDA device ``$<env>`` when it is set (not -1) and exists, else the CPU."""
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
