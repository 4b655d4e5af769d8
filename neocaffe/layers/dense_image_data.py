"""SegNet's ``DenseImageData``: images and their per-pixel label images from a list file.

Lineage and source file: alexgkendall/caffe-segnet @ 344c113b, ``src/caffe/layers/dense_image_data_layer.cpp``
(the label path of ``src/caffe/data_transformer.cpp``'s ``Transform(cv::Mat, Blob, preserve_pixel_vals)``).
TimoSaemann/caffe-enet @ 22d356c9 has the same layer plus ``label_divide_factor``, read here too.

Fields read (``dense_image_data_param``): ``source`` (``<image> <label image>`` per line), ``root_folder``,
``batch_size``, ``shuffle`` (at setup and at every pass), ``rand_skip``, ``new_height``/``new_width``
(both or neither: bilinear for the image, nearest neighbour for the label), ``is_color`` (the label is
always read gray), ``mirror`` (image and label flipped together at random), ``crop_height``/``crop_width``
(both or neither: one random window for the pair, in every phase: the fork draws it in TEST too),
``label_divide_factor`` (ENet: the label is ``1/f`` the image's size; not with a crop, whose window the
ENet fork cuts from both at the image's coordinates). ``transform_param`` applies to the image only
(``mean_file`` of the cropped size, ``mean_value``, ``scale``); the label keeps its pixel values. Its
``mirror`` and ``crop_size`` are refused, as the fork's CHECK refuses them (they would transform the
image and not its label). ``dense_image_data_param.mean_file`` is never read (nor by the fork). Tops:
the data (N, C, h, w) and the label (N, 1, h, w). With ``batch_size: 1`` and no resize or crop each
image keeps its own size, as the fork reshapes per image.

Reading, resizing, mirroring and cropping run in worker processes (``neocaffe.data.prefetch``); the
draws come from a seed taken from ``neocaffe.rng`` at setup, so seeded runs repeat (the fork's boost
draws cannot be reproduced).
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from neocaffe.data.dense_images import DenseImageBatchMaker, read_pair_list
from neocaffe.data.prefetch import BatchMaker
from neocaffe.data.examples import dense_example, example_folder
from neocaffe.data.transformer import DataTransformer
from neocaffe.layers.base import TEST, Example, Shape
from neocaffe.layers.prefetched import DATA_ERRORS, PrefetchedLayer, data_seed
from neocaffe.layers.registry import register_layer

log = logging.getLogger("neocaffe.data")


class ImagePairLayer(PrefetchedLayer):
    """A layer of (image, label image) pairs whose batch maker (``_pairs``) cuts both and leaves the
    image's ``transform_param`` steps (mean, scale, colour) to ``transformer``: DenseImageData and HED's
    ImageLabelmapData. Tops: the data and the float label."""

    exact_tops = 2
    _pairs: BatchMaker

    def _maker(self) -> BatchMaker:
        return self._pairs

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        batch, get, x = self._next_batch()
        data = self.transformer.apply(
            {"data": x, "offsets": get("offsets"), "mirror": get("mirror"), "color": get("color")}, self.mean.device,
            mean=self.mean if self.mean.numel() else None,
            mean_values=self.mean_values if self.mean_values.numel() else None)
        label = torch.as_tensor(get("labels"), dtype=torch.float32)  # the net moves host tops to its device
        self._release(batch)  # the uint8 crops are consumed
        self._top_shapes = [tuple(data.shape), tuple(label.shape)]
        return [data, label]


@register_layer("DenseImageData")
class DenseImageDataLayer(ImagePairLayer):
    """See the module docstring."""

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.dense_image_data_param
        new_size, crop = (int(p.new_height), int(p.new_width)), (int(p.crop_height), int(p.crop_width))
        if (new_size[0] == 0) != (new_size[1] == 0):
            raise self.error(f"dense_image_data_param.new_height and new_width must be set together; "
                             f"received {new_size[0]}, {new_size[1]}")
        if (crop[0] == 0) != (crop[1] == 0):
            raise self.error(f"dense_image_data_param.crop_height and crop_width must be set together; "
                             f"received {crop[0]}, {crop[1]}")
        if p.batch_size <= 0:
            raise self.error(f"dense_image_data_param.batch_size must be positive; received {p.batch_size}")
        if p.label_divide_factor == 0:
            raise self.error("dense_image_data_param.label_divide_factor must be positive; received 0")
        if p.label_divide_factor != 1 and crop[0]:
            raise self.error(f"dense_image_data_param.label_divide_factor {p.label_divide_factor} with "
                             f"crop_height/crop_width: the ENet fork cuts the label at the image's window, "
                             f"outside its smaller label; resize (new_height/new_width) instead of cropping")
        tp = self.param.transform_param
        if tp.mirror or tp.crop_size:
            raise self.error("transform_param.mirror and crop_size would transform the image and not its label "
                             "(the fork refuses them); use dense_image_data_param.mirror / crop_height / crop_width")
        try:
            self.transformer = DataTransformer(tp, self.phase, where=f"layer '{self.name}' transform_param")
            entries = read_pair_list(p.source)
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        if self.transformer.nv_resize is not None:  # NVCaffe applies it to Data and ImageData only
            raise self.error(self.transformer.nv_resize.refusal("label map"))
        mean = self.transformer.mean_tensor()
        self.register_buffer("mean", mean if mean is not None else torch.zeros(0), persistent=False)
        log.info("A total of %d examples.", len(entries))
        skip = self.draw_skip(p.rand_skip, len(entries), p.source, "pairs")
        self.entries, self.skip, self.seed, self.batch_size = entries, skip, data_seed(), int(p.batch_size)
        self._reseeded()
        try:
            e = self._pairs.entry(skip)
            img, lab = self._pairs.load(e)
            c, h, w = img.shape
            if crop[0]:  # the transformer sees the cropped pair (its mean_file must have the crop's size)
                h, w = crop
            c, h, w = self.transformer.output_shape(c, h, w, what=f"{p.source}:{e.line}")
        except DATA_ERRORS as err:
            raise self.error(str(err)) from None
        mv = self.transformer.mean_values_tensor(c)
        self.register_buffer("mean_values", mv if mv is not None else torch.zeros(0), persistent=False)
        lh, lw = (h, w) if crop[0] else lab.shape[1:]
        self._top_shapes: list[Shape] = [(self.batch_size, c, h, w), (self.batch_size, 1, lh, lw)]
        log.info("output data size: %s", ",".join(str(d) for d in self._top_shapes[0]))

    def _reseeded(self) -> None:
        p = self.param.dense_image_data_param
        self._pairs = DenseImageBatchMaker(
            p.source, self.entries, p.root_folder, (p.new_height, p.new_width), p.is_color,
            (p.crop_height, p.crop_width), p.mirror, p.batch_size, self.transformer, self.seed,
            shuffle=p.shuffle, skip=self.skip, rank=self.context.rank, world=self.context.world,
            label_divide=p.label_divide_factor)

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        folder, src = example_folder(), dense_example()
        return [
            Example(f'name: "d" type: "DenseImageData" top: "data" top: "label" dense_image_data_param {{ '
                    f'source: "{src}" root_folder: "{folder}/" batch_size: 2 shuffle: true mirror: true '
                    f'crop_height: 4 crop_width: 5 }} transform_param {{ scale: 0.5 mean_value: 100 }}',
                    [], grad_bottoms=(), grad_params=False, phase=0),
            Example(f'name: "d" type: "DenseImageData" top: "data" top: "label" dense_image_data_param {{ '
                    f'source: "{src}" root_folder: "{folder}/" batch_size: 3 new_height: 4 new_width: 6 '
                    f'is_color: false rand_skip: 3 }}', [], grad_bottoms=(), grad_params=False, phase=TEST),
        ]
