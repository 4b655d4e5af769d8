"""senlinuc/caffe_ocr's multi-label data layers: its forms of ``ImageData`` and ``Data`` (a text line's characters,
padded, as the label of one image; or regression values).

Lineage: senlinuc/caffe_ocr @ 81642f61ea8f888e360cca30e08e05b7bc6d4556 (caffe_ocr in proto/NUMBERING.md):
``src/caffe/layers/image_data_layer.cpp``, ``src/caffe/layers/data_layer.cpp``,
``src/caffe/layers/base_data_layer.cpp``,
``src/caffe/data_transformer.cpp``, ``src/caffe/util/io.cpp``, ``tools/convert_imageset.cpp`` (which writes the
records: ``neocaffe.tools.convert_imageset_ocr``). The fork's ``group_image_data_layer.hpp`` has no source file.

**ImageData**: each line of ``image_data_param.source`` is ``iss >> filename`` and then ints while they read
(``regression: true``: floats; ``neocaffe.data.multilabel.read_multilabel_list``). The label top is
(batch_size, L, 1, 1) float32, L the values on the lines (float32 of each int or value, as the fork's copy into its
Dtype blob). ``task_class_num`` is parsed but read by nothing in the fork (L comes from the lines); it only tells
this form apart. Image reading, resizing (``new_height``/``new_width``, both or neither, as the fork CHECKs),
``shuffle`` (the list at setup and at every pass), ``rand_skip`` and the transform are BVLC's, which the fork's are
(neocaffe's draws, as for BVLC's ImageData).

**Data**: every value of the record's field 5 (``neocaffe.data.multilabel.datum_labels``); the label top is
(batch_size, L, 1, 1), L the count in the database's first record (the fork's DataLayerSetUp reads the cursor before
its ``rand_skip``). ``rand_skip``, the transform, the backends, the read position across a resume: BVLC's Data
(:class:`neocaffe.layers.data_layers.DataLayer`), as the fork's.

Which form a layer takes (NUMBERING.md rule 6; told in ``DataLayer``/``ImageDataLayer`` by ``claims``):
ImageData is caffe_ocr's where it sets ``task_class_num`` or ``regression``, or where the net's lineage is
``caffe_ocr`` (``lineage: "caffe_ocr"``, or unset in a net with ``WarpCTCLoss``/``DenseBlock``). Data is caffe_ocr's
where the net's lineage is ``caffe_ocr``, or, with ``lineage`` unset, where the database's first record holds more
than one label (only the fork's tools write such records; BVLC's schema cannot). Elsewhere both are BVLC's: one
label per item, a (batch_size,) top.

Deviations: where lines or records hold different label counts the fork copies each item's values at a stride of its
own count into a blob shaped from one line/record (values misplaced, others stale); here that is an error naming the
line (at setup) or the record (when read). A blank list line is skipped (the fork reads the previous image again,
with no labels). A ``mean_file`` must have the image's size (the fork's ``Transform(cv::Mat)`` also accepts a larger
image and then reads the mean as if it had the crop's shape).
"""
from __future__ import annotations

import logging
from typing import Any

from torch import Tensor

from neocaffe.data.multilabel import MultiLabelDBBatchMaker, datum_labels, multilabel_example, read_multilabel_list
from neocaffe.data.sources import DBReader, detect_backend
from neocaffe.layers.base import TEST, TRAIN, Example, NetSoFar, Shape
from neocaffe.layers.blob_shape import check_shape
from neocaffe.layers.data_layers import DATA_ERRORS, DataLayer, ImageDataLayer, _transform_param, data_seed
from neocaffe.layers.lineage import net_lineage
from neocaffe.proto import caffe_pb2

__all__ = ["OCRDataLayer", "OCRImageDataLayer", "caffe_ocr_net", "first_record_labels"]

log = logging.getLogger("neocaffe.data")


def caffe_ocr_net(net: NetSoFar | None) -> bool | None:
    """True/False where the net tells (``lineage`` set, or a type only caffe_ocr has); None where it does not
    (built alone, or a net of no fork; also where two forks' own types meet, which other layers report)."""
    if net is None:
        return None
    written = str(getattr(net.written, "lineage", ""))
    if written:
        return written == "caffe_ocr"
    try:
        return True if net_lineage(net) == "caffe_ocr" else None
    except ValueError:
        return None


def _label_tops(tops: list[Tensor], n_labels: int) -> list[Tensor]:
    """The fork's label top: (N, L, 1, 1)."""
    if len(tops) < 2:
        return tops
    return [tops[0], tops[1].reshape(tops[1].shape[0], n_labels, 1, 1)]


def first_record_labels(param: Any) -> int:
    """The label count of the first record of ``data_param.source`` (0 where it cannot be read: the BVLC
    layer's setup then reports why)."""
    dp = param.data_param
    if not dp.source:
        return 0
    if dp.HasField("backend"):
        backend = "lmdb" if dp.backend == caffe_pb2.DataParameter.LMDB else "leveldb"
    else:
        backend = detect_backend(dp.source) or "leveldb"
    try:
        with DBReader(dp.source, backend, f"data_param.source '{dp.source}'") as reader:
            key, value = reader.peek()
            return len(datum_labels(value, f"record '{key.decode('utf-8', 'replace')}'"))
    except (*DATA_ERRORS, OSError, ImportError):
        return 0


