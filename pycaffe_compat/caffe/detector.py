"""``caffe.Detector``: classify windows of images, warped to the net's input, optionally with
context padding as in R-CNN (pycaffe's ``caffe/detector.py``).

``detect_selective_search`` needs the external ``selective_search_ijcv_with_python`` module
(and MATLAB), as in pycaffe; ``detect_windows`` needs nothing else.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np

from caffe import io as caffe_io
from caffe._mode import TEST
from caffe._net import Net
from caffe.classifier import input_transformer

__all__ = ["Detector"]


class Detector(Net):
    """``Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
    channel_swap=None, context_pad=None)``: a TEST-phase net whose first input takes windows.

    ``context_pad``: pixels of context (in the net's input) kept around each window; the
    enlarged box is warped so the window fills the input minus the padding, and parts of the
    box outside the image are filled with the mean (in unprocessed image space).
    """

    def __init__(self, model_file: str, pretrained_file: str, mean: np.ndarray | None = None,
                 input_scale: float | None = None, raw_scale: float | None = None,
                 channel_swap: Sequence[int] | None = None, context_pad: int | None = None) -> None:
        Net.__init__(self, model_file, pretrained_file, TEST)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows: Iterable[tuple[str, Sequence[Sequence[int]]]]) -> list[dict[str, Any]]:
        """Classify windows (ymin, xmin, ymax, xmax) of image files: returns one
        ``{'window', 'prediction', 'filename'}`` dict per window, in order."""
        images_windows = list(images_windows)
        crops = []
        for filename, windows in images_windows:
            image = caffe_io.load_image(filename).astype(np.float32)
            crops.extend(self.crop(image, np.asarray(window)) for window in windows)
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(crops), crops[0].shape[2]) + tuple(self.blobs[in_].data.shape[2:]),
                            dtype=np.float32)
        for i, crop in enumerate(crops):
            caffe_in[i] = self.transformer.preprocess(in_, crop)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        detections = []
        k = 0
        for filename, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[k], "filename": filename})
                k += 1
        return detections

    def detect_selective_search(self, image_fnames: Sequence[str]) -> list[dict[str, Any]]:
        """Detect over Selective Search proposals (needs selective_search_ijcv_with_python)."""
        try:
            import selective_search_ijcv_with_python as selective_search  # type: ignore[import-not-found]
        except ImportError as e:
            raise ImportError(
                "Detector.detect_selective_search needs the selective_search_ijcv_with_python module "
                "(https://github.com/sergeyk/selective_search_ijcv_with_python) and MATLAB"
            ) from e
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows_list = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows_list))

    def crop(self, im: np.ndarray, window: Sequence[int]) -> np.ndarray:
        """The window's pixels (H x W x K); with context padding, the enlarged box warped into an
        input-sized crop, mean-filled where the box leaves the image."""
        window = np.asarray(window)
        crop = im[int(window[0]):int(window[2]), int(window[1]):int(window[3])]
        if not self.context_pad:
            return crop
        box = window.astype(np.float64)
        crop_size = self.blobs[self.inputs[0]].width  # square inputs, as in pycaffe
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        half_h = (box[2] - box[0] + 1) / 2.0
        half_w = (box[3] - box[1] + 1) / 2.0
        center = np.array([box[0] + half_h, box[1] + half_w])
        box = np.round(np.tile(center, 2) + scale * np.array([-half_h, -half_w, half_h, half_w]))
        full_h = box[2] - box[0] + 1
        full_w = box[3] - box[1] + 1
        scale_h = crop_size / full_h
        scale_w = crop_size / full_w
        pad_y = int(round(max(0.0, -box[0]) * scale_h))  # rows of the box above the image
        pad_x = int(round(max(0.0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h = box[2] - box[0] + 1
        clip_w = box[3] - box[1] + 1
        if not (clip_h > 0 and clip_w > 0):
            raise ValueError(f"Detector.crop: window {window.tolist()} lies outside the {im_h}x{im_w} image")
        crop_h = int(round(clip_h * scale_h))
        crop_w = int(round(clip_w * scale_w))
        crop_h = min(crop_h, crop_size - pad_y)
        crop_w = min(crop_w, crop_size - pad_x)
        context = im[int(box[0]):int(box[2]), int(box[1]):int(box[3])]
        context = caffe_io.resize_image(context, (crop_h, crop_w))
        out = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return out

    def configure_crop(self, context_pad: int | None) -> None:
        """Set ``crop_dims`` (the input's H x W x K) and, for context padding, ``crop_mean``:
        the mean in image space (untransposed, channels unswapped, divided by raw_scale)."""
        in_ = self.inputs[0]
        inverse = np.argsort(self.transformer.transpose[in_])
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inverse]
        self.context_pad = context_pad
        if not self.context_pad:
            return
        channel_order = self.transformer.channel_swap.get(in_)
        raw_scale = self.transformer.raw_scale.get(in_)
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = np.array(mean, dtype=np.float64).transpose(inverse)
        if channel_order is not None:
            crop_mean = crop_mean[:, :, np.argsort(channel_order)]
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean
