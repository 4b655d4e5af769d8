"""SSD's AnnotatedData layer (lineage: weiliu89/caffe, branch ssd; ``src/caffe/layers/annotated_data_layer.cpp``).

Reads AnnotatedDatum records (``convert_annoset``'s LMDB) in key order: ``data_param {source
batch_size backend}``, ``annotated_data_param {batch_sampler anno_type}``, ``transform_param`` with
the fork's ``distort_param``, ``expand_param``, ``resize_param``, ``emit_constraint``, ``crop_h`` /
``crop_w``. Tops: the images (N, C, H, W) and, for annotated records, the boxes (1, 1, G, 8) as
``[item, label, instance, xmin, ymin, xmax, ymax, difficult]`` (one row of -1 when a batch has none);
for records without annotations, their datum labels (N).

MobileNet-YOLO's fields (eric612/MobileNet-YOLO ``annotated_data_layer.cpp``): several ``resize_param``
policies with their ``prob`` (one drawn every 10 batches: multi-scale training), ``cvt_bgr2rgb``,
``annotated_data_param.yolo_data_type: 1`` (the label top is N x 1 x 300 x 5, rows ``[group_label - 1, x,
y, w, h]``, zeros after the last box; difficult boxes only with ``train_diffcult``), ``yolo_data_jitter``
(a jitter crop instead of the batch samplers when there are none). The fork jitters by default (0.3)
whenever no batch_sampler is given; since an SSD prototxt cannot say so, the jitter applies here only
with ``yolo_data_type: 1`` or ``yolo_data_jitter`` written out.

``difficult_label_warmup`` (with ``yolo_data_type: 1`` and ``train_diffcult``): the fork leaves difficult boxes
out of the YOLO label until solver iteration ``max_iter / 20`` (``it > stop / 20``, ``stop`` the end of the
running ``Solver::Step``: ``max_iter`` under ``solve``). The fork decides when its prefetch thread loads a
batch, from the iteration of the last forward (a few iterations, its prefetch depth, before the batch is used;
unset before the first); here every batch carries both labels and the forward picks by the iteration that
uses it (``set_iteration``, called by the solver). A net run without a solver (and a test net) has no warmup.

A third top, ``seg_label`` (the fork's ``BBOXandSeg`` records, whose datum carries an encoded label image):
:mod:`neocaffe.data.annotated_yolo` (``single_class``, ``seg_scales``, ``seg_resize_width/height`` and the
``YoloSegLabel`` ``label_map_file``).

Records (or ``anno_type``) of type LANE are refused when a label top is asked for, as the fork refuses them
("Unknown annotation type."); its LaneData layer reads them (:mod:`neocaffe.layers.lane_data`).

TextBoxes++ (MhLiao/TextBoxes_plusplus @ 39d4898, ``annotated_data_layer.cpp``): records whose annotations carry
``polygon`` quadrilaterals give label rows of 16 columns, SSD's 8 then ``x1, y1, .., x4, y4`` (one row of 16 -1
when a batch has none), the quadrilaterals augmented as the fork's TransformAnnotation augments them (projected
and clipped into a rotated rectangle at every crop, rolled by ``first_point`` at the resize, never mirrored:
:mod:`neocaffe.data.polygon_anno`). The fork writes 16 columns for every net and has no field for it; here the
first record holding annotations decides (of the first 100), so SSD's records keep SSD's 8 columns.

FaceBoxes (sfzhang15/FaceBoxes @ b52cc92, a net of lineage ``"faceboxes"``): sample crops square in pixels, and
the CENTER emit constraint keeps only boxes over 16 pixels a side (:mod:`neocaffe.data.faceboxes_sampling`).
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable

import torch
from torch import Tensor

from neocaffe.data.annotated import boxes_of, parse_annotated
from neocaffe.data.annotated_batches import AnnotatedBatchMaker, AnnotatedTransform
from neocaffe.data.annotated_yolo import YOLO_ROWS, SegSpec, seg_spec, warming_up
from neocaffe.data.datum import DatumError, decode_datum
from neocaffe.data.polygon_anno import records_have_polygons
from neocaffe.data.prefetch import default_workers
from neocaffe.data.sources import DBReader, detect_backend
from neocaffe.data.transformer import load_mean_file
from neocaffe.layers.base import Example, Shape
from neocaffe.layers.data_layers import TransformingLayer
from neocaffe.layers.lineage import net_lineage
from neocaffe.layers.prefetched import DATA_ERRORS, data_seed
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2

log = logging.getLogger("neocaffe.data")


class AnnotatedRecords(TransformingLayer):
    """What the layers reading convert_annoset's AnnotatedDatum LMDBs share (SSD's AnnotatedData, MobileNet-YOLO's
    LaneData): the source and backend of ``data_param``, the transform of ``transform_param``, the first record
    and the prefetch workers."""

    def _open_source(self, dp: Any, tp: Any, check: Callable[[Any, str], None] | None = None,
                     faceboxes: bool = False) -> tuple[Any, tuple[int, ...]]:
        """Set the source, backend, transform and record count; returns the first record (checked by
        ``check(record, name)``) and the transformed item's shape. Errors name the layer and the source.
        ``faceboxes``: FaceBoxes' sampling and emit test (:mod:`neocaffe.data.faceboxes_sampling`)."""
        if dp.HasField("backend"):
            self.backend = "lmdb" if dp.backend == caffe_pb2.DataParameter.LMDB else "leveldb"
        else:
            self.backend = detect_backend(dp.source) or "leveldb"
        self.source, self.where = os.path.abspath(dp.source), f"data_param.source '{dp.source}'"
        try:
            mean = load_mean_file(tp.mean_file) if tp.mean_file else None
            if mean is not None and len(tp.mean_value):
                raise DatumError("cannot specify mean_file and mean_value at the same time")
            self.transform = AnnotatedTransform(tp, self.phase, mean, yolo=True, faceboxes=faceboxes)
            with DBReader(self.source, self.backend, self.where) as reader:
                self.n_records = reader.count() if self.backend == "lmdb" else None
                key, value = reader.peek()
            name = f"{self.where}: record '{key.decode('utf-8', 'replace')}'"
            first = parse_annotated(value, name)
            if check is not None:
                check(first, name)
            d = decode_datum(first.datum, force_color=tp.force_color, force_gray=tp.force_gray, where=name)
            return first, self.transform.shape(*d.array.shape)
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None

    def _workers_and_depth(self) -> tuple[int, int]:
        n = None if self.n_records is None else math.ceil(self.n_records / self.batch_size)
        workers = 0 if self.backend == "leveldb" else default_workers(n, self.context.data_workers)
        return workers, int(self.param.data_param.prefetch)


