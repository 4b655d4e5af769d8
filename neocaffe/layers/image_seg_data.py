"""DeepLab's ``ImageSegData``: images and their segmentation labels from a list file (DeepLab v2, PSPNet).

Lineage and source file: hszhao/PSPNet @ 798bdc9 (DeepLab v2's caffe), ``src/caffe/layers/image_seg_data_layer.cpp``
and ``TransformImgAndSeg`` in ``src/caffe/data_transformer.cpp``; what happens to each item is in
``neocaffe.data.seg_images``.

Fields read: ``image_data_param`` ``source``, ``root_folder``, ``batch_size``, ``shuffle`` (at setup and
at every pass), ``rand_skip``, ``new_height``/``new_width`` (both or neither), ``is_color``,
``label_type`` (PIXEL: ``<image> <label image>`` lines; IMAGE: ``<image> <label>``; NONE: ``<image>``)
and ``ignore_label``; ``transform_param`` ``mean_value``, ``scale``, ``mirror``, ``crop_size`` or
``crop_height`` + ``crop_width`` (not with crop_size, as the fork's CHECK) and ``scale_factors``.
``mean_file`` is refused, as the fork refuses it, and so is any transform field the fork does not read
here (SSD's, our colour augmentation). Tops: the data (N, C, h, w), the label (N, 1, h, w) and
``data_dim`` (N, 1, 1, 2): each image's height and width as read (after ``new_height``/``new_width``),
clipped to h and w. A net may name two tops; the third is then made without a name, as Caffe's
``AutoTopBlobs`` does (DeepLab's training nets name two).

Reading, scaling, padding, cropping and mirroring run in worker processes (``neocaffe.data.prefetch``);
the draws come from a seed taken from ``neocaffe.rng`` at setup, so seeded runs repeat (the fork's
boost draws cannot be reproduced).
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from neocaffe.data.examples import dense_example, example_folder
from neocaffe.data.seg_images import SegBatchMaker, read_seg_list
from neocaffe.data.transformer import DataTransformer
from neocaffe.layers.base import TEST, TRAIN, Example, Shape
from neocaffe.layers.prefetched import DATA_ERRORS, PrefetchedLayer, data_seed
from neocaffe.layers.registry import register_layer

log = logging.getLogger("neocaffe.data")

#: the transform_param fields TransformImgAndSeg reads (force_color/force_gray are read and ignored there)
_READ = {"scale", "mirror", "crop_size", "mean_value", "crop_height", "crop_width", "scale_factors",
         "force_color", "force_gray"}


def pad_mask(extent: Tensor, mirror: Tensor, h: int, w: int) -> Tensor:
    """(N, 1, h, w) bool: the pixels of each item inside its unpadded ``extent`` (N, 2: rows, columns
    from the top left, before the item's ``mirror`` flip), on ``extent``'s device."""
    rows = torch.arange(h, device=extent.device).view(1, h, 1) < extent[:, 0].view(-1, 1, 1)
    col = torch.arange(w, device=extent.device).view(1, w)
    col = torch.where(mirror.view(-1, 1), (w - 1) - col, col)  # a mirrored item's padding is on its left
    cols = (col < extent[:, 1].view(-1, 1)).unsqueeze(1)
    return (rows & cols).unsqueeze(1)


@register_layer("ImageSegData")
class ImageSegDataLayer(PrefetchedLayer):
    """See the module docstring."""

    exact_tops = 3
    auto_top_blobs = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p, tp = self.param.image_data_param, self.param.transform_param
        new_size = (int(p.new_height), int(p.new_width))
        if (new_size[0] == 0) != (new_size[1] == 0):
            raise self.error(f"image_data_param.new_height and new_width must be set together; received "
                             f"{new_size[0]}, {new_size[1]}")
        if p.batch_size <= 0:
            raise self.error(f"image_data_param.batch_size must be positive; received {p.batch_size}")
        if tp.HasField("mean_file"):
            raise self.error("transform_param.mean_file: ImageSegData does not support a mean file (the fork "
                             "refuses it); use mean_value")
        other = sorted(f.name for f, _ in tp.ListFields() if f.name not in _READ)
        if other:
            raise self.error(f"transform_param {', '.join(other)}: not read by ImageSegData (the fork's "
                             f"TransformImgAndSeg reads {', '.join(sorted(_READ - {'force_color', 'force_gray'}))})")
        has_hw = tp.HasField("crop_height") or tp.HasField("crop_width")
        if has_hw and not (tp.HasField("crop_height") and tp.HasField("crop_width") and not tp.HasField("crop_size")):
            raise self.error(f"transform_param: set either crop_size or both crop_height and crop_width; received "
                             f"crop_size {tp.crop_size}, crop_height {tp.crop_height}, crop_width {tp.crop_width}")
        crop = (int(tp.crop_height), int(tp.crop_width)) if has_hw else (int(tp.crop_size),) * 2
        if (crop[0] == 0) != (crop[1] == 0):
            raise self.error(f"transform_param: crop_height and crop_width must both be positive; received "
                             f"{crop[0]}, {crop[1]}")
        if any(not s > 0 for s in tp.scale_factors):
            raise self.error(f"transform_param.scale_factors must be positive; received {list(tp.scale_factors)}")
        try:
            self.transformer = DataTransformer(tp, self.phase, where=f"layer '{self.name}' transform_param")
            entries = read_seg_list(p.source, p.label_type, what=f"image_data_param.source '{p.source}'")
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        log.info("A total of %d images.", len(entries))
        skip = self.draw_skip(p.rand_skip, len(entries), p.source, "images")
        self.crop, self.entries, self.skip, self.seed = crop, entries, skip, data_seed()
        self.batch_size = int(p.batch_size)
        self._reseeded()
        try:
            e = self._items.entry(skip)
            c, h, w = self._items.load(e)[0].shape
            # a crop larger than the image pads it, so the transformer checks the mean values at the crop's size
            c, h, w = self.transformer.output_shape(c, max(h, crop[0]), max(w, crop[1]), what=f"{p.source}:{e.line}")
        except DATA_ERRORS as err:
            raise self.error(str(err)) from None
        h, w = crop if crop[0] else (h, w)
        mv = self.transformer.mean_values_tensor(c)
        self.register_buffer("mean_values", mv if mv is not None else torch.zeros(0), persistent=False)
        n = self.batch_size
        self._top_shapes: list[Shape] = [(n, c, h, w), (n, 1, h, w), (n, 1, 1, 2)]
        for what, s in zip(("data", "label", "data_dim"), self._top_shapes):
            log.info("output %s size: %s", what, ",".join(str(d) for d in s))

    def _reseeded(self) -> None:
        p, tp = self.param.image_data_param, self.param.transform_param
        self._items = SegBatchMaker(
            p.source, self.entries, p.root_folder, (p.new_height, p.new_width), p.is_color, p.label_type,
            p.ignore_label, self.crop, tp.scale_factors, tp.mirror, self.phase == TRAIN, p.batch_size,
            self.transformer, self.seed, shuffle=p.shuffle, skip=self.skip, rank=self.context.rank,
            world=self.context.world)

    def _maker(self) -> SegBatchMaker:
        return self._items

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        batch, get, x = self._next_batch()
        data = self.transformer.apply({"data": x, "offsets": get("offsets"), "mirror": get("mirror")}, x.device,
                                      mean_values=self.mean_values if self.mean_values.numel() else None)
        extent, mirror = torch.as_tensor(get("extent")), torch.as_tensor(get("mirror"))
        n, _, h, w = data.shape
        if bool((extent < torch.tensor([h, w])).any()):  # padded items: exactly 0 there, as the fork's mean padding
            data.mul_(pad_mask(extent.to(data.device), mirror.to(data.device), h, w))
        label = torch.as_tensor(get("labels"), dtype=torch.float32)  # the net moves host tops to its device
        dims = torch.as_tensor(get("dims"), dtype=torch.float32).view(n, 1, 1, 2)
        self._release(batch)  # the uint8 crops are consumed
        self._top_shapes = [tuple(data.shape), tuple(label.shape), tuple(dims.shape)]
        return [data, label, dims]

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        folder, src = example_folder(), dense_example()
        return [
            Example(f'name: "d" type: "ImageSegData" top: "data" top: "label" top: "dim" image_data_param {{ '
                    f'source: "{src}" root_folder: "{folder}/" batch_size: 2 shuffle: true label_type: PIXEL }} '
                    f'transform_param {{ mirror: true crop_size: 8 mean_value: 100 scale_factors: 0.5 '
                    f'scale_factors: 1.5 }}', [], grad_bottoms=(), grad_params=False, phase=TRAIN),
            Example(f'name: "d" type: "ImageSegData" top: "data" top: "label" top: "dim" image_data_param {{ '
                    f'source: "{folder}/list.txt" root_folder: "{folder}/" batch_size: 3 label_type: IMAGE '
                    f'is_color: false }} transform_param {{ crop_height: 4 crop_width: 9 scale: 0.5 }}',
                    [], grad_bottoms=(), grad_params=False, phase=TEST),
        ]
