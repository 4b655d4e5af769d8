"""Cascade R-CNN's data layers ``DetectionData`` (training) and ``EvalData`` (testing)
(zhaoweicai/cascade-rcnn @ 2252f46158ea6555868ca6fa5c221ea71d9b5e6c, ``src/caffe/layers/
detection_data_layer.cpp``, ``eval_data_layer.cpp``; window file: :mod:`neocaffe.data.cascade_windows`,
batches: :mod:`neocaffe.data.cascade_batches`).

DetectionData tops: the images (B, 3, H, W), one label blob (B, 6, round(H / stride), round(W / stride))
``[label, cx, cy, w, h, overlap]`` per ``stride`` and, with ``output_gt_boxes``, the boxes (n, 8, 1, 1)
``[item, x1, y1, x2, y2, label, ignore, difficult]`` (one row of -1 when the batch has none). Fields read:
``detection_data_param`` (all but ``resize_param`` and ``scale``, which the fork does not read either) and
``transform_param`` ``mirror``, ``mean_value``, ``scale``. The template (H, W) can change from batch to batch
(the first image's orientation and ``template_ratio``), as in the fork.

EvalData tops: the images (B, 3, H, W), the boxes (n, 8, 1, 1) and, with a third top, each image's
(height, width) (B, 2, 1, 1); fields ``eval_data_param`` (``source``, ``root_folder``, ``batch_size``,
``resize_width``/``resize_height``, ``short_size``/``long_size``) and ``transform_param`` ``mean_value``,
``scale``.

Deviations: the fork's boost draws and its reshuffle at the end of a pass are replaced by draws from (layer
seed, batch) and a fresh order per pass (so a run repeats and resumes exactly); ``cache_images`` is read
but images are always read from disk; image indices of the window file must count 0, 1, ...
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neocaffe.data.cascade_batches import DetectionBatchMaker, DetectionConfig, EvalBatchMaker, c_round
from neocaffe.data.cascade_windows import SHUFFLES, CascadeWindows, read_cascade_windows
from neocaffe.data.examples import example_folder
from neocaffe.data.prefetch import default_workers
from neocaffe.layers.base import TEST, TRAIN, Example, Shape
from neocaffe.layers.prefetched import DATA_ERRORS, PrefetchedLayer, data_seed
from neocaffe.layers.registry import register_layer

log = logging.getLogger("neocaffe.data")


def _both(p: Any, a: str, b: str) -> bool:
    return p.HasField(a) and p.HasField(b)


def _means(layer: PrefetchedLayer, channels: int) -> list[float] | None:
    mv = list(layer.param.transform_param.mean_value)
    if not mv:
        return None
    if len(mv) not in (1, channels):
        raise layer.error(f"Specify either 1 mean_value or as many as channels: {channels}; received {len(mv)}")
    return mv * channels if len(mv) == 1 else mv


def _read(layer: PrefetchedLayer, source: str, root: str) -> CascadeWindows:
    if not source:
        raise layer.error("source is empty; expected the path of a window file")
    try:
        return read_cascade_windows(source, root)
    except (*DATA_ERRORS, OSError) as e:
        raise layer.error(str(e)) from None


@register_layer("DetectionData")
class DetectionData(PrefetchedLayer):
    """See the module docstring."""

    min_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p, tp = self.param.detection_data_param, self.param.transform_param
        self.windows = _read(self, p.source, p.root_folder)
        n_blobs = len(p.stride)
        if len(p.field_h) != n_blobs or len(p.field_w) != n_blobs:
            raise self.error(f"needs one field_w and field_h per stride; received {n_blobs} stride, "
                             f"{len(p.field_w)} field_w, {len(p.field_h)} field_h")
        want = 1 + n_blobs + int(p.output_gt_boxes)
        if len(self.param.top) != want:
            raise self.error(f"takes {want} tops (data, {n_blobs} label blobs"
                             f"{', gt boxes' if p.output_gt_boxes else ''}); received {len(self.param.top)}")
        if p.coord_num != 4:
            raise self.error(f"detection_data_param.coord_num must be 4 (labels of 6 channels); received {p.coord_num}")
        if p.fg_threshold <= 0:
            raise self.error(f"detection_data_param.fg_threshold must be > 0; received {p.fg_threshold}")
        if p.batch_size <= 0:
            raise self.error(f"detection_data_param.batch_size must be positive; received {p.batch_size}")
        if p.HasField("shuffle") and p.shuffle not in SHUFFLES:
            raise self.error(f"Unknown shuffling Function '{p.shuffle}'; expected one of {list(SHUFFLES)}")
        self._check_exclusive(p)
        c, h, w = self.windows.images[-1][1]
        th, tw = self._setup_template(p, h, w)
        f32 = np.float32
        self.cfg = DetectionConfig(
            batch_size=int(p.batch_size), strides=[int(s) for s in p.stride], field_ws=[float(v) for v in p.field_w],
            field_hs=[float(v) for v in p.field_h], mirror=bool(tp.mirror), scale=float(tp.scale), mean=_means(self, c),
            fg_threshold=float(f32(p.fg_threshold)), ignore_fg_threshold=float(f32(p.ignore_fg_threshold)),
            min_gt_width=float(p.min_gt_width), min_gt_height=float(p.min_gt_height),
            resize_wh=(int(p.resize_width), int(p.resize_height)) if _both(p, "resize_width", "resize_height") else None,
            resize_ratio=float(p.resize_ratio) if p.HasField("resize_ratio") else None,
            short_long=(int(p.short_size), int(p.long_size)) if _both(p, "short_size", "long_size") else None,
            crop_wh=(int(p.crop_width), int(p.crop_height)) if _both(p, "crop_width", "crop_height") else None,
            crop_short_long=((int(p.crop_short_size), int(p.crop_long_size))
                             if _both(p, "crop_short_size", "crop_long_size") else None),
            template_ratios=[float(v) for v in p.template_ratio],
            scale_range=(float(p.min_scale), float(p.max_scale)) if _both(p, "min_scale", "max_scale") else None,
            ratio_range=((float(p.low_scale_ratio), float(p.high_scale_ratio))
                         if _both(p, "low_scale_ratio", "high_scale_ratio") else None),
            multiscale_prob=float(f32(p.multiscale_prob)),
            whaspect=(float(p.min_whaspect), float(p.max_whaspect)) if _both(p, "min_whaspect", "max_whaspect") else None,
            anchor_margin=float(p.anchor_ignore_margin_ratio) if p.HasField("anchor_ignore_margin_ratio") else None,
            anchor_iou=float(p.anchor_ignore_iou_thr) if p.HasField("anchor_ignore_iou_thr") else None,
            pickup_iou_thr=float(f32(p.pickup_iou_thr)), shuffle=p.shuffle if p.HasField("shuffle") else None,
            mix_group_size=int(p.mix_group_size), distort=p.distort_param if p.HasField("distort_param") else None,
            template=(th, tw))
        if self.cfg.shuffle == "random_mix_aspect" and self.cfg.mix_group_size <= 0:
            raise self.error(f"detection_data_param.mix_group_size must be > 0; received {p.mix_group_size}")
        self.batch_size, self.seed, self.entries = int(p.batch_size), data_seed(), self.windows.images
        b = self.batch_size
        self._top_shapes: list[Shape] = [(b, 3, th, tw)] + [
            (b, 6, c_round(np.float32(th) / np.float32(s)), c_round(np.float32(tw) / np.float32(s))) for s in p.stride]
        if p.output_gt_boxes:
            self._top_shapes.append((1, 8, 1, 1))
        log.info("DetectionData: %d images, output data size: %s", len(self.windows.images),
                 ",".join(map(str, self._top_shapes[0])))

    def _check_exclusive(self, p: Any) -> None:
        rules = [(_both(p, "resize_width", "resize_height"), ("short_size", "long_size", "resize_ratio")),
                 (p.HasField("resize_ratio"), ("resize_width", "resize_height", "short_size", "long_size")),
                 (_both(p, "short_size", "long_size"), ("resize_width", "resize_height", "resize_ratio")),
                 (_both(p, "crop_width", "crop_height"), ("crop_short_size", "crop_long_size")),
                 (_both(p, "crop_short_size", "crop_long_size"), ("crop_width", "crop_height")),
                 (_both(p, "min_scale", "max_scale"), ("low_scale_ratio", "high_scale_ratio")),
                 (_both(p, "low_scale_ratio", "high_scale_ratio"), ("min_scale", "max_scale"))]
        for on, others in rules:
            clash = [f for f in others if p.HasField(f)]
            if on and clash:
                raise self.error(f"detection_data_param sets {', '.join(clash)} with options they conflict with "
                                 "(the fork's 'No need for ...' checks)")
        if _both(p, "short_size", "long_size") and p.long_size <= p.short_size:
            raise self.error(f"long_size {p.long_size} must be > short_size {p.short_size}")
        if _both(p, "crop_short_size", "crop_long_size") and p.crop_long_size <= p.crop_short_size:
            raise self.error(f"crop_long_size {p.crop_long_size} must be > crop_short_size {p.crop_short_size}")
        if _both(p, "crop_width", "crop_height") and (p.crop_width <= 0 or p.crop_height <= 0):
            raise self.error(f"crop_width and crop_height must be > 0; received {p.crop_width}, {p.crop_height}")

    @staticmethod
    def _setup_template(p: Any, h: int, w: int) -> tuple[int, int]:
        """DataLayerSetUp's template (height, width): from the last listed image's size."""
        if _both(p, "resize_width", "resize_height"):
            th, tw = int(p.resize_height), int(p.resize_width)
        elif p.HasField("resize_ratio"):
            th, tw = c_round(h * np.float32(p.resize_ratio)), c_round(w * np.float32(p.resize_ratio))
        elif _both(p, "short_size", "long_size"):
            th, tw = int(p.long_size), int(p.short_size)
        else:
            th, tw = h, w
        if _both(p, "crop_width", "crop_height"):
            th, tw = int(p.crop_height), int(p.crop_width)
        elif _both(p, "crop_short_size", "crop_long_size"):
            th, tw = int(p.crop_long_size), int(p.crop_short_size)
        return th, tw

    def _maker(self) -> DetectionBatchMaker:
        return DetectionBatchMaker(self.windows, self.cfg, self.seed, bool(self.param.detection_data_param.output_gt_boxes),
                                   self.context.rank, self.context.world)

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        _, get, data = self._next_batch()
        tops = [data] + [torch.as_tensor(x, device="cpu") for x in get("labels")]
        if self.param.detection_data_param.output_gt_boxes:
            tops.append(torch.as_tensor(get("gt"), device="cpu").reshape(-1, 8, 1, 1))
        return tops

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        folder, src = example_folder(), cascade_example()
        one = ('detection_data_param {{ source: "{src}" root_folder: "{folder}/" batch_size: 1 resize_width: 32 '
               'resize_height: 32 stride: 8 field_w: 16 field_h: 16 output_gt_boxes: true fg_threshold: 0.5 }} '
               'transform_param {{ mirror: true mean_value: 100 scale: 0.5 }}')
        two = ('detection_data_param {{ source: "{src}" root_folder: "{folder}/" batch_size: 2 short_size: 32 '
               'long_size: 64 stride: 8 stride: 16 field_w: 16 field_h: 16 field_w: 32 field_h: 24 min_scale: 8 '
               'max_scale: 24 multiscale_prob: 1 anchor_ignore_margin_ratio: 0.5 }} transform_param {{ mean_value: 104 '
               'mean_value: 117 mean_value: 123 }}')
        return [Example('name: "d" type: "DetectionData" top: "data" top: "l8" top: "gt" '
                        + one.format(src=src, folder=folder), [], grad_bottoms=(), grad_params=False, phase=TRAIN),
                Example('name: "d" type: "DetectionData" top: "data" top: "l8" top: "l16" '
                        + two.format(src=src, folder=folder), [], grad_bottoms=(), grad_params=False, phase=TRAIN)]


@register_layer("EvalData")
class EvalData(PrefetchedLayer):
    """See the module docstring."""

    min_tops = 2
    max_tops = 3

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p, tp = self.param.eval_data_param, self.param.transform_param
        self.windows = _read(self, p.source, p.root_folder)
        if p.batch_size <= 0:
            raise self.error(f"eval_data_param.batch_size must be positive; received {p.batch_size}")
        resize = (int(p.resize_width), int(p.resize_height)) if _both(p, "resize_width", "resize_height") else None
        if resize is None and p.batch_size != 1:
            raise self.error(f"eval_data_param.batch_size must be 1 without resize_width and resize_height (the "
                             f"images' sizes differ); received {p.batch_size}")
        short_long = (int(p.short_size), int(p.long_size)) if _both(p, "short_size", "long_size") else None
        c, h, w = self.windows.images[-1][1]
        th, tw = (resize[1], resize[0]) if resize else (short_long[1], short_long[0]) if short_long else (h, w)
        self.batch_size, self.seed, self.entries = int(p.batch_size), data_seed(), self.windows.images
        self.args = (float(tp.scale), _means(self, c), resize, short_long)
        b = self.batch_size
        self._top_shapes: list[Shape] = [(b, 3, th, tw), (1, 8, 1, 1), (b, 2, 1, 1)][:len(self.param.top)]

    def _maker(self) -> EvalBatchMaker:
        return EvalBatchMaker(self.windows, self.batch_size, *self.args, rank=self.context.rank, world=self.context.world)

    def _workers_and_depth(self) -> tuple[int, int]:
        return default_workers(math.ceil(len(self.entries) / self.batch_size), self.context.data_workers), 4

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        _, get, data = self._next_batch()
        tops = [data, torch.as_tensor(get("gt"), device="cpu").reshape(-1, 8, 1, 1)]
        if len(self.param.top) >= 3:
            tops.append(torch.as_tensor(get("sizes"), device="cpu").reshape(-1, 2, 1, 1))
        return tops

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        folder, src = example_folder(), cascade_example()
        return [Example(f'name: "e" type: "EvalData" top: "data" top: "gt" top: "size" eval_data_param {{ source: '
                        f'"{src}" root_folder: "{folder}/" batch_size: 1 resize_width: 32 resize_height: 32 }} '
                        'transform_param { mean_value: 100 }', [], grad_bottoms=(), grad_params=False, phase=TEST)]


def cascade_example() -> str:
    """A window file of the fork's format for the contract examples: three colour images in the example
    folder (48 x 40 portrait, 40 x 48 landscape, 48 x 40), the first with one box, the others with several and
    a region of no interest (written once)."""
    import cv2

    folder = example_folder()
    path = os.path.join(folder, "cascade_windows.txt")
    if not os.path.exists(path):
        g = np.random.default_rng(11)
        sizes = [(48, 40), (40, 48), (48, 40)]
        boxes = [[(1, 0, 0, 5, 8, 30, 36)], [(2, 0, 0, 4, 4, 20, 30), (1, 1, 0, 25, 10, 44, 35)],
                 [(1, 0, 1, 2, 3, 38, 44), (3, 0, 0, 10, 20, 17, 30)]]
        roni = [[], [(30, 0, 47, 8)], [(0, 40, 10, 47)]]
        with open(path, "w") as f:
            for i, (h, w) in enumerate(sizes):
                cv2.imwrite(os.path.join(folder, f"casc{i}.png"), g.integers(0, 256, (h, w, 3), dtype=np.uint8))
                f.write(f"# {i}\ncasc{i}.png\n3\n{h}\n{w}\n{len(boxes[i])}\n")
                f.writelines(" ".join(map(str, b)) + "\n" for b in boxes[i])
                f.write(f"{len(roni[i])}\n")
                f.writelines(" ".join(map(str, r)) + "\n" for r in roni[i])
    return path


__all__ = ["DetectionData", "EvalData", "cascade_example"]
