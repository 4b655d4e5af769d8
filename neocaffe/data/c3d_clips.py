"""Clips for C3D-v1.0's ``VideoData`` layer: its list file, its frame and video reading, its crops and mirrors.

Lineage: facebookarchive/C3D @ 71336a2 (``C3D-v1.0``): ``src/caffe/layers/video_data_layer.cpp`` (the list,
the prefetch loop) and ``src/caffe/util/image_io.cpp`` (``ReadImageSequenceToVolumeDatum``,
``ReadVideoToVolumeDatum``).

* The list: ``<frame folder or video> <start frame> <label>`` per line; with a video and
  ``use_temporal_jitter``, ``<video> <label>``; with frames and ``use_temporal_jitter`` the middle number is
  the folder's frame count. Paths as written, from the working directory at setup. (The fork reads the file
  as a stream of tokens and stops silently at the first one that does not parse; here a line that is not
  of that form is an error naming ``file:line``.)
* A clip of ``new_length`` frames ``start, start + r, ..., start + (new_length - 1) r`` (``r`` =
  ``sampling_rate``): frames are ``<folder>/%06d.jpg`` read with ``cv2.imread`` (colour), a video's are
  read with ``cv2.VideoCapture`` (seeking to ``start``, and to every frame when ``r`` > 1); each is resized
  (bilinear) to ``new_width x new_height`` when both are set. The clip is channels x length x height x
  width uint8, channel ``c`` the frames' BGR channel ``c``.
* Temporal jitter: frames, TRAIN: ``start = rand % (count - new_length r + 1) + 1``; frames, TEST: ``start =
  0``; a video, any phase: ``start = rand % (frames - new_length r + 1)``.
* A clip that cannot be read (a missing frame, a video that does not open or is too short) is skipped in
  TRAIN (the fork's ``read_status`` false) and an error in TEST ("Testing must not miss any example"). The
  fork then takes the next list entry, so every later batch shifts by one; here the batch takes the entries
  after its own instead (later batches keep theirs, so a batch depends on its number alone). A video start
  past its end is an error in every phase (the fork's CHECK); a negative start of a video is a random one
  (as the fork's), of frames a failed read (no such frame).
* Crops (``crop_size``): TRAIN ``h_off = rand % (height - crop)``, ``w_off = rand % (width - crop)`` (the
  fork's draws: never the last offset), TEST the centre; ``mirror`` (TRAIN only) flips a crop left-right with
  probability 1/2. The draws come from a generator seeded with (seed, batch), in the fork's order (start,
  h_off, w_off, mirror) per clip; the fork's boost draws cannot be reproduced.

The maker returns uint8 crops (mirrored ones already flipped), each clip's offsets and mirror flag and the
labels; the layer subtracts the mean at the same offsets and scales (``neocaffe/layers/c3d_video_data.py``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from neocaffe.data.batches import ListBatchMaker
from neocaffe.data.datum import DatumError, read_image
from neocaffe.data.list_file import token_lines

__all__ = ["ClipEntry", "ClipSpec", "ClipBatchMaker", "read_clip_list"]

log = logging.getLogger("neocaffe.data")


@dataclass(frozen=True)
class ClipEntry:
    """One list line: the folder or video as written, its start frame (the frame count for frames with
    temporal jitter, -1 for a video with it), its label, its line number."""

    path: str
    start: int
    label: int
    line: int


@dataclass(frozen=True)
class ClipSpec:
    """What the layer's ``image_data_param`` asks of every clip."""

    use_image: bool
    length: int
    height: int  # 0 with width 0: the frames' own size
    width: int
    rate: int
    jitter: bool
    crop: int
    mirror: bool
    train: bool


def read_clip_list(path: str, pairs: bool, what: str = "image_data_param.source") -> list[ClipEntry]:
    """The fork's list: ``<path> <start> <label>`` per line (``pairs``: ``<video> <label>``, start -1)."""
    form = "<video> <label>" if pairs else "<frame folder or video> <start frame> <label>"
    out = []
    for i, tok, text in token_lines(path, what, "clip"):
        try:
            if len(tok) != (2 if pairs else 3):
                raise ValueError
            nums = [int(t) for t in tok[1:]]
        except ValueError:
            raise DatumError(f"{path}:{i}: expected '{form}'; received '{text.strip()}'") from None
        out.append(ClipEntry(tok[0], -1 if pairs else nums[0], nums[-1], i))
    if not out:
        raise DatumError(f"{what} '{path}' lists no clips (the fork: 'failed to read chunk list'); expected "
                         f"lines of '{form}'")
    return out


def _stack(frames: list[np.ndarray], where: str) -> np.ndarray:
    """Frames (H x W x 3) as the fork's buffer: 3 x L x H x W, checking they share one size."""
    h, w = frames[0].shape[:2]
    for i, f in enumerate(frames):
        if f.shape[:2] != (h, w):
            raise DatumError(f"{where}: frame {i} of the clip is {f.shape[0]}x{f.shape[1]}, the first "
                             f"{h}x{w}; set new_height/new_width to read frames of different sizes")
    return np.ascontiguousarray(np.stack(frames).transpose(3, 0, 1, 2))


def read_frame_clip(folder: str, start: int, spec: ClipSpec, where: str) -> np.ndarray | None:
    """ReadImageSequenceToVolumeDatum: None where the fork returns false (a frame it cannot read)."""
    frames = []
    for i in range(start, start + spec.length * spec.rate, spec.rate):
        img = read_image(f"{folder}/{i:06d}.jpg", spec.height, spec.width)
        if img is None:
            log.info("Could not open or find file %s/%06d.jpg", folder, i)
            return None
        frames.append(img)
    return _stack(frames, where)


