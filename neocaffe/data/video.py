"""Frames of SSD's VideoData layer (lineage: weiliu89/caffe, branch ssd; ``src/caffe/layers/video_data_layer.cpp``,
its transform: ``src/caffe/data_transformer.cpp`` ``Transform(const cv::Mat&, ...)``).

A source is a webcam (``cv2.VideoCapture(device_id)``) or a video file. A video is read frame after frame
by one reader: batch ``k`` of a video with ``F`` frames per batch (see :func:`frame_slots`) is frames
``k * F ... k * F + F - 1``, so a maker asked for a later batch than the next one reads (grabs) the frames
in between, and one asked for an earlier batch opens the video again; never seeks. A webcam is a live
stream: every batch takes the frames that come next, whatever ``k`` is.

The fork's ``load_batch`` checks, before each read of a video, whether it has read ``CAP_PROP_FRAME_COUNT``
frames already; then it logs "Finished processing video." and raises SIGINT. Here the maker raises
:class:`VideoFinished` (the layer turns it into the log line and a ``KeyboardInterrupt``); a batch it
cannot fill is never delivered. A frame that cannot be read is a :class:`DatumError` naming the video.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from neocaffe.data.annotated import Boxes
from neocaffe.data.annotated_batches import AnnotatedTransform
from neocaffe.data.datum import DatumError
from neocaffe.data.prefetch import register_error
from neocaffe.data.shard import global_batch
from neocaffe.data.sources import DataSourceError

__all__ = ["VideoFinished", "VideoSource", "VideoBatchMaker", "frame_slots", "probe"]


@register_error
class VideoFinished(Exception):
    """Every frame of the video has been read (the fork logs "Finished processing video." and raises SIGINT)."""


@dataclass(frozen=True)
class VideoSource:
    """What a capture opens: a webcam (``webcam`` True, ``device_id``) or a video file (``path``, absolute;
    ``name`` as the prototxt gives it, for messages)."""

    webcam: bool
    device_id: int = 0
    path: str = ""
    name: str = ""

    @property
    def where(self) -> str:
        return f"webcam {self.device_id}" if self.webcam else f"video '{self.name}'"

    def open(self) -> Any:
        """An opened ``cv2.VideoCapture``; the fork's messages when it cannot be opened."""
        if self.webcam:
            cap = cv2.VideoCapture(int(self.device_id))
            if not cap.isOpened():
                raise DataSourceError(f"Failed to open webcam: {self.device_id}")
            return cap
        if not os.path.isfile(self.path):
            raise DataSourceError(f"Failed to open video: {self.name} (no such file)")
        cap = cv2.VideoCapture(self.path)
        if not cap.isOpened():
            raise DataSourceError(f"Failed to open video: {self.name} (OpenCV cannot decode it)")
        return cap


def probe(source: VideoSource) -> tuple[np.ndarray, int | None]:
    """DataLayerSetUp's reads: the first frame (its shape gives the top's) and, for a video, its
    ``CAP_PROP_FRAME_COUNT`` (truncated to an int, as the fork stores it; None for a webcam). The capture
    is released: the batch maker opens its own, in the process that reads."""
    cap = source.open()
    try:
        total = None if source.webcam else int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok or frame is None:
        raise DatumError(f"{source.where}: Could not load image! (its first frame cannot be read)")
    return frame, total


def frame_slots(batch_size: int, skip_frames: int) -> list[int]:
    """Where each frame one batch reads ends up: the fork's ``load_batch`` loop simulated. Each read
    frame is written to slot ``item_id``; while the skip counter (``skip_frames`` at the start of every
    batch) is positive, a read decrements it *and* ``item_id`` before the write, so the first
    ``skip_frames`` frames go to slot -1 (before the batch's buffer in C++; nothing here) and the
    ``skip_frames`` frames after each kept frame overwrite that frame's slot. A batch reads
    ``batch_size * (skip_frames + 1)`` frames; the last frame written to a slot is the one it holds."""
    slots: list[int] = []
    counter, item = skip_frames, 0
    while item < batch_size:
        if counter > 0:
            counter, item = counter - 1, item - 1
        else:
            counter = skip_frames
        slots.append(item)
        item += 1
    return slots


class VideoBatchMaker:
    """Batch ``k``: ``{"data": (batch_size, C, H, W) float32, "label": zeros(batch_size)}``, the frames
    :func:`frame_slots` keeps, each through the fork's transform (resize_param, crop, mirror, mean,
    scale) with draws from ``(seed, k)``. ``total``: the video's frame count (None: a webcam)."""

    def __init__(self, source: VideoSource, total: int | None, batch_size: int, skip_frames: int,
                 transform: AnnotatedTransform, item_shape: tuple[int, ...], seed: int,
                 rank: int = 0, world: int = 1) -> None:
        self.source, self.total, self.batch_size = source, total, int(batch_size)
        self.slots = frame_slots(self.batch_size, int(skip_frames))
        last = {slot: i for i, slot in enumerate(self.slots)}
        # decode only the frame a slot ends up holding; the others are read past (grabbed), not decoded
        self.decode = [slot >= 0 and last[slot] == i for i, slot in enumerate(self.slots)]
        self.transform, self.item_shape, self.seed = transform, tuple(item_shape), int(seed)
        self.rank, self.world = int(rank), int(world)
        self.cap: Any = None
        self.read = 0  # frames read since the capture opened (the fork's processed_frames_)

    def open(self) -> None:
        self.cap = self.source.open()
        self.read = 0

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["cap"] = None  # a capture does not cross processes: the worker opens its own
        return state

    def _frame(self, keep: bool = True) -> np.ndarray | None:
        """The next frame (``keep`` False: read past it); the video's end raises VideoFinished."""
        if self.total is not None and self.read >= self.total:
            raise VideoFinished(f"{self.source.where}: Finished processing video ({self.total} frames).")
        self.read += 1
        if keep:
            ok, frame = self.cap.read()
        else:
            ok, frame = self.cap.grab(), None
        if not ok or (keep and frame is None):
            raise DatumError(f"{self.source.where}: Could not load image! (frame {self.read - 1} of "
                             f"{self.total if self.total is not None else 'a live stream'} cannot be read)")
        return frame

    def make(self, k: int) -> dict:
        g = global_batch(k, self.rank, self.world)
        if self.cap is None:
            self.open()
        if self.total is not None:  # a video: batch g starts at frame g * len(slots)
            start = g * len(self.slots)
            if start < self.read:
                self.close()
                self.open()
            while self.read < start:
                self._frame(keep=False)
        kept: dict[int, np.ndarray] = {}
        for slot, decode in zip(self.slots, self.decode):
            frame = self._frame(keep=decode)
            if decode:
                kept[slot] = frame  # type: ignore[assignment]
        rng = np.random.default_rng([self.seed, g])
        data = np.empty((self.batch_size, *self.item_shape), np.float32)
        for slot in range(self.batch_size):
            chw, _ = self.transform(kept[slot], Boxes.empty(), rng)
            if chw.shape != self.item_shape:
                raise DatumError(f"{self.source.where}: a frame transformed to {'x'.join(map(str, chw.shape))}; "
                                 f"the first frame gave {'x'.join(map(str, self.item_shape))} (the top's shape)")
            data[slot] = chw
        return {"data": data, "label": np.zeros(self.batch_size, np.float32)}
