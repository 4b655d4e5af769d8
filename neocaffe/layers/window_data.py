"""BVLC Caffe's ``WindowData`` layer (R-CNN fine-tuning; ``src/caffe/layers/window_data_layer.cpp``).

Fields read: ``window_data_param`` ``source`` (the window file, see :mod:`neocaffe.data.windows`),
``root_folder``, ``batch_size``, ``fg_threshold``, ``bg_threshold``, ``fg_fraction``, ``context_pad``,
``crop_mode`` (``warp`` or ``square``), ``cache_images`` (the image files are read into memory at setup),
``scale``; and ``transform_param`` ``crop_size`` (required), ``mirror``, ``mean_file`` or ``mean_value``.
As in Caffe, ``transform_param.scale`` is not read (the layer scales by ``window_data_param.scale``), and a
V1 net's ``window_data_param`` ``crop_size``/``mirror``/``mean_file`` reach it through the upgrade to
``transform_param``. Tops: the warped windows (batch_size, 3, crop_size, crop_size) and their classes
(batch_size). Windows are cut, warped and normalised in worker processes (``neocaffe.data.prefetch``).
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neocaffe.data.examples import example_folder, window_example
from neocaffe.data.prefetch import default_workers
from neocaffe.data.transformer import load_mean_file
from neocaffe.data.windows import WindowBatchMaker, read_window_file
from neocaffe.layers.base import TEST, Example, Shape
from neocaffe.layers.prefetched import DATA_ERRORS, PrefetchedLayer, data_seed
from neocaffe.layers.registry import register_layer

log = logging.getLogger("neocaffe.data")
CROP_MODES = ("warp", "square")


@register_layer("WindowData")
class WindowDataLayer(PrefetchedLayer):
    """See the module docstring."""

    exact_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        wp, tp = self.param.window_data_param, self.param.transform_param
        if not wp.source:
            raise self.error("window_data_param.source is empty; expected the path of a window file")
        if wp.batch_size <= 0:
            raise self.error(f"window_data_param.batch_size must be positive; received {wp.batch_size}")
        if tp.crop_size <= 0:
            raise self.error(f"transform_param.crop_size must be positive (every window is warped to it); "
                             f"received {tp.crop_size}")
        if wp.crop_mode not in CROP_MODES:
            raise self.error(f"window_data_param.crop_mode must be one of {', '.join(CROP_MODES)}; "
                             f"received '{wp.crop_mode}'")
        if 2 * wp.context_pad >= tp.crop_size:
            raise self.error(f"window_data_param.context_pad {wp.context_pad} leaves no room in crop_size "
                             f"{tp.crop_size}")
        if tp.HasField("scale"):
            log.warning("layer '%s': WindowData scales by window_data_param.scale (%g), as Caffe; "
                        "transform_param.scale (%g) is not read", self.name, wp.scale, tp.scale)
        log.info("Window data layer: foreground (object) overlap threshold: %g, background (non-object) overlap "
                 "threshold: %g, foreground sampling fraction: %g, cache_images: %s, root_folder: %s",
                 wp.fg_threshold, wp.bg_threshold, wp.fg_fraction, wp.cache_images, wp.root_folder)
        try:
            windows = read_window_file(wp.source, wp.root_folder, wp.fg_threshold, wp.bg_threshold)
            mean = self._mean(tp)
            cache = [self._read_bytes(p, windows.path, line) for p, _, line in windows.images] \
                if wp.cache_images else None
        except (*DATA_ERRORS, OSError) as e:
            raise self.error(str(e)) from None
        for path, (c, _, _), line in windows.images:
            if c != 3:
                raise self.error(f"{wp.source}:{line}: image '{path}' is listed with {c} channels; WindowData "
                                 "reads every image in colour (3 channels), as Caffe")
        num_fg = int(np.float32(wp.batch_size) * np.float32(wp.fg_fraction))
        for kind, n, rows in (("foreground", num_fg, windows.fg), ("background", wp.batch_size - num_fg, windows.bg)):
            if n and not len(rows):
                raise self.error(f"{wp.source} has no {kind} windows, and every batch takes {n} of them "
                                 f"(fg_threshold {wp.fg_threshold:g}, bg_threshold {wp.bg_threshold:g}, "
                                 f"fg_fraction {wp.fg_fraction:g})")
        log.info("Number of images: %d", len(windows.images))
        for label in sorted(set(windows.fg[:, 1].astype(int).tolist()) | {0}):
            n = len(windows.bg) if label == 0 else int((windows.fg[:, 1] == label).sum())
            log.info("class %d has %d samples", label, n)
        log.info("Amount of context padding: %d", wp.context_pad)
        log.info("Crop mode: %s", wp.crop_mode)
        self.windows, self.mean_array, self.cache = windows, mean, cache
        self.batch_size, self.seed = int(wp.batch_size), data_seed()
        crop = int(tp.crop_size)
        self._top_shapes: list[Shape] = [(self.batch_size, 3, crop, crop), (self.batch_size,)]
        log.info("output data size: %s", ",".join(str(d) for d in self._top_shapes[0]))

    def _mean(self, tp: Any) -> np.ndarray | None:
        crop = int(tp.crop_size)
        if tp.mean_file and len(tp.mean_value):
            raise self.error("Cannot specify mean_file and mean_value at the same time")
        if not tp.mean_file:
            return None
        mean = load_mean_file(tp.mean_file)
        off = (mean.shape[2] - crop) // 2  # Caffe takes the offset from the width for both axes
        if mean.shape[0] != 3 or off < 0 or off + crop > mean.shape[1]:
            raise self.error(f"mean_file '{tp.mean_file}' is {'x'.join(map(str, mean.shape))}; WindowData needs "
                             f"3 channels and a {crop}x{crop} crop at offset ({off}, {off}) inside it")
        return mean

    @staticmethod
    def _read_bytes(path: str, window_file: str, line: int) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            raise OSError(f"{window_file}:{line}: Could not open or find file {path}") from None

    def _mean_values(self) -> list[float] | None:
        mv = list(self.param.transform_param.mean_value)
        if not mv:
            return None
        if len(mv) not in (1, 3):
            raise self.error(f"Specify either 1 mean_value or as many as channels: 3; received {len(mv)}")
        return mv * 3 if len(mv) == 1 else mv

    def _maker(self) -> WindowBatchMaker:
        wp, tp = self.param.window_data_param, self.param.transform_param
        return WindowBatchMaker(self.windows, self.batch_size, tp.crop_size, tp.mirror, wp.scale, wp.fg_fraction,
                                wp.context_pad, wp.crop_mode == "square", self.seed, self.mean_array,
                                self._mean_values(), self.cache, self.context.rank, self.context.world)

    def _workers_and_depth(self) -> tuple[int, int]:
        return default_workers(math.ceil(len(self.windows.images) / self.batch_size), self.context.data_workers), 4

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        _, get, data = self._next_batch()  # host-made floats, no shared buffer to give back
        return [data, torch.as_tensor(get("label"))]

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        folder, src = example_folder(), window_example()
        return [
            Example(f'name: "w" type: "WindowData" top: "data" top: "label" window_data_param {{ source: "{src}" '
                    f'root_folder: "{folder}/" batch_size: 4 fg_fraction: 0.5 context_pad: 1 }} '
                    'transform_param { crop_size: 6 mirror: true mean_value: 100 }',
                    [], grad_bottoms=(), grad_params=False, phase=0),
            Example(f'name: "w" type: "WindowData" top: "data" top: "label" window_data_param {{ source: "{src}" '
                    f'root_folder: "{folder}/" batch_size: 3 crop_mode: "square" cache_images: true scale: 0.5 }} '
                    'transform_param { crop_size: 5 }', [], grad_bottoms=(), grad_params=False, phase=TEST),
        ]


__all__ = ["WindowDataLayer"]
