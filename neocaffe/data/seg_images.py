"""Batches of image + segmentation pairs for DeepLab's ``ImageSegData`` layer (PSPNet's copy of it).

Semantics from hszhao/PSPNet @ 798bdc9 (DeepLab v2's caffe): ``src/caffe/layers/image_seg_data_layer.cpp``
(the list, the reading, the ``data_dim`` top) and ``src/caffe/data_transformer.cpp``'s
``TransformImgAndSeg`` (scale, pad, crop, mirror). Per item, in the fork's order:

1. the image is read with ``cv2.imread`` (colour or gray) and resized to ``new_height`` x ``new_width``
   when set (bilinear); its label image is read gray and resized the same way (bilinear too: the fork
   reads both through ``ReadImageToCVMat``). ``label_type`` IMAGE makes the label a constant image of
   the line's integer label, NONE one of ``ignore_label`` (both saturated to 0..255, as OpenCV fills a
   CV_8UC1 image); ``data_dim`` records the size read, clipped to the top's size;
2. one of ``scale_factors`` (drawn uniformly, in every phase) scales both, the image bilinear and the
   label nearest-neighbour, to ``int(H * s)`` x ``int(W * s)`` (float arithmetic, truncated);
3. an image smaller than the crop is padded at the bottom and right: the label with ``ignore_label``,
   the image with the mean (so those pixels are exactly 0 after mean subtraction and scaling: the
   batch records each item's unpadded extent and the layer zeroes the rest);
4. one crop window for both: random in TRAIN, central in TEST;
5. both mirrored left-right at random (``transform_param.mirror``, in every phase).

The images stay uint8 for the layer's transformer (mean_value, scale on the device); the labels keep
their pixel values as float32 (N, 1, h, w). Without a crop every item of a batch must have the same
size (the fork writes each item into the first image's shape).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from neocaffe.data.batches import ListBatchMaker
from neocaffe.data.datum import DatumError, chw_to_hwc, hwc_to_chw
from neocaffe.data.sources import DataSourceError
from neocaffe.data.transformer import DataTransformer

__all__ = ["LABEL_NONE", "LABEL_IMAGE", "LABEL_PIXEL", "SegEntry", "read_seg_list", "SegBatchMaker"]

LABEL_NONE, LABEL_IMAGE, LABEL_PIXEL = 0, 1, 2  # ImageDataParameter.LabelType


@dataclass(frozen=True)
class SegEntry:
    """One list line: the image path, the label (a label image's path for PIXEL, an integer for IMAGE,
    nothing for NONE) and the line number."""

    image: str
    label: str | int | None
    line: int


def read_seg_list(path: str, label_type: int, what: str = "image_data_param.source") -> list[SegEntry]:
    """``<image> <label image>`` (PIXEL), ``<image> <integer label>`` (IMAGE) or ``<image>`` (NONE) per
    line; blank lines are skipped, any other line of the wrong form is an error naming ``path:line``."""
    if not os.path.isfile(path):
        raise DataSourceError(f"{what}: no such list file: '{path}' (cwd {os.getcwd()})")
    form = {LABEL_NONE: "'<image file>'", LABEL_IMAGE: "'<image file> <integer label>'",
            LABEL_PIXEL: "'<image file> <label image file>'"}[label_type]
    out: list[SegEntry] = []
    with open(path, "r", encoding="utf-8", errors="surrogateescape") as f:
        for no, raw in enumerate(f.read().splitlines(), 1):
            parts = raw.split()
            if not parts:
                continue
            n = 1 if label_type == LABEL_NONE else 2
            label: str | int | None = None
            if len(parts) != n:
                raise DataSourceError(f"{path}:{no}: expected {form}; received '{raw}'")
            if label_type == LABEL_PIXEL:
                label = parts[1]
            elif label_type == LABEL_IMAGE:
                try:
                    label = int(parts[1])
                except ValueError:
                    raise DataSourceError(f"{path}:{no}: expected {form}; received label '{parts[1]}'") from None
            out.append(SegEntry(parts[0], label, no))
    if not out:
        raise DataSourceError(f"{what}: list file '{path}' names no images")
    return out


def _u8(value: int) -> int:
    """OpenCV's saturate_cast of an integer fill value into a CV_8UC1 image."""
    return min(max(int(value), 0), 255)


