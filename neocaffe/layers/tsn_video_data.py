"""Temporal Segment Networks' ``VideoData`` layer: ``num_segments`` snippets of ``new_length`` RGB or optical-flow
frames per video, sampled across the video, cropped and mirrored as TSN trains.

Lineage: yjxiong/caffe, branch ``action_recog`` @ 9831a2b4 (TSN's Caffe; the models and lists of
yjxiong/temporal-segment-networks @ 2c5e5e7): ``src/caffe/layers/video_data_layer.cpp``,
``src/caffe/util/io.cpp`` (``ReadSegment*ToDatum``), ``src/caffe/data_transformer.cpp``. Sampling and reading:
:mod:`neocaffe.data.tsn_frames`; crops, mirrors, means: :mod:`neocaffe.data.tsn_transform`.

``VideoData`` is also SSD's (a webcam or video file), C3D-v1.0's (``image_data_param``) and D-X-Y's type
name; TSN's form is told by the fields set (NUMBERING.md rule 6): a ``video_data_param`` that sets any of
``source``, ``new_length``, ``num_segments``, ``modality``, ``name_pattern`` is TSN's (setting SSD's
``video_type``/``device_id``/``video_file``/``skip_frames`` with it is an error); ``VideoData`` builds this class
for it (``neocaffe/layers/video_data.py``).

Fields read: ``video_data_param`` ``source``, ``batch_size``, ``new_length``, ``num_segments``, ``modality``
(RGB or FLOW; the fork's default FLOW), ``name_pattern``, ``new_height``/``new_width``, ``shuffle``,
``grayscale``; ``transform_param`` as :mod:`neocaffe.data.tsn_transform` lists. (The fork's ``Modality`` at this commit is RGB
and FLOW only: it has no RGBDiff form.) Tops, as the fork's: data
``(batch_size, C, crop, crop)`` (``C`` = 3, 1 or 2 per frame x ``new_length`` x ``num_segments``; without a
crop the frames' size) and the labels ``(batch_size, 1, 1, 1)``. TSN's nets reshape the data to one image per
snippet (``Reshape`` to ``-1 x 3 x 224 x 224``, or ``x 10`` for 5 flow frames).

The fork's VideoData does not read ``video_data_param`` ``rand_skip``, ``crop_size``, ``mirror``, ``scale``,
``mean_file``, ``encoded`` (``transform_param`` holds the transform), nor ``transform_param``
``original_image``/``stride``/``upper_*`` (its segmentation transforms' fields): neither does this layer, and
it logs a warning naming those set. Setup reads the first video at TEST offsets to learn the item's size (the
fork draws TRAIN offsets there, with no guard for a video shorter than ``new_length`` per segment).
Deviations: the random draws (neocaffe's seeded generator, not the fork's ``caffe_rng_rand``), and an
unreadable frame is an error (the fork loops on it forever).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neocaffe.data.transformer import load_mean_file
from neocaffe.data.tsn_frames import (TSNBatchMaker, TSNEntry, TSNSpec, default_pattern, read_segments,
                                      read_tsn_list, segment_offsets)
from neocaffe.data.tsn_transform import TSNTransform, group_means
from neocaffe.layers.base import TEST, TRAIN, Example, LayerSetupError, Shape
from neocaffe.layers.c3d_video_data import mean_crops
from neocaffe.layers.prefetched import DATA_ERRORS, PrefetchedLayer, data_seed

log = logging.getLogger("neocaffe.data")
TSN_FIELDS = ("source", "new_length", "num_segments", "modality", "name_pattern")
SSD_FIELDS = ("video_type", "device_id", "video_file", "skip_frames")
UNREAD_VIDEO = ("rand_skip", "crop_size", "mirror", "scale", "mean_file", "encoded")
UNREAD_TRANSFORM = ("original_image", "stride", "upper_size", "upper_height", "upper_width")


def tsn_claims(param: Any) -> bool:
    """Whether a ``VideoData`` LayerParameter is TSN's (see the module docstring)."""
    vp = param.video_data_param
    tsn = [f for f in TSN_FIELDS if vp.HasField(f)]
    if not tsn:
        return False
    ssd = [f for f in SSD_FIELDS if vp.HasField(f)]
    if ssd:
        raise LayerSetupError(f"layer '{param.name}' (VideoData) sets TSN's video_data_param fields {tsn} and SSD's "
                              f"{ssd}: one VideoData layer is of one lineage")
    return True