class OCRDataLayer(DataLayer):
    """caffe_ocr's Data: BVLC's, with every label of a record in a (batch_size, L, 1, 1) top (module docstring)."""

    @classmethod
    def claims(cls, param: Any, net: NetSoFar | None) -> bool:
        """A net of lineage caffe_ocr; with none told, a first record holding several labels."""
        told = caffe_ocr_net(net)
        return told if told is not None else first_record_labels(param) > 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        super().setup(bottom_shapes)
        try:
            with DBReader(self.source, self.backend, self.where) as reader:
                key, value = reader.peek()  # record 0: the fork reads it before its rand_skip
                self.n_labels = len(datum_labels(value, f"{self.where}: record '{key.decode('utf-8', 'replace')}'"))
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        if len(self._top_shapes) > 1:
            self._top_shapes[1] = check_shape((self.batch_size, self.n_labels, 1, 1), "label top")

    def _maker(self) -> MultiLabelDBBatchMaker:
        return MultiLabelDBBatchMaker(self.source, self.backend, self.batch_size, self.transformer, self.seed,
                                      start=self.skip, where=self.where, force_color=self.force_color,
                                      rank=self.context.rank, world=self.context.world, shuffle=self.cache_shuffle,
                                      n_labels=self.n_labels)

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        return _label_tops(super().forward(), self.n_labels)

    @classmethod
    def form_examples(cls) -> list[Example]:
        """Contract examples: a database of 4 labels a record (told by its records)."""
        folder = multilabel_example()
        return [Example(f'name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "{folder}/ocr_lmdb" '
                        f'batch_size: 3 }} transform_param {{ crop_size: 5 mirror: true mean_value: 152 }}',
                        [], grad_bottoms=(), grad_params=False, phase=TRAIN)]


class OCRImageDataLayer(ImageDataLayer):
    """caffe_ocr's ImageData: several labels (or ``regression`` values) a line in a (batch_size, L, 1, 1) top."""

    @classmethod
    def claims(cls, param: Any, net: NetSoFar | None) -> bool:
        """``task_class_num`` or ``regression`` set, or a net of lineage caffe_ocr."""
        ip = param.image_data_param
        return ip.HasField("task_class_num") or ip.HasField("regression") or bool(caffe_ocr_net(net))

    def setup(self, bottom_shapes: list[Shape]) -> None:
        ip = self.param.image_data_param
        if (ip.new_height == 0) != (ip.new_width == 0) or ip.new_height < 0 or ip.new_width < 0:
            raise self.error(f"Current implementation requires new_height and new_width to be set at the same "
                             f"time; received new_height {ip.new_height}, new_width {ip.new_width}")
        if ip.batch_size <= 0:
            raise self.error(f"image_data_param.batch_size must be positive; received {ip.batch_size}")
        if ip.new_height:
            check_shape((ip.batch_size, 3 if ip.is_color else 1, ip.new_height, ip.new_width),
                        "image_data_param batch_size x channels x new_height x new_width")
        self._init_transformer(_transform_param(self.param, ip))
        self.list_file = ip.source
        try:
            entries = read_multilabel_list(ip.source, bool(ip.regression), f"image_data_param.source '{ip.source}'")
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        self.n_labels = len(entries[0].label)
        log.info("A total of %d images.", len(entries))
        skip = self.draw_skip(ip.rand_skip, len(entries), ip.source, "images")
        self.entries, self.skip, self.seed = entries, skip, data_seed()
        self._reseeded()
        try:
            e = self._maker_obj.entry(skip)
            c, h, w = self._maker_obj.load(e).shape
            if self.transformer.pixels is not None:
                c, h, w = self.transformer.pixels.shape(c, h, w)
            shape = self.transformer.output_shape(c, h, w, what=f"{ip.source}:{e.line}")
        except DATA_ERRORS as err:
            raise self.error(str(err)) from None
        self._set_shapes(shape, ip.batch_size)
        if len(self._top_shapes) > 1:
            self._top_shapes[1] = check_shape((self.batch_size, self.n_labels, 1, 1), "label top")

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        return _label_tops(super().forward(), self.n_labels)

    @classmethod
    def form_examples(cls) -> list[Example]:
        """Contract examples: 3 labels a line (``task_class_num``), 2 regression values a line."""
        folder = multilabel_example()

        def text(source: str, image: str, transform: str) -> str:
            return (f'name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ source: '
                    f'"{folder}/{source}" root_folder: "{folder}/" batch_size: 2 {image} }} '
                    f'transform_param {{ {transform} }}')

        return [
            Example(text("ocr_list.txt", "task_class_num: 3 shuffle: true",
                         "crop_size: 5 mirror: true mean_value: 152"),
                    [], grad_bottoms=(), grad_params=False, phase=TRAIN),
            Example(text("ocr_values.txt", "regression: true new_height: 8 new_width: 9", "scale: 0.5"),
                    [], grad_bottoms=(), grad_params=False, phase=TEST),
        ]