class SegBatchMaker(ListBatchMaker):
    """See the module docstring. ``crop``: (height, width), (0, 0) for none; ``scale_factors`` as listed
    in ``transform_param``; ``mirror``: ``transform_param.mirror``; ``train``: random crops."""

    def __init__(self, list_file: str, entries: Sequence[SegEntry], root: str, new_size: tuple[int, int],
                 is_color: bool, label_type: int, ignore_label: int, crop: tuple[int, int],
                 scale_factors: Sequence[float], mirror: bool, train: bool, batch_size: int,
                 transformer: DataTransformer, seed: int, shuffle: bool = False, skip: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        super().__init__(list_file, entries, root, batch_size, transformer, seed, shuffle, skip, rank, world)
        self.new_size, self.is_color = (int(new_size[0]), int(new_size[1])), bool(is_color)
        self.label_type, self.ignore = int(label_type), _u8(ignore_label)
        self.crop = (int(crop[0]), int(crop[1]))
        self.scale_factors = np.asarray(list(scale_factors), np.float32)
        self.mirror, self.train = bool(mirror), bool(train)

    def load(self, e: SegEntry) -> tuple[np.ndarray, np.ndarray]:
        """The image (C x H x W) and its label image (1 x H x W), uint8, as read and resized."""
        h, w = self.new_size
        img = self.read(e, e.image, height=h, width=w, is_color=self.is_color)
        if self.label_type == LABEL_PIXEL:
            lab = self.read(e, str(e.label), "label image", height=h, width=w, is_color=False)
            if lab.shape[1:] != img.shape[1:]:
                raise DatumError(f"{self.list_file}:{e.line}: image '{e.image}' is {img.shape[1]}x{img.shape[2]} "
                                 f"but its label image '{e.label}' is {lab.shape[1]}x{lab.shape[2]}; "
                                 f"they must have the same size")
        else:
            fill = _u8(int(e.label)) if self.label_type == LABEL_IMAGE else self.ignore  # type: ignore[arg-type]
            lab = np.full((1,) + img.shape[1:], fill, np.uint8)
        return img, lab

    def _item(self, e: SegEntry, g: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[int, int],
                                                                 tuple[int, int], bool]:
        """One item transformed: image, label, its size as read, its unpadded extent in the window
        (rows, columns, before mirroring) and the mirror flag."""
        img, lab = self.load(e)
        read_size = (img.shape[1], img.shape[2])
        flip = bool(self.mirror and g.integers(0, 2))
        if len(self.scale_factors):
            s = self.scale_factors[int(g.integers(0, len(self.scale_factors)))]
            if s != 1:
                size = (int(np.float32(img.shape[2]) * s), int(np.float32(img.shape[1]) * s))  # (w, h)
                if min(size) < 1:
                    raise DatumError(f"{self.list_file}:{e.line}: scale factor {float(s)} makes image '{e.image}' "
                                     f"({img.shape[1]}x{img.shape[2]}) empty")
                img = hwc_to_chw(cv2.resize(chw_to_hwc(img), size, interpolation=cv2.INTER_LINEAR))
                lab = cv2.resize(lab[0], size, interpolation=cv2.INTER_NEAREST)[None]
        h, w = img.shape[1:]
        ch, cw = self.crop
        if ch:
            ph, pw = max(ch - h, 0), max(cw - w, 0)
            if ph or pw:
                img = np.pad(img, ((0, 0), (0, ph), (0, pw)))
                lab = np.pad(lab, ((0, 0), (0, ph), (0, pw)), constant_values=self.ignore)
            H, W = img.shape[1:]
            if self.train:
                h0, w0 = int(g.integers(0, H - ch + 1)), int(g.integers(0, W - cw + 1))
            else:
                h0, w0 = (H - ch) // 2, (W - cw) // 2
            img, lab = img[:, h0:h0 + ch, w0:w0 + cw], lab[:, h0:h0 + ch, w0:w0 + cw]
            extent = (min(ch, h - h0), min(cw, w - w0))
        else:
            extent = (h, w)
        if flip:
            img, lab = img[:, :, ::-1], lab[:, :, ::-1]
        return img, lab, read_size, extent, flip

    def make(self, k: int) -> dict:
        """Batch ``k``: ``data`` (N, C, h, w) uint8, ``labels`` (N, 1, h, w) float32, ``dims`` (N, 2)
        the sizes read clipped to (h, w), ``extent`` (N, 2) each item's unpadded rows and columns,
        ``mirror`` (N,), ``offsets`` (zeros: no mean file)."""
        k, entries = self.batch_entries(k)
        g = np.random.default_rng([self.seed, k])
        items = [self._item(e, g) for e in entries]
        c, h, w = items[0][0].shape
        for e, it in zip(entries[1:], items[1:]):
            if it[0].shape != (c, h, w):
                raise DatumError(f"{self.list_file}:{e.line}: image '{e.image}' gives a {'x'.join(map(str, it[0].shape))} "
                                 f"item but the batch's first is {c}x{h}x{w}; without crop_size (or crop_height/"
                                 f"crop_width) every image must have the same size")
        n = len(items)
        data = self.alloc((n, c, h, w), np.uint8) if self.alloc is not None else np.empty((n, c, h, w), np.uint8)
        for i, it in enumerate(items):
            data[i] = it[0]
        return {
            "data": data,
            "labels": np.stack([it[1] for it in items]).astype(np.float32),
            "dims": np.asarray([[min(h, it[2][0]), min(w, it[2][1])] for it in items], np.float32),
            "extent": np.asarray([it[3] for it in items], np.int64),
            "mirror": np.asarray([it[4] for it in items], bool),
            "offsets": np.zeros((n, 2), np.int64),
        }
