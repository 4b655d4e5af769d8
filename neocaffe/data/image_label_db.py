"""Batches of image + label-map pairs from two Caffe databases read in step, for TI caffe-jacinto's
``ImageLabelData`` layer (:mod:`neocaffe.layers.jacinto_image_label_data`).

Semantics from mathmanu/caffe-jacinto ``caffe-0.17`` @ 2678b2b8556cc64ba66d801537bb066fc070889a,
``src/caffe/layers/image_label_data_layer.cpp``: the fork builds two NVCaffe ``DataLayer``s, one on the image
database and one on the label database, each with its own ``DataTransformer`` seeded with one
``random_seed``; both walk their database in key order, so record ``i`` of one is paired with record ``i`` of
the other, and the two transformers draw the same numbers, so an image and its label get the same random
crop and mirror. Here the same holds by construction: one :class:`~neocaffe.data.batches.DBBatchMaker` per
database, both cropping batch ``k`` with generators seeded ``(seed, k)`` (the draws are neocaffe's, from
the layer's seed, not the fork's boost stream).

The label's transformer (:func:`label_transform_param`) keeps only the geometry of ``transform_param``
(``crop_size`` / ``crop_h`` / ``crop_w``, ``mirror`` and NVCaffe's random resize), and resizes with
``INTER_NEAREST`` both ways, so a label map keeps its integer values; the image's transformer has all of it.
Records as caffe-jacinto-models' ``create_segmentation_image_lmdb.py`` writes them: raw uint8 Datums, the
image 3 x H x W BGR, the label 1 x H x W (encoded records are decoded, a label with its own channels).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from neocaffe.data.batches import DBBatchMaker
from neocaffe.data.datum import DatumError, DecodedDatum
from neocaffe.proto import caffe_pb2

__all__ = ["ImageLabelBatchMaker", "PairSide", "label_transform_param", "image_label_example"]

#: the fields of ``transform_param`` that place pixels (copied to the label's transformer)
GEOMETRY = ("mirror", "crop_size", "crop_h", "crop_w", "img_rand_resize_lower", "img_rand_resize_upper",
            "rand_resize_ratio_lower", "rand_resize_ratio_upper", "vertical_stretch_lower",
            "vertical_stretch_upper", "horizontal_stretch_lower", "horizontal_stretch_upper", "allow_upscale")


def label_transform_param(tp: Any) -> Any:
    """The label's ``transform_param``: ``tp``'s geometry (``GEOMETRY``), resized nearest-neighbour both ways,
    no mean, scale 1, no colour change."""
    out = caffe_pb2.TransformationParameter()
    for name in GEOMETRY:
        if tp.HasField(name):
            setattr(out, name, getattr(tp, name))
    nearest = caffe_pb2.TransformationParameter.INTER_NEAREST
    out.interpolation_algo_down = out.interpolation_algo_up = nearest
    return out


class PairSide(DBBatchMaker):
    """One of the two databases: a DBBatchMaker that also keeps the name and shape of each record it
    decoded for the batch being made (``seen``). The label side is given its ``partner`` (the image side,
    which makes the same batch first) and checks each label record against its image as it decodes it,
    before anything is cropped (:func:`check_pair`)."""

    def __init__(self, *args: Any, partner: "PairSide | None" = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.partner = partner
        self.seen: list[tuple[str, tuple[int, ...]]] = []

    def decode(self, key: bytes, value: bytes) -> tuple[DecodedDatum, str]:
        d, name = super().decode(key, value)
        if self.partner is not None:
            check_pair(*self.partner.seen[len(self.seen)], name, tuple(d.array.shape))
        self.seen.append((name, tuple(d.array.shape)))
        return d, name

    def make(self, k: int) -> Any:
        self.seen = []
        return super().make(k)


class ImageLabelBatchMaker:
    """Batch ``k``: the image database's batch ``k`` cut by the image transformer and the label
    database's batch ``k`` cut by the label transformer, both drawing from ``(seed, k)``. Returns
    ``data`` (N, C, h, w) uint8 crops (mirrored items flipped), their ``offsets`` and ``mirror`` flags,
    the colour draws (``color``) and ``labels`` (N, 1, h, w) float32. An image and its label of
    different sizes, or a label of more than one channel, is a DatumError naming both records."""

    alloc: Any = None  # the prefetcher's shared buffers: the image crops go there

    def __init__(self, images: PairSide, labels: PairSide) -> None:
        if labels.partner is not images:
            raise ValueError("the label side must be given the image side as its partner")
        self.images, self.labels = images, labels

    def open(self) -> None:
        self.images.open()
        self.labels.open()

    def close(self) -> None:
        self.images.close()
        self.labels.close()

    def make(self, k: int) -> dict:
        self.images.alloc = self.alloc
        img = self.images.make(k)
        lab = self.labels.make(k)  # checks each label against its image (PairSide.decode)
        return {"data": img.data, "offsets": img.offsets, "mirror": img.mirror, "color": img.color,
                "labels": np.ascontiguousarray(lab.data, dtype=np.float32)}


def check_pair(iname: str, ishape: tuple[int, ...], lname: str, lshape: tuple[int, ...]) -> None:
    """An image record and its label record agree: one label channel, the image's height and width."""
    if lshape[0] != 1:
        raise DatumError(f"{lname}: a label map has 1 channel; received {'x'.join(map(str, lshape))} "
                         f"(paired with {iname})")
    if lshape[1:] != ishape[1:]:
        raise DatumError(f"{lname}: label map is {lshape[1]}x{lshape[2]} but its image ({iname}) is "
                         f"{ishape[1]}x{ishape[2]}; the pair must have one size")


def image_label_example() -> tuple[str, str]:
    """An image LMDB and a label LMDB for ImageLabelData's contract examples, in the example folder
    (written once): 5 raw 3 x 6 x 7 images and their 1 x 6 x 7 label maps (classes 0..4 and 255)."""
    from neocaffe.data.datum import array_to_datum
    from neocaffe.data.db_writer import DBWriter
    from neocaffe.data.examples import example_folder

    folder = example_folder()
    paths = (os.path.join(folder, "jacinto_image_lmdb"), os.path.join(folder, "jacinto_label_lmdb"))
    if not os.path.exists(paths[1]):
        g = np.random.default_rng(7)
        with DBWriter(paths[0], "lmdb") as images, DBWriter(paths[1], "lmdb") as labels:
            for i in range(5):
                lab = g.integers(0, 5, (1, 6, 7)).astype(np.uint8)
                lab[0, 0, :2] = 255
                img = g.integers(0, 256, (3, 6, 7), dtype=np.uint8)
                images.put(f"{i:010d}", array_to_datum(img).SerializeToString())
                labels.put(f"{i:010d}", array_to_datum(lab).SerializeToString())
    return paths
