"""C3D-v1.0's ``VideoData`` layer: clips of frames or video from a list, as 5-D blobs for Convolution3D.

Lineage: facebookarchive/C3D @ 71336a2 (``C3D-v1.0``), ``src/caffe/layers/video_data_layer.cpp`` with
``src/caffe/util/image_io.cpp``; its V1 type ``VIDEO_DATA`` upgrades to ``VideoData``, the type name of SSD's
video layer (``neocaffe/layers/video_data.py``). The two are told apart by the fields set (NUMBERING.md rule
6): C3D's reads only ``image_data_param``, SSD's ``video_data_param``, ``data_param`` and ``transform_param``;
a ``VideoData`` layer that sets ``image_data_param`` is C3D's (setting it with any of SSD's is an error), any
other is SSD's, whose behaviour is unchanged.

Fields read (``image_data_param``): ``source``, ``use_image`` (frame folders, else video files),
``new_length`` (> 0), ``new_height``/``new_width`` (both or neither), ``sampling_rate``,
``use_temporal_jitter``, ``batch_size``, ``crop_size``, ``mirror`` (only with ``crop_size``, the fork's
FATAL), ``shuffle`` (at setup and every pass), ``rand_skip``, ``mean_file`` (the fork's 5-D BlobProto of
shape 1 x 3 x new_length x H x W, the clip's uncropped size) or ``mean_value``, ``scale``. ``show_data``
(an OpenCV window per channel) is not shown. Reading, cropping and mirroring:
:mod:`neocaffe.data.c3d_clips`. Each value is ``(pixel - mean) * scale`` in float32, the mean taken at the
clip's crop offset (and mirrored with it), as the fork indexes it. Tops: data ``(batch_size, 3, new_length,
crop, crop)`` (or the clip's height and width without a crop) and, optionally, the labels ``(batch_size, 1,
1, 1, 1)``, the fork's shapes.

Where the fork aborts or reads past its buffers, an error here: ``mirror`` in the TEST phase (the fork has no
random generator there and aborts), a crop not smaller than the clip (its CHECK_GT), a mean of another
shape, clips of different sizes. Setup reads the first clip to learn its size as the fork does, but with
frames and ``use_temporal_jitter`` from frame 0 (the fork starts that read at the listed frame count, past
the folder's last frame).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neocaffe.data.c3d_clips import ClipBatchMaker, ClipSpec, read_clip_list
from neocaffe.layers.base import TRAIN, Example, LayerSetupError, Shape
from neocaffe.layers.prefetched import DATA_ERRORS, PrefetchedLayer, data_seed

log = logging.getLogger("neocaffe.data")
SSD_FIELDS = ("video_data_param", "data_param", "transform_param")


def video_data_lineage(param: Any) -> str:
    """``"c3d"`` for a ``VideoData`` LayerParameter that sets ``image_data_param``, else ``"ssd"``."""
    if not param.HasField("image_data_param"):
        return "ssd"
    ssd = [f for f in SSD_FIELDS if param.HasField(f)]
    if ssd:
        raise LayerSetupError(f"layer '{param.name}' (VideoData) sets image_data_param (C3D-v1.0's VideoData) and "
                         f"{ssd} (SSD's): one VideoData layer is of one lineage")
    return "c3d"


def mean_crops(mean: Tensor, crop: int, offsets: Any, mirror: Any) -> Tensor:
    """The C3D data layers' mean (1 x C x L x H x W) under each item of a batch: the whole mean without a
    crop, else its crop at the item's (h, w) offset, mirrored with the item; one crop for the batch where
    all items agree (TEST's centre), which broadcasts."""
    if not crop:
        return mean
    offsets, mirror = np.asarray(offsets).reshape(-1, 2), np.asarray(mirror).reshape(-1)
    crops = {}
    for (h0, w0), m in zip(offsets.tolist(), mirror.tolist()):
        if (h0, w0, m) not in crops:
            piece = mean[..., h0:h0 + crop, w0:w0 + crop]
            crops[(h0, w0, m)] = piece.flip(-1) if m else piece
    if len(crops) == 1:
        return next(iter(crops.values()))
    return torch.cat([crops[(h0, w0, m)] for (h0, w0), m in zip(offsets.tolist(), mirror.tolist())])


def c3d_mean(layer: Any, path: str, want: tuple[int, ...], who: str, axes: str) -> Tensor:
    """C3D-v1.0's 5-D mean BlobProto at ``path`` (its ``data_mean_``) as a float32 tensor of shape ``want``;
    an error naming the layer and the file where it cannot be read or has another shape (``who`` needs
    ``want``, whose ``axes`` are named)."""
    from neocaffe.io.binaryproto import read_blobproto

    try:
        arr = np.asarray(read_blobproto(path).data, np.float32)
    except (OSError, ValueError) as e:
        raise layer.error(str(e)) from None
    if arr.shape != tuple(want):
        raise layer.error(f"mean_file '{path}' holds a blob of shape {tuple(arr.shape)}; {who} need {tuple(want)} "
                          f"({axes})")
    return torch.from_numpy(np.ascontiguousarray(arr))


class C3DVideoData(PrefetchedLayer):
    """See the module docstring. Built by ``VideoData`` for a layer of C3D's fields."""

    type_name = "VideoData"
    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.image_data_param
        if p.new_length <= 0:
            raise self.error("image_data_param.new_length must be positive (new length need to be positive)")
        if (p.new_height == 0) != (p.new_width == 0):
            raise self.error(f"image_data_param.new_height and new_width must be set together; received "
                             f"{p.new_height}, {p.new_width}")
        if p.batch_size <= 0 or p.sampling_rate <= 0:
            raise self.error(f"image_data_param.batch_size and sampling_rate must be positive; received "
                             f"{p.batch_size}, {p.sampling_rate}")
        if p.mirror and not p.crop_size:
            raise self.error("Current implementation requires mirror and crop_size to be set at the same time.")
        if p.mirror and self.phase != TRAIN:
            raise self.error("image_data_param.mirror in the TEST phase: C3D-v1.0's prefetch has no random "
                             "generator there and aborts; set mirror: false")
        self.spec = ClipSpec(bool(p.use_image), int(p.new_length), int(p.new_height), int(p.new_width),
                             int(p.sampling_rate), bool(p.use_temporal_jitter), int(p.crop_size), bool(p.mirror),
                             self.phase == TRAIN)
        try:
            self.entries = read_clip_list(p.source, pairs=not p.use_image and p.use_temporal_jitter)
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        log.info("A total of %d video chunks.", len(self.entries))
        skip = self.draw_skip(p.rand_skip, len(self.entries), p.source, "clips")
        self.skip, self.seed, self.batch_size = skip, data_seed(), int(p.batch_size)
        self.shape = (3, self.spec.length, 1, 1)
        self._reseeded()
        first = self.entries[0] if self.spec.jitter and not self.spec.use_image else self._clips.entry(skip)
        try:
            clip = self._clips.load(first, None)
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        if clip is None:
            raise self.error(f"{p.source}:{first.line}: cannot read the first clip, '{first.path}' from frame "
                             f"{first.start} (the fork's CHECK at setup)")
        self.shape = tuple(int(d) for d in clip.shape)
        H, W = self.shape[2:]
        if p.crop_size and not (H > p.crop_size and W > p.crop_size):
            raise self.error(f"crop_size {p.crop_size} must be smaller than the clip's {H}x{W} (the fork's CHECK_GT)")
        self._reseeded()
        self.register_buffer("mean", self._mean(p), persistent=False)
        self.scale = float(p.scale)
        h, w = (p.crop_size, p.crop_size) if p.crop_size else (H, W)
        self._top_shapes: list[Shape] = [(self.batch_size, 3, self.spec.length, h, w), (self.batch_size, 1, 1, 1, 1)]
        self._top_shapes = self._top_shapes[: len(self.param.top)]
        log.info("output data size: %s", ",".join(str(d) for d in self._top_shapes[0]))

    def _mean(self, p: Any) -> Tensor:
        """The mean as the fork's data_mean_: 1 x 3 x L x H x W (empty: none; ``mean_value`` is kept apart)."""
        self.mean_value = float(p.mean_value) if p.HasField("mean_value") else 0.0
        if not p.HasField("mean_file"):
            return torch.zeros(0)
        return c3d_mean(self, p.mean_file, (1,) + self.shape, "the clips",
                        "num 1, channels, new_length, and the clip's height and width before the crop")

    def _reseeded(self) -> None:
        p = self.param.image_data_param
        self._clips = ClipBatchMaker(p.source, self.entries, self.spec, self.shape, self.batch_size, self.seed,
                                     shuffle=p.shuffle, skip=self.skip, rank=self.context.rank,
                                     world=self.context.world)

    def _maker(self) -> ClipBatchMaker:
        return self._clips

    def _mean_crops(self, offsets: Any, mirror: Any) -> Tensor | float:
        """The mean under each clip (``mean_value`` without a mean file)."""
        return self.mean_value if self.mean.numel() == 0 else mean_crops(self.mean, self.spec.crop, offsets, mirror)

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        batch, get, x = self._next_batch()
        mean = self._mean_crops(get("offsets"), get("mirror"))
        if isinstance(mean, Tensor):
            mean = mean.to(x.device)
        data = (x.to(torch.float32) - mean) * self.scale
        label = torch.as_tensor(np.asarray(get("label"), np.float32)).reshape(-1, 1, 1, 1, 1)
        self._release(batch)  # the uint8 clips are consumed
        return [data, label][: len(self.param.top)]

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        from neocaffe.data.examples import c3d_example

        frames, videos, mean = c3d_example()
        return [
            Example(f'name: "v" type: "VideoData" top: "data" top: "label" image_data_param {{ source: "{frames}" '
                    f'use_image: true mean_file: "{mean}" batch_size: 2 new_length: 3 new_height: 8 new_width: 10 '
                    'crop_size: 6 mirror: true shuffle: true scale: 0.5 }', [], grad_bottoms=(), grad_params=False,
                    phase=TRAIN),
            Example(f'name: "v" type: "VideoData" top: "data" image_data_param {{ source: "{videos}" '
                    'use_image: false batch_size: 3 new_length: 2 sampling_rate: 2 mean_value: 100 }', [],
                    grad_bottoms=(), grad_params=False),
        ]


__all__ = ["C3DVideoData", "c3d_mean", "mean_crops", "video_data_lineage"]
