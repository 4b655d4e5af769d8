"""SSD's ``VideoData`` layer (lineage: weiliu89/caffe, branch ssd; ``src/caffe/layers/video_data_layer.cpp``,
``include/caffe/layers/video_data_layer.hpp``), as ``examples/ssd/ssd_pascal_video.py`` and
``ssd_pascal_webcam.py`` use it under ``caffe test``.

Fields read: ``video_data_param`` ``video_type`` (WEBCAM: ``device_id``; VIDEO: ``video_file``, required),
``skip_frames``; ``data_param.batch_size``; ``transform_param`` with SSD's ``resize_param``, ``crop_size`` /
``crop_h`` / ``crop_w``, ``mirror``, ``mean_file`` or ``mean_value``, ``scale``, applied as the fork's
``DataTransformer::Transform(const cv::Mat&)`` (the code AnnotatedData uses,
:class:`neocaffe.data.annotated_batches.AnnotatedTransform`). Tops: the frames (batch_size, C, H, W), the
shape ``InferBlobShape`` gives the first frame, and optionally labels (batch_size), all 0.

The fork's quirk, kept: its ``load_batch`` loop decrements ``item_id`` while skipping and then writes the
frame to slot ``item_id`` anyway. With ``skip_frames = S > 0`` a batch reads ``batch_size * (S + 1)``
frames: the first S go to slot -1 (before the buffer in C++; here nowhere), and each slot but the last
is overwritten by the S frames read after it, so slot ``i`` holds frame ``(i + 1)(S + 1) + S - 1`` of the
batch and the last slot frame ``batch_size (S + 1) - 1`` (see :func:`neocaffe.data.video.frame_slots`).
The skip counter restarts at every batch.

The end of a video: when a batch would read past ``CAP_PROP_FRAME_COUNT`` frames the fork logs
"Finished processing video." and raises SIGINT, which stops ``caffe test``. Here the forward that would
return that batch logs the same line and raises ``KeyboardInterrupt`` in the calling thread (what SIGINT
does to Python; ``caffe test`` ends as an interrupted run); the frames of an unfinished batch are dropped,
the batches read before it are all delivered (Caffe's prefetch thread may stop the process before the
net has used them). The frames are read ahead by one worker process (or in process for a short video),
never by several: a video is read in order.

A ``VideoData`` layer that sets ``image_data_param`` is C3D-v1.0's (facebookarchive/C3D), a list of clips:
:mod:`neocaffe.layers.c3d_video_data`; one whose ``video_data_param`` sets TSN's ``source``, ``new_length``,
``num_segments``, ``modality`` or ``name_pattern`` is Temporal Segment Networks' (yjxiong/caffe
``action_recog``): :mod:`neocaffe.layers.tsn_video_data`; this class builds them.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import Tensor

from neocaffe.data.annotated_batches import AnnotatedTransform
from neocaffe.data.datum import DatumError
from neocaffe.data.prefetch import default_workers
from neocaffe.data.transformer import load_mean_file
from neocaffe.data.video import VideoBatchMaker, VideoFinished, VideoSource, frame_slots, probe
from neocaffe.layers.base import TEST, Example, Shape
from neocaffe.layers.c3d_video_data import C3DVideoData, video_data_lineage
from neocaffe.layers.prefetched import DATA_ERRORS, PrefetchedLayer, data_seed
from neocaffe.layers.registry import register_layer
from neocaffe.layers.tsn_video_data import TSNVideoData, tsn_claims
from neocaffe.proto import caffe_pb2

log = logging.getLogger("neocaffe.data")
VIDEO = caffe_pb2.VideoDataParameter.VIDEO


@register_layer("VideoData")
class VideoData(PrefetchedLayer):
    """See the module docstring. A layer that sets ``image_data_param`` is C3D-v1.0's VideoData instead
    (NUMBERING.md rule 6): building this class then gives a :class:`C3DVideoData`."""

    min_tops = 1
    max_tops = 2

    def __new__(cls, param: Any = None, *args: Any, **kwargs: Any) -> Any:
        if cls is VideoData and param is not None and video_data_lineage(param) == "c3d":
            return C3DVideoData(param, *args, **kwargs)  # not a VideoData: Python runs no __init__ of ours on it
        if cls is VideoData and param is not None and tsn_claims(param):  # TSN's fields (tsn_video_data.py)
            return TSNVideoData(param, *args, **kwargs)
        return super().__new__(cls)

    def setup(self, bottom_shapes: list[Shape]) -> None:
        dp, vp, tp = self.param.data_param, self.param.video_data_param, self.param.transform_param
        if dp.batch_size <= 0:
            raise self.error(f"data_param.batch_size must be positive; received {dp.batch_size}")
        if vp.video_type == VIDEO:
            if not vp.HasField("video_file"):
                raise self.error("Must provide video file! (video_data_param.video_file, for video_type VIDEO)")
            self.source = VideoSource(False, path=os.path.abspath(vp.video_file), name=vp.video_file)
        else:
            self.source = VideoSource(True, device_id=int(vp.device_id))
        self.skip_frames = int(vp.skip_frames)
        try:
            mean = load_mean_file(tp.mean_file) if tp.mean_file else None
            if mean is not None and len(tp.mean_value):
                raise DatumError("Cannot specify mean_file and mean_value at the same time")
            self.transform = AnnotatedTransform(tp, self.phase, mean)
            frame, self.total = probe(self.source)
            item = self.transform.shape(frame.shape[2] if frame.ndim == 3 else 1, *frame.shape[:2])
        except (*DATA_ERRORS, OSError) as e:
            raise self.error(str(e)) from None
        if self.total is not None:
            log.info("layer '%s': %s has %d frames; %d per batch", self.name, self.source.where, self.total,
                     len(frame_slots(int(dp.batch_size), self.skip_frames)))
        self.batch_size, self.seed = int(dp.batch_size), data_seed()
        self.item_shape = tuple(int(v) for v in item)
        self._top_shapes: list[Shape] = [(self.batch_size, *self.item_shape), (self.batch_size,)]
        self._top_shapes = self._top_shapes[: len(self.param.top)]
        log.info("output data size: %s", ",".join(str(d) for d in self._top_shapes[0]))

    def _maker(self) -> VideoBatchMaker:
        return VideoBatchMaker(self.source, self.total, self.batch_size, self.skip_frames, self.transform,
                               self.item_shape, self.seed, self.context.rank, self.context.world)

    def _workers_and_depth(self) -> tuple[int, int]:
        per = len(frame_slots(self.batch_size, self.skip_frames))
        n = None if self.total is None else max(self.total, 0) // per
        # one reader at most: a video is read in order (workers would each read their own batches)
        return min(1, default_workers(n, self.context.data_workers)), int(self.param.data_param.prefetch)

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        try:
            _, get, data = self._next_batch()  # host-made floats, no shared buffer to give back
        except VideoFinished as e:
            position = self._prefetcher.position if self._prefetcher is not None else self._first_batch
            self.close()
            self._first_batch = int(position)  # a later forward finds the end again
            log.info("Finished processing video.")
            raise KeyboardInterrupt(f"layer '{self.name}' ({self.type_name}): {e}") from None
        return [data, torch.as_tensor(get("label"))][: len(self.param.top)]

    def resume_state(self) -> dict | None:
        """A video's read position (batches; with ``skip_frames``, which sets the frames per batch); a
        webcam has none (a live stream)."""
        if self.source.webcam:
            return None
        return {**super().resume_state(), "skip_frames": int(self.skip_frames)}

    def load_resume_state(self, state: dict) -> None:
        """Continue the video where ``state`` was taken (another ``skip_frames``: from the start)."""
        if int(state.get("skip_frames", self.skip_frames)) != self.skip_frames:
            log.warning("layer '%s': the snapshot's video position is for skip_frames %d, this net has %d; "
                        "reading from the start", self.name, int(state["skip_frames"]), self.skip_frames)
            return
        super().load_resume_state(state)

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        from neocaffe.data.examples import video_example

        path = video_example()
        return [
            Example(f'name: "v" type: "VideoData" top: "data" top: "label" video_data_param {{ video_type: VIDEO '
                    f'video_file: "{path}" }} data_param {{ batch_size: 2 }} transform_param {{ mean_value: 104 '
                    'mean_value: 117 mean_value: 123 scale: 0.5 resize_param { prob: 1 resize_mode: WARP '
                    'height: 8 width: 10 interp_mode: LINEAR } }', [], grad_bottoms=(), grad_params=False,
                    phase=TEST),
            Example(f'name: "v" type: "VideoData" top: "data" video_data_param {{ video_type: VIDEO '
                    f'video_file: "{path}" skip_frames: 1 }} data_param {{ batch_size: 1 }} '
                    'transform_param { crop_size: 6 mirror: true }', [], grad_bottoms=(), grad_params=False,
                    phase=0),
        ] + C3DVideoData.examples() + TSNVideoData.examples()  # C3D-v1.0's and TSN's, built through this class


__all__ = ["VideoData"]
