"""``caffe.Classifier``: a Net that classifies images, by its centre crop or by ten crops
(corners, centre and their mirrors) averaged, as pycaffe's ``caffe/classifier.py``."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from caffe import io as caffe_io
from caffe._mode import TEST
from caffe._net import Net

__all__ = ["Classifier", "input_transformer"]


def input_transformer(net: Net, mean: np.ndarray | None, input_scale: float | None, raw_scale: float | None,
                      channel_swap: Sequence[int] | None) -> caffe_io.Transformer:
    """The Transformer pycaffe's Classifier and Detector set up for ``net``'s first input: transpose
    to K x H x W, then the optional mean, input scale, raw scale and channel swap."""
    in_ = net.inputs[0]
    transformer = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer

class Classifier(Net):
    """``Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None)``: a TEST-phase net whose first input is fed images.

    Images (H x W x K, e.g. from ``caffe.io.load_image``) are resized to ``image_dims`` (default:
    the input's spatial size), cropped to the input size and preprocessed by ``self.transformer``
    (transpose to K x H x W, then channel swap, raw scale, mean, input scale).
    """

    def __init__(self, model_file: str, pretrained_file: str, image_dims: Sequence[int] | None = None,
                 mean: np.ndarray | None = None, input_scale: float | None = None,
                 raw_scale: float | None = None, channel_swap: Sequence[int] | None = None) -> None:
        Net.__init__(self, model_file, pretrained_file, TEST)
        in_ = self.inputs[0]
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        if image_dims is None or len(image_dims) == 0:
            image_dims = self.crop_dims
        self.image_dims = image_dims

    def predict(self, inputs: Sequence[np.ndarray], oversample: bool = True) -> np.ndarray:
        """Class probabilities (N x C) of the first output for N images; ``oversample`` averages
        the ten crops' predictions, otherwise only the centre crop is used."""
        in_ = self.inputs[0]
        h, w = int(self.image_dims[0]), int(self.image_dims[1])
        resized = np.zeros((len(inputs), h, w, inputs[0].shape[2]), dtype=np.float32)
        for i, image in enumerate(inputs):
            resized[i] = caffe_io.resize_image(image, (h, w))
        if oversample:
            crops = caffe_io.oversample(resized, self.crop_dims)
        else:
            ch, cw = (float(d) for d in self.crop_dims)
            top, left = int(h / 2.0 - ch / 2.0), int(w / 2.0 - cw / 2.0)
            bottom, right = int(h / 2.0 + ch / 2.0), int(w / 2.0 + cw / 2.0)
            crops = resized[:, top:bottom, left:right, :]
        caffe_in = np.zeros((crops.shape[0], crops.shape[3], crops.shape[1], crops.shape[2]), dtype=np.float32)
        for i, crop in enumerate(crops):
            caffe_in[i] = self.transformer.preprocess(in_, crop)
        out = self.forward_all(**{in_: caffe_in})
        predictions = out[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions

    def __repr__(self) -> str:
        return f"<caffe.Classifier inputs={self.inputs} outputs={self.outputs}>"
