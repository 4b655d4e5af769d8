"""Batches of image + edge-map pairs for HED's ``ImageLabelmapData`` layer.

Semantics from s9xie/hed @ 912632b986acc6dd6cc33b95603b2f279d7bd9f2: ``src/caffe/layers/image_labelmap_data_layer.cpp``
(the list, reading, resizing, the label encoding) and ``src/caffe/data_transformer.cpp``'s ``LocTransform`` /
``LabelmapTransform`` (one window and one mirror flag for image and label). Per item:

1. the image is read with ``cv2.imread`` (colour or gray by ``is_color``), its label map gray; both are
   resized bilinearly to ``new_height`` x ``new_width`` when set (the fork resizes the label with
   ``INTER_LINEAR`` too); they must have one size;
2. the label becomes ``label / 255`` in OpenCV's uint8 arithmetic, which rounds: 1 where the (resized)
   label pixel is >= 128, else 0 (the fork's "consensus sampling" trick: on BSDS's 5-annotator maps, edges
   marked by two annotators or fewer drop out);
3. ``transform_param.mirror`` flips both left-right at random, and ``crop_size`` cuts both at one random
   window, in every phase (``LocTransform`` has no TEST centre crop);
4. the image gets ``transform_param``'s mean (``mean_file`` of the image's size, subtracted at each
   pixel's source position, or ``mean_value``) and ``scale`` (on the device, by the layer's transformer);
   the label keeps its 0/1 values, float32 (N, 1, h, w).

Without a crop every item of a batch must have the first one's size (the fork's CHECK); with
``batch_size: 1`` (HED's) each image keeps its own. Draws come from ``(seed, batch)``: the fork's boost
streams cannot be reproduced.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from neocaffe.data.batches import ListBatchMaker
from neocaffe.data.datum import DatumError
from neocaffe.data.seg_images import SegEntry
from neocaffe.data.transformer import DataTransformer, HostBatch

__all__ = ["LabelmapBatchMaker", "encode_labelmap", "labelmap_example"]


def encode_labelmap(gt: np.ndarray) -> np.ndarray:
    """The fork's ``cv_gt / 255`` on a uint8 label map (rounded to nearest: 0..127 -> 0, 128..255 -> 1), float32."""
    return (gt >= 128).astype(np.float32)


class LabelmapBatchMaker(ListBatchMaker):
    """See the module docstring. ``new_size``: (new_height, new_width), (0, 0) for none. ``encode``: uint8 label
    map -> float32 label (HED's rounding; yun-liu/RCF's ``neocaffe.layers.rcf.encode_labelmap_rcf``)."""

    def __init__(self, list_file: str, entries: Sequence[SegEntry], root: str, new_size: tuple[int, int],
                 is_color: bool, batch_size: int, transformer: DataTransformer, seed: int, shuffle: bool = False,
                 skip: int = 0, rank: int = 0, world: int = 1,
                 encode: Callable[[np.ndarray], np.ndarray] = encode_labelmap) -> None:
        super().__init__(list_file, entries, root, batch_size, transformer, seed, shuffle, skip, rank, world)
        self.new_size, self.is_color = (int(new_size[0]), int(new_size[1])), bool(is_color)
        self.encode = encode

    def load(self, e: SegEntry) -> tuple[np.ndarray, np.ndarray]:
        """The pair as C x H x W and 1 x H x W uint8, resized, checked to agree in size."""
        h, w = self.new_size
        img = self.read(e, e.image, height=h, width=w, is_color=self.is_color)
        gt = self.read(e, str(e.label), "label map", height=h, width=w, is_color=False)
        if img.shape[1:] != gt.shape[1:]:
            raise DatumError(f"{self.list_file}:{e.line}: label map '{e.label}' is {gt.shape[1]}x{gt.shape[2]} but "
                             f"image '{e.image}' is {img.shape[1]}x{img.shape[2]}; they must have one size")
        return img, gt

    def make(self, k: int) -> HostBatch:
        k, entries = self.batch_entries(k)
        g = np.random.default_rng([self.seed, k])
        tr = self.transformer
        ch, cw = tr.crop
        n = len(entries)
        images, labels, offsets, mirror = [], [], np.zeros((n, 2), np.int64), np.zeros(n, bool)
        first = ""
        for i, e in enumerate(entries):
            img, gt = self.load(e)
            name = f"{self.list_file}:{e.line} ('{self.root + e.image}')"
            c, h, w = tr.output_shape(*img.shape, what=name)  # crop fits, mean_file of the image's size
            if i and (c, h, w) != images[0].shape:
                raise DatumError(f"{name}: gives a {c}x{h}x{w} item but the batch's first ({first}) is "
                                 f"{'x'.join(map(str, images[0].shape))}; without crop_size every image of a "
                                 f"batch must have one size")
            first = first or name
            mirror[i] = bool(tr.mirror and g.integers(0, 2))  # LocTransform: the mirror draw, then the crop's
            if ch:
                offsets[i] = (g.integers(0, img.shape[1] - ch + 1), g.integers(0, img.shape[2] - cw + 1))
                h0, w0 = offsets[i]
                img, gt = img[:, h0:h0 + ch, w0:w0 + cw], gt[:, h0:h0 + ch, w0:w0 + cw]
            if mirror[i]:
                img, gt = img[:, :, ::-1], gt[:, :, ::-1]
            images.append(np.ascontiguousarray(img))
            labels.append(self.encode(gt))
        shape = (n,) + images[0].shape
        out = self.alloc(shape, np.uint8) if self.alloc is not None else np.empty(shape, np.uint8)
        for i, img in enumerate(images):
            out[i] = img
        color = tr.color.draw(n, g) if tr.color is not None else None
        return HostBatch(out, offsets, mirror, np.stack(labels), color)


def labelmap_example() -> str:
    """A pair list for ImageLabelmapData's contract example: the example folder's 6 x 7 images, each
    with an edge map of its size (0 and 255, a few 127/128 pixels; written once)."""
    import cv2

    from neocaffe.data.examples import example_folder

    folder = example_folder()
    path = os.path.join(folder, "labelmap_list.txt")
    if not os.path.exists(path):
        g = np.random.default_rng(4)
        with open(path, "w") as f:
            for i in range(5):
                gt = np.where(g.random((6, 7)) < 0.2, 255, 0).astype(np.uint8)
                gt[0, :2] = (127, 128)
                cv2.imwrite(os.path.join(folder, f"edge{i}.png"), gt)
                f.write(f"img{i}.png edge{i}.png\n")
    return path
