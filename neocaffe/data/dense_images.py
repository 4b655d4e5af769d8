"""Batches of image + label-image pairs for SegNet's ``DenseImageData`` layer (its list file, reading,
resizing, mirroring and cropping: alexgkendall/caffe-segnet ``dense_image_data_layer.cpp``).

Batch ``k`` is a pure function of ``k`` and the seed (as ``batches.py``): items ``skip + k * B + i`` of
the pass order (list order, or a permutation per pass with ``shuffle``), each image read with
``cv2.imread`` (colour or gray), the label image as gray; resized with bilinear (image) and nearest
neighbour (label) interpolation to ``new_height x new_width`` when set; both mirrored left-right at
random with ``mirror``; both cut at one random ``crop_height x crop_width`` window (in every phase, as
the fork). The images stay uint8 for the layer's transformer (mean, scale); the labels keep their
pixel values as float32 (N, 1, h, w). ``label_divide`` (TimoSaemann/caffe-enet's ``label_divide_factor``
``f``): the label image is resized to ``new_height // f x new_width // f`` (nearest neighbour), or must
already be ``H // f x W // f`` of its ``H x W`` image when no resize is set.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from neocaffe.data.batches import ListBatchMaker
from neocaffe.data.datum import DatumError
from neocaffe.data.seg_images import LABEL_PIXEL, SegEntry, read_seg_list
from neocaffe.data.transformer import DataTransformer, HostBatch

__all__ = ["read_pair_list", "DenseImageBatchMaker"]


def read_pair_list(path: str, what: str = "dense_image_data_param.source") -> list[SegEntry]:
    """``<image file> <label image file>`` per line (the fork reads whitespace-separated pairs; file
    names hold no spaces): ImageSegData's PIXEL list. Blank lines are skipped; any other line without
    exactly two names is an error naming ``path:line``."""
    return read_seg_list(path, LABEL_PIXEL, what)


class DenseImageBatchMaker(ListBatchMaker):
    """See the module docstring. ``crop``: (crop_height, crop_width), (0, 0) for none."""

    def __init__(self, list_file: str, entries: Sequence[SegEntry], root: str, new_size: tuple[int, int],
                 is_color: bool, crop: tuple[int, int], mirror: bool, batch_size: int,
                 transformer: DataTransformer, seed: int, shuffle: bool = False, skip: int = 0,
                 rank: int = 0, world: int = 1, label_divide: int = 1) -> None:
        super().__init__(list_file, entries, root, batch_size, transformer, seed, shuffle, skip, rank, world)
        self.new_size, self.is_color = (int(new_size[0]), int(new_size[1])), bool(is_color)
        self.crop, self.mirror = (int(crop[0]), int(crop[1])), bool(mirror)
        self.label_divide = int(label_divide)

    def _read(self, e: SegEntry, name: str, label: bool) -> np.ndarray:
        h, w = self.new_size
        if not label:
            return self.read(e, name, height=h, width=w, is_color=self.is_color)
        # gray, nearest neighbour (the fork's ReadImageToCVMat(..., false, true))
        lab = self.read(e, name, "label image", is_color=False)
        h, w = h // self.label_divide, w // self.label_divide
        return cv2.resize(lab[0], (w, h), interpolation=cv2.INTER_NEAREST)[None] if h > 0 and w > 0 else lab

    def load(self, e: SegEntry) -> tuple[np.ndarray, np.ndarray]:
        """The pair as C x H x W and 1 x H x W uint8, resized, checked to agree in size."""
        img, lab = self._read(e, e.image, False), self._read(e, e.label, True)
        f = self.label_divide
        want = (img.shape[1] // f, img.shape[2] // f)
        if lab.shape[1:] != want:
            by = f" / label_divide_factor {f}" if f != 1 else ""
            raise DatumError(f"{self.list_file}:{e.line}: image '{e.image}' is {img.shape[1]}x{img.shape[2]}, so its "
                             f"label image must be {want[0]}x{want[1]}{by}; label image '{e.label}' is "
                             f"{lab.shape[1]}x{lab.shape[2]}")
        ch, cw = self.crop
        if ch and (img.shape[1] < ch or img.shape[2] < cw):
            raise DatumError(f"{self.list_file}:{e.line}: crop {ch}x{cw} is larger than image '{e.image}' "
                             f"({img.shape[1]}x{img.shape[2]})")
        return img, lab

    def make(self, k: int) -> HostBatch:
        k, entries = self.batch_entries(k)
        g = np.random.default_rng([self.seed, k])
        images, labels, names = [], [], []
        for e in entries:
            img, lab = self.load(e)
            if self.mirror and g.integers(0, 2):
                img, lab = img[:, :, ::-1], lab[:, :, ::-1]
            ch, cw = self.crop
            if ch:
                h0 = int(g.integers(0, img.shape[1] - ch + 1))
                w0 = int(g.integers(0, img.shape[2] - cw + 1))
                img, lab = img[:, h0:h0 + ch, w0:w0 + cw], lab[:, h0:h0 + ch, w0:w0 + cw]
            images.append(np.ascontiguousarray(img))
            labels.append(lab)
            names.append(f"{self.list_file}:{e.line} ('{self.root + e.image}')")
        batch = self.transformer.crop_batch(images, [0.0] * len(images), g, names, alloc=self.alloc)
        batch.labels = np.stack(labels).astype(np.float32)  # sizes agree: crop_batch checked the images
        return batch