class TSNVideoData(PrefetchedLayer):
    """See the module docstring. Built by ``VideoData`` for a layer of TSN's fields."""

    type_name = "VideoData"
    exact_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        vp, tp = self.param.video_data_param, self.param.transform_param
        if vp.batch_size <= 0 or vp.new_length <= 0 or vp.num_segments <= 0:
            raise self.error(f"video_data_param batch_size, new_length and num_segments must be positive; received "
                             f"{vp.batch_size}, {vp.new_length}, {vp.num_segments}")
        if (vp.new_height == 0) != (vp.new_width == 0):
            log.warning("layer '%s': video_data_param sets only one of new_height/new_width (%d, %d); the fork "
                        "resizes only with both, and so does this layer", self.name, vp.new_height, vp.new_width)
        unread = [f"video_data_param.{f}" for f in UNREAD_VIDEO if vp.HasField(f)]
        unread += [f"transform_param.{f}" for f in UNREAD_TRANSFORM if tp.HasField(f)]
        if unread:
            log.warning("layer '%s': %s set; TSN's VideoData does not read them (transform_param holds crop, mirror, "
                        "scale and mean), so they change nothing", self.name, ", ".join(unread))
        if tp.mean_file and len(tp.mean_value):
            raise self.error("Cannot specify mean_file and mean_value at the same time")
        pattern = vp.name_pattern or default_pattern(vp.modality)
        self.spec = TSNSpec(int(vp.modality), pattern, int(vp.new_length), int(vp.num_segments), int(vp.new_height),
                            int(vp.new_width), bool(vp.grayscale), self.phase == TRAIN)
        self.transform = TSNTransform(int(tp.crop_size), bool(tp.mirror), bool(tp.multi_scale), bool(tp.fix_crop),
                                      bool(tp.more_fix_crop), tuple(float(r) for r in tp.scale_ratios),
                                      int(tp.max_distort), bool(tp.is_flow), self.phase == TRAIN,
                                      bool(tp.multi_scale))
        if tp.multi_scale and not tp.crop_size:
            log.error("Multi scale augmentation is only activated with crop_size set.")
        try:
            self.entries = read_tsn_list(vp.source)
            log.info("A total of %d videos.", len(self.entries))
            first = self.entries[0]
            offsets = segment_offsets(first.frames, self.spec.segments, self.spec.length, False, None)
            item = read_segments(first.path, offsets, self.spec, f"{vp.source}:{first.line} ('{first.path}')")
        except (*DATA_ERRORS, TypeError, ValueError) as e:  # TypeError/ValueError: a name_pattern printf rejects
            raise self.error(str(e)) from None
        C, H, W = (int(d) for d in item.shape)
        crop = int(tp.crop_size)
        if crop and (H < crop or W < crop):
            raise self.error(f"crop_size {crop} is larger than the first video's {H}x{W} frames (the fork's CHECK_GE)")
        self.item_shape = (C, crop, crop) if crop else (C, H, W)
        self.batch_size, self.seed = int(vp.batch_size), data_seed()
        self.register_buffer("mean", self._mean(tp, C, H, W), persistent=False)
        self.scale = float(np.float32(tp.scale))
        self._top_shapes: list[Shape] = [(self.batch_size, *self.item_shape), (self.batch_size, 1, 1, 1)]
        log.info("output data size: %s", ",".join(str(d) for d in self._top_shapes[0]))

    def _mean(self, tp: Any, C: int, H: int, W: int) -> Tensor:
        """Per-channel mean values as C x 1 x 1, or the mean file's C x H x W (its size: the frames' before the
        crop, the fork's CHECKs)."""
        try:
            if tp.mean_file:
                mean = load_mean_file(tp.mean_file)
                if mean.shape != (C, H, W):
                    raise self.error(f"mean_file '{tp.mean_file}' is {'x'.join(map(str, mean.shape))}; the items are "
                                     f"{C}x{H}x{W} before the crop (the fork's CHECK_EQ)")
                return torch.from_numpy(mean)
            return torch.from_numpy(group_means(list(tp.mean_value), C).reshape(C, 1, 1))
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None

    def _maker(self) -> TSNBatchMaker:
        return TSNBatchMaker(self.param.video_data_param.source, self.entries, self.spec, self.transform,
                             self.item_shape, self.batch_size, self.seed,
                             shuffle=bool(self.param.video_data_param.shuffle), rank=self.context.rank,
                             world=self.context.world)

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        batch, get, x = self._next_batch()
        mean = self.mean.to(x.device)
        if self.param.transform_param.mean_file:  # a mean file, at each item's offset (or (0, 0))
            offsets = np.zeros_like(get("offsets")) if self.transform.mean_file_fixed else get("offsets")
            if self.transform.crop:  # the mean under each (mirrored) crop
                mean = mean_crops(mean[None], self.transform.crop, offsets, get("mirror"))
            else:  # the whole mean, flipped with the mirrored items (the fork reads it at the source pixel)
                flip = torch.as_tensor(np.asarray(get("mirror"), bool), device=x.device).reshape(-1, 1, 1, 1)
                mean = torch.where(flip, mean.flip(-1), mean)
        data = (x.to(torch.float32) - mean) * self.scale
        label = torch.as_tensor(np.asarray(get("label"), np.float32)).reshape(-1, 1, 1, 1)
        self._release(batch)
        return [data, label]

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        from neocaffe.data.tsn_frames import tsn_example

        src = tsn_example()
        return [
            Example(f'name: "v" type: "VideoData" top: "data" top: "label" video_data_param {{ source: "{src}" '
                    'batch_size: 2 new_length: 1 num_segments: 3 modality: RGB name_pattern: "img_%05d.jpg" '
                    'shuffle: true } transform_param { crop_size: 6 mirror: true fix_crop: true more_fix_crop: true '
                    'multi_scale: true max_distort: 1 scale_ratios: [1, .875, .75, .66] '
                    'mean_value: [104, 117, 123] }', [], grad_bottoms=(), grad_params=False, phase=TRAIN),
            Example(f'name: "v" type: "VideoData" top: "data" top: "label" video_data_param {{ source: "{src}" '
                    'batch_size: 3 new_length: 2 num_segments: 2 modality: FLOW name_pattern: "flow_%c_%05d.jpg" '
                    'new_height: 8 new_width: 10 } transform_param { crop_size: 7 mirror: false mean_value: 128 '
                    'is_flow: true scale: 0.5 }', [], grad_bottoms=(), grad_params=False, phase=TEST),
        ]


__all__ = ["TSNEntry", "TSNVideoData", "tsn_claims"]