def read_video_clip(path: str, start: int, spec: ClipSpec, g: np.random.Generator | None,
                    where: str) -> np.ndarray | None:
    """ReadVideoToVolumeDatum: None where the fork returns false; its CHECKs are errors."""
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            log.error("Cannot open %s", path)
            return None
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        need = spec.length * spec.rate
        if n < need:
            log.info("not enough frames; having %d", n)
            return None
        if start < 0:  # temporal jitter (the fork's rand())
            start = int(g.integers(0, n - need + 1)) if g is not None else 0
        if start + need > n:
            raise DatumError(f"{where}: start frame {start} + {spec.length} x {spec.rate} frames runs past the "
                             f"video's {n} frames (the fork's CHECK: end frame must be <= the number of frames)")
        cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        frames = []
        for i in range(start, start + need, spec.rate):
            if spec.rate > 1:
                cap.set(cv2.CAP_PROP_POS_FRAMES, i)
            ok, img = cap.read()
            if not ok or img is None:
                log.info("No data at frame %d", i)
                return None
            if spec.height > 0 and spec.width > 0:
                img = cv2.resize(img, (spec.width, spec.height))
            frames.append(img)
        return _stack(frames, where)
    finally:
        cap.release()


class ClipBatchMaker(ListBatchMaker):
    """Batch ``k``: the clips of entries ``skip + k B + i`` of the pass order (see the module docstring);
    ``shape``: the first clip's (3, L, H, W), which every clip must have."""

    def __init__(self, list_file: str, entries: Sequence[ClipEntry], spec: ClipSpec, shape: tuple[int, ...],
                 batch_size: int, seed: int, shuffle: bool = False, skip: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        super().__init__(list_file, entries, "", batch_size, None,  # type: ignore[arg-type]  # no transformer
                         seed, shuffle, skip, rank, world)
        self.spec, self.shape = spec, tuple(int(d) for d in shape)

    def load(self, e: ClipEntry, g: np.random.Generator | None) -> np.ndarray | None:
        """The clip of entry ``e`` (3 x L x H x W uint8), or None where the fork's read fails."""
        sp, where = self.spec, f"{self.list_file}:{e.line} ('{e.path}')"
        path = os.path.join(self.cwd, e.path)
        if not sp.use_image:
            return read_video_clip(path, -1 if sp.jitter else e.start, sp, g, where)
        start = e.start
        if sp.jitter:  # the middle number is the folder's frame count
            if e.start < sp.length * sp.rate:
                log.info("not enough frames; having %d", e.start)
                return None
            start = int(g.integers(0, e.start - sp.length * sp.rate + 1)) + 1 if sp.train and g is not None else 0
        return read_frame_clip(path, start, sp, where)  # a negative start names no frame: the read fails

    def _clip(self, t: int, g: np.random.Generator) -> tuple[ClipEntry, np.ndarray | None]:
        e = self.entry(t)
        clip = self.load(e, g)
        if clip is None and not self.spec.train:
            raise DatumError(f"{self.list_file}:{e.line}: cannot read the clip of '{e.path}' from frame {e.start} "
                             f"(Testing must not miss any example)")
        if clip is not None and clip.shape != self.shape:
            raise DatumError(f"{self.list_file}:{e.line}: the clip of '{e.path}' is {'x'.join(map(str, clip.shape))}, "
                             f"the first one {'x'.join(map(str, self.shape))}; every clip must have one size "
                             f"(set new_height/new_width)")
        return e, clip

    def make(self, k: int) -> dict[str, Any]:
        k, _ = self.batch_entries(k)
        sp, n, B = self.spec, len(self.entries), self.batch_size
        g = np.random.default_rng([self.seed, k])
        _, _, H, W = self.shape
        h, w = (sp.crop, sp.crop) if sp.crop else (H, W)
        shape = (B, 3, self.shape[1], h, w)
        data = self.alloc(shape, np.uint8) if self.alloc is not None else np.empty(shape, np.uint8)
        offsets, mirror = np.zeros((B, 2), np.int64), np.zeros(B, bool)
        labels = np.zeros(B, np.float32)
        first, spare, failed = self.skip + k * B, self.skip + (k + 1) * B, 0
        for i in range(B):
            e, clip = self._clip(first + i, g)
            while clip is None:  # TRAIN: the fork skips an unreadable clip
                failed += 1
                if failed >= n:
                    raise DatumError(f"{self.list_file}: {failed} clips in a row could not be read")
                e, clip = self._clip(spare, g)
                spare += 1
            h0, w0 = 0, 0
            if sp.crop:
                if sp.train:
                    h0, w0 = int(g.integers(0, H - sp.crop)), int(g.integers(0, W - sp.crop))
                else:
                    h0, w0 = (H - sp.crop) // 2, (W - sp.crop) // 2
                clip = clip[..., h0:h0 + sp.crop, w0:w0 + sp.crop]
                if sp.mirror and sp.train and g.integers(0, 2):
                    clip, mirror[i] = clip[..., ::-1], True
            data[i] = clip
            offsets[i] = h0, w0
            labels[i] = e.label
        return {"data": data, "offsets": offsets, "mirror": mirror, "label": labels}