@register_layer("AnnotatedData")
class AnnotatedData(AnnotatedRecords):
    """SSD's data layer: images with their boxes, augmented as the fork augments them (on the host:
    the boxes follow every crop and flip)."""

    max_tops = 3  # MobileNet-YOLO's seg_label
    takes_net = True  # FaceBoxes' sampling is told by the net's lineage

    def setup(self, bottom_shapes: list[Shape]) -> None:
        dp, ap, tp = self.param.data_param, self.param.annotated_data_param, self.param.transform_param
        if not dp.source:
            raise self.error("data_param.source is empty; expected the path of an LMDB (convert_annoset's)")
        if dp.batch_size <= 0:
            raise self.error(f"data_param.batch_size must be positive; received {dp.batch_size}")
        if len(tp.resize_param) and tp.resize_param[0].resize_mode == 2 and dp.batch_size != 1:
            raise self.error("only batch_size 1 is supported with resize_param FIT_SMALL_SIZE")
        try:
            faceboxes = net_lineage(self.net_so_far) == "faceboxes"
        except ValueError:  # several forks' own types in one net without lineage: SSD's sampling
            faceboxes = False
        first, item = self._open_source(dp, tp, faceboxes=faceboxes)
        self.with_boxes = first.HasField("type") or ap.HasField("anno_type")
        lane = (ap.anno_type if ap.HasField("anno_type") else first.type) == caffe_pb2.AnnotatedDatum.LANE
        if self.with_boxes and lane and len(self.param.top) > 1:
            raise self.error("annotation type LANE; AnnotatedData reads BBOX and BBOXandSeg records (the fork: "
                             "\"Unknown annotation type.\"): lane records are read by the LaneData layer")
        self._yolo_setup(ap)
        self.seg: SegSpec | None = None
        if len(self.param.top) == 3:
            try:
                self.seg = seg_spec(ap)
            except DATA_ERRORS as e:
                raise self.error(str(e)) from None
        if ap.HasField("anno_type") and first.HasField("type"):
            log.warning("layer '%s': type stored in AnnotatedDatum is shadowed.", self.name)
        self.batch_size = int(dp.batch_size)
        self.samplers = list(ap.batch_sampler)
        self.seed = data_seed()
        self.quads = self.with_boxes and self.yolo is None and not lane and self._polygon_records()
        if self.quads and tp.mirror:
            log.warning("layer '%s': TextBoxes++'s records: mirror flips the boxes, not the quadrilaterals (the "
                        "fork's TransformAnnotation)", self.name)
        boxes = max(len(boxes_of(first).label), 1)
        label: Shape = (1, 1, boxes, 16 if self.quads else 8) if self.with_boxes else (self.batch_size,)
        if self.with_boxes and self.yolo is not None:
            label = (self.batch_size, 1, YOLO_ROWS, 5)
        self._top_shapes: list[Shape] = [(self.batch_size, *item), label]
        if self.seg is not None:
            self._top_shapes.append((self.batch_size, *self.seg.shape(*item[1:])))
        self._top_shapes = self._top_shapes[: len(self.param.top)]
        log.info("output data size: %s", ",".join(str(v) for v in self._top_shapes[0]))

    def _yolo_setup(self, ap: caffe_pb2.AnnotatedDataParameter) -> None:
        """MobileNet-YOLO's annotated_data_param fields: ``self.yolo`` (None, or whether difficult boxes
        count) and ``self.jitter``."""
        if ap.yolo_data_type not in (0, 1):
            raise self.error(f"annotated_data_param.yolo_data_type must be 0 (SSD's label) or 1 (YOLO's); "
                             f"received {ap.yolo_data_type}")
        self.yolo = bool(ap.train_diffcult) if ap.yolo_data_type == 1 else None
        self.warmup = bool(self.yolo and ap.difficult_label_warmup)
        self.progress: tuple[int, int] | None = None  # (solver iteration, the running step's end)
        wants_jitter = ap.yolo_data_type == 1 or ap.HasField("yolo_data_jitter")
        self.jitter = float(ap.yolo_data_jitter) if wants_jitter and not len(ap.batch_sampler) else 0.0
        if self.jitter and not len(self.param.transform_param.resize_param):
            raise self.error("annotated_data_param.yolo_data_jitter needs a transform_param.resize_param (the fork "
                             "reads its resize_mode); set yolo_data_jitter: 0 or add a resize_param")

    def _polygon_records(self) -> bool:
        """Whether the source holds TextBoxes++'s quadrilaterals (:func:`records_have_polygons`)."""
        def parse(value: bytes, key: bytes) -> caffe_pb2.AnnotatedDatum:
            return parse_annotated(value, f"{self.where}: record '{key.decode('utf-8', 'replace')}'")
        try:
            with DBReader(self.source, self.backend, self.where) as reader:
                items = reader.items()
                try:
                    return records_have_polygons(items, parse)
                finally:
                    items.close()      # its read transaction ends before the reader closes
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None

    def _maker(self) -> AnnotatedBatchMaker:
        rank, world = self.context.rank, self.context.world  # data-parallel: this process's slice
        return AnnotatedBatchMaker(self.source, self.backend, self.batch_size, self.transform, self.samplers,
                                   self.seed, self.with_boxes, self.where, rank, world, jitter=self.jitter,
                                   yolo=self.yolo, warmup=self.warmup, seg=self.seg, quads=self.quads)

    def set_iteration(self, iteration: int, stop: int) -> None:
        """The solver's iteration and the end of its running step (the fork's ``Layer::set_iter``)."""
        self.progress = (int(iteration), int(stop))

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        _, get, data = self._next_batch()  # host-made floats, no shared buffer to give back
        label = get("label_warmup") if self.warmup and warming_up(self.progress) else get("label")
        tops = [data, torch.as_tensor(label)]
        if self.seg is not None:
            tops.append(torch.as_tensor(get("seg_label")))
        tops = tops[: len(self.param.top)]
        self._top_shapes = [tuple(t.shape) for t in tops]
        return tops

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        from neocaffe.data.examples import annotated_example

        path = annotated_example()
        # one image a batch and no random crop: the box count of the first record is the batch's
        return [Example(f'name: "d" type: "AnnotatedData" top: "data" top: "label" data_param {{ source: "{path}" '
                        'batch_size: 1 backend: LMDB } transform_param { mean_value: 104 mean_value: 117 '
                        'mean_value: 123 resize_param { prob: 1 resize_mode: WARP height: 12 width: 12 } }',
                        [], grad_bottoms=(), grad_params=False, phase=1)]
