"""HED's ``ImageLabelmapData``: images and their edge maps (labels 0/1) from a list file.

Lineage and source file: s9xie/hed @ 912632b986acc6dd6cc33b95603b2f279d7bd9f2,
``src/caffe/layers/image_labelmap_data_layer.cpp`` (with ``src/caffe/data_transformer.cpp``'s
``LocTransform`` and ``LabelmapTransform``); what one batch holds is described in
:mod:`neocaffe.data.labelmap_images`.

Fields read (``image_data_param``, as the fork): ``source`` (``<image> <label map>`` per line),
``root_folder``, ``batch_size``, ``shuffle`` (at setup and at every pass), ``rand_skip``,
``new_height``/``new_width`` (both or neither), ``is_color`` (the label map is always read gray).
``transform_param``: ``crop_size`` and ``mirror`` (one random window and flip for image and label, in
every phase), ``mean_file`` (of the images' size), ``mean_value``, ``scale`` (the image only), and
neocaffe's colour augmentation; SSD's ``resize_param``/``noise_param`` are refused (not in HED's schema).
Tops: the data (N, C, h, w) and the label (N, 1, h, w). A net with this layer is a HED net: its ``Crop``
and ``SigmoidCrossEntropyLoss`` layers without ``crop_param``/``loss_param`` are HED's
(:mod:`neocaffe.layers.hed`). In a net of lineage ``"rcf"`` (yun-liu/RCF's, told by its ``AutoCrop``) the label is
RCF's: weak edges keep their fraction instead of rounding to 0 (:mod:`neocaffe.layers.rcf`).
"""
from __future__ import annotations

import logging

import torch

from neocaffe.data.dense_images import read_pair_list
from neocaffe.data.labelmap_images import LabelmapBatchMaker, encode_labelmap, labelmap_example
from neocaffe.data.examples import example_folder
from neocaffe.data.transformer import DataTransformer
from neocaffe.layers.base import TEST, TRAIN, Example, Shape
from neocaffe.layers.dense_image_data import ImagePairLayer
from neocaffe.layers.hed import HED_DATA_TYPE
from neocaffe.layers.prefetched import DATA_ERRORS, data_seed
from neocaffe.layers.rcf import encode_labelmap_rcf, labels_are_rcf
from neocaffe.layers.registry import register_layer

log = logging.getLogger("neocaffe.data")


@register_layer(HED_DATA_TYPE)
class ImageLabelmapDataLayer(ImagePairLayer):
    """See the module docstring."""

    takes_net = True  # RCF's labels are told by the net's lineage

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.image_data_param
        try:
            self.rcf_labels = labels_are_rcf(self.net_so_far)
        except ValueError as e:
            raise self.error(str(e)) from None
        new_size = (int(p.new_height), int(p.new_width))
        if (new_size[0] == 0) != (new_size[1] == 0):
            raise self.error(f"image_data_param.new_height and new_width must be set together; "
                             f"received {new_size[0]}, {new_size[1]}")
        if p.batch_size <= 0:
            raise self.error(f"image_data_param.batch_size must be positive; received {p.batch_size}")
        try:
            self.transformer = DataTransformer(self.param.transform_param, self.phase,
                                               where=f"layer '{self.name}' transform_param")
            entries = read_pair_list(p.source, "image_data_param.source")
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        if self.transformer.nv_resize is not None:  # NVCaffe applies it to Data and ImageData only
            raise self.error(self.transformer.nv_resize.refusal("edge map"))
        if self.transformer.pixels is not None:
            raise self.error("transform_param.resize_param / noise_param are SSD's; HED's ImageLabelmapData has "
                             "no such step")
        mean = self.transformer.mean_tensor()
        self.register_buffer("mean", mean if mean is not None else torch.zeros(0), persistent=False)
        log.info("A total of %d images.", len(entries))
        skip = self.draw_skip(p.rand_skip, len(entries), p.source, "pairs")
        self.entries, self.skip, self.seed, self.batch_size = entries, skip, data_seed(), int(p.batch_size)
        self._reseeded()
        try:
            e = self._pairs.entry(skip)
            img, _ = self._pairs.load(e)
            c, h, w = self.transformer.output_shape(*img.shape, what=f"{p.source}:{e.line}")
        except DATA_ERRORS as err:
            raise self.error(str(err)) from None
        mv = self.transformer.mean_values_tensor(c)
        self.register_buffer("mean_values", mv if mv is not None else torch.zeros(0), persistent=False)
        self._top_shapes: list[Shape] = [(self.batch_size, c, h, w), (self.batch_size, 1, h, w)]
        log.info("output data size: %s", ",".join(str(d) for d in self._top_shapes[0]))

    def _reseeded(self) -> None:
        p = self.param.image_data_param
        self._pairs = LabelmapBatchMaker(
            p.source, self.entries, p.root_folder, (p.new_height, p.new_width), p.is_color, p.batch_size,
            self.transformer, self.seed, shuffle=p.shuffle, skip=self.skip, rank=self.context.rank,
            world=self.context.world, encode=encode_labelmap_rcf if self.rcf_labels else encode_labelmap)

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        folder, src = example_folder(), labelmap_example()
        return [
            Example(f'name: "d" type: "{HED_DATA_TYPE}" top: "data" top: "label" image_data_param {{ '
                    f'source: "{src}" root_folder: "{folder}/" batch_size: 2 shuffle: true }} '
                    f'transform_param {{ mirror: true crop_size: 4 mean_value: 104 mean_value: 117 mean_value: 123 }}',
                    [], grad_bottoms=(), grad_params=False, phase=TRAIN),
            Example(f'name: "d" type: "{HED_DATA_TYPE}" top: "data" top: "label" image_data_param {{ '
                    f'source: "{src}" root_folder: "{folder}/" batch_size: 3 new_height: 8 new_width: 10 '
                    f'is_color: false rand_skip: 3 }} transform_param {{ scale: 0.5 }}',
                    [], grad_bottoms=(), grad_params=False, phase=TEST),
        ]
