"""TSN's video list, segment sampling and frame reading, for its ``VideoData`` layer.

Lineage: yjxiong/caffe, branch ``action_recog`` @ 9831a2b4 (the Caffe of Temporal Segment Networks):
``src/caffe/layers/video_data_layer.cpp`` (the list, the segment offsets, the prefetch loop) and
``src/caffe/util/io.cpp`` (``ReadSegmentRGBToDatum``, ``ReadSegmentFlowToDatum``); the list is what
yjxiong/temporal-segment-networks' ``tools/build_file_list.py`` writes.

* The list: ``<frame folder> <number of frames> <label>`` per line; paths as written, from the working
  directory at setup. (The fork reads a stream of tokens and stops silently at the first that does not
  parse; here a line of another form is an error naming ``file:line``.) ``shuffle``: a new order at setup
  and at every wrap (the fork's two generators of one seed keep folders and counts paired).
* Segments: ``d = frames // num_segments``; segment ``i`` starts at ``i d + o``: TRAIN ``o`` uniform in
  ``[0, d - new_length]``, TEST ``(d - new_length + 1) // 2``; where ``d < new_length``, every segment starts
  at 0 (the fork's fallback).
* Frames: segment start ``s`` reads files ``s + 1 .. s + new_length`` by ``name_pattern`` (printf: RGB
  ``%d``-style, default ``image_%04d.jpg``; FLOW ``%c`` then ``%d``, default ``flow_%c_%04d.jpg``, ``x`` and
  ``y``), each ``cv2.imread`` (RGB: colour, or gray with ``grayscale``; FLOW: gray) and resized (bilinear) to
  ``new_width`` x ``new_height`` when both are set. The item is the channels of every frame of every
  segment in order: RGB 3 (B, G, R) or 1 per frame, FLOW 2 (x, y) per frame.

Where the fork's read fails it retries the same video forever (``continue`` without moving on) and leaves
that batch slot unwritten; here a frame that cannot be read is an error naming the list line and the file.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from neocaffe.data.batches import ListBatchMaker
from neocaffe.data.datum import DatumError, read_image
from neocaffe.data.list_file import token_lines
from neocaffe.data.tsn_transform import TSNTransform, crop_item, draw_item

__all__ = ["TSNEntry", "TSNSpec", "TSNBatchMaker", "default_pattern", "read_segments", "read_tsn_list",
           "segment_offsets", "tsn_example", "write_tsn_videos"]

log = logging.getLogger("neocaffe.data")
RGB, FLOW = 0, 1  # VideoDataParameter.Modality


@dataclass(frozen=True)
class TSNEntry:
    """One list line: the frame folder as written, its frame count, its label, its line number."""

    path: str
    frames: int
    label: int
    line: int


@dataclass(frozen=True)
class TSNSpec:
    """What the layer's ``video_data_param`` asks of every item."""

    modality: int
    pattern: str
    length: int
    segments: int
    height: int  # 0 with width 0: the frames' own size
    width: int
    gray: bool
    train: bool


def default_pattern(modality: int) -> str:
    """The fork's name pattern where ``name_pattern`` is empty."""
    return "flow_%c_%04d.jpg" if modality == FLOW else "image_%04d.jpg"


def read_tsn_list(path: str, what: str = "video_data_param.source") -> list[TSNEntry]:
    """The list: ``<frame folder> <number of frames> <label>`` per line."""
    out = []
    for i, tok, text in token_lines(path, what, "video"):
        try:
            if len(tok) != 3:
                raise ValueError
            out.append(TSNEntry(tok[0], int(tok[1]), int(tok[2]), i))
        except ValueError:
            raise DatumError(f"{path}:{i}: expected '<frame folder> <number of frames> <label>'; received "
                             f"'{text.strip()}'") from None
    if not out:
        raise DatumError(f"{what} '{path}' lists no videos; expected lines of '<frame folder> <number of frames> "
                         "<label>'")
    return out


def segment_offsets(frames: int, segments: int, length: int, train: bool,
                    g: np.random.Generator | None) -> list[int]:
    """The first frame (0-based) of each segment: TRAIN random within the segment, TEST its middle."""
    d = frames // segments
    if d < length:
        return [0] * segments
    if train:
        return [int(g.integers(0, d - length + 1)) + i * d for i in range(segments)]  # type: ignore[union-attr]
    return [(d - length + 1) // 2 + i * d for i in range(segments)]


def _frame(folder: str, name: str, sp: TSNSpec, gray: bool, where: str) -> np.ndarray:
    path = os.path.join(folder, name)
    img = read_image(path, sp.height, sp.width, is_color=not gray)
    if img is None:
        why = "no such file" if not os.path.exists(path) else "OpenCV cannot decode it"
        raise DatumError(f"{where}: could not load frame '{path}' ({why})")
    return img


def read_segments(folder: str, offsets: Sequence[int], sp: TSNSpec, where: str) -> np.ndarray:
    """ReadSegmentRGBToDatum / ReadSegmentFlowToDatum: the item as C x H x W uint8."""
    chans = []
    for off in offsets:
        for n in range(off + 1, off + sp.length + 1):
            if sp.modality == FLOW:
                chans += [_frame(folder, sp.pattern % ("x", n), sp, True, where),
                          _frame(folder, sp.pattern % ("y", n), sp, True, where)]
            else:
                img = _frame(folder, sp.pattern % (n,), sp, sp.gray, where)
                chans += [img] if img.ndim == 2 else list(np.moveaxis(img, 2, 0))
    h, w = chans[0].shape
    for c in chans:
        if c.shape != (h, w):
            raise DatumError(f"{where}: frames of {c.shape[0]}x{c.shape[1]} and {h}x{w} in one item; set "
                             "new_height/new_width to read frames of different sizes")
    return np.stack(chans)


class TSNBatchMaker(ListBatchMaker):
    """Batch ``k``: entries ``k B .. k B + B - 1`` of the pass order, each sampled, read and cropped (uint8),
    with its crop offset, mirror flag and label; draws from a generator seeded with (seed, batch)."""

    def __init__(self, list_file: str, entries: Sequence[TSNEntry], spec: TSNSpec, transform: TSNTransform,
                 shape: tuple[int, ...], batch_size: int, seed: int, shuffle: bool = False, rank: int = 0,
                 world: int = 1) -> None:
        super().__init__(list_file, entries, "", batch_size, None,  # type: ignore[arg-type]  # its own transform
                         seed, shuffle, 0, rank, world)
        self.spec, self.transform, self.shape = spec, transform, tuple(int(d) for d in shape)

    def item(self, e: TSNEntry, g: np.random.Generator | None) -> np.ndarray:
        """Entry ``e`` read at its segment offsets (C x H x W uint8, before the crop)."""
        where = f"{self.list_file}:{e.line} ('{e.path}')"
        offsets = segment_offsets(e.frames, self.spec.segments, self.spec.length, self.spec.train, g)
        return read_segments(os.path.join(self.cwd, e.path), offsets, self.spec, where)

    def make(self, k: int) -> dict[str, Any]:
        k, entries = self.batch_entries(k)
        g = np.random.default_rng([self.seed, k])
        B = self.batch_size
        data = self.alloc((B, *self.shape), np.uint8) if self.alloc is not None else np.empty((B, *self.shape),
                                                                                            np.uint8)
        offsets, mirror, labels = np.zeros((B, 2), np.int64), np.zeros(B, bool), np.zeros(B, np.float32)
        for i, e in enumerate(entries):
            x = self.item(e, g)
            crop = self.transform.crop
            if crop and (x.shape[1] < crop or x.shape[2] < crop):
                raise DatumError(f"{self.list_file}:{e.line} ('{e.path}'): frames of {x.shape[1]}x{x.shape[2]} are "
                                 f"smaller than crop_size {crop} (the fork's CHECK_GE)")
            d = draw_item(self.transform, x.shape[1], x.shape[2], g)
            try:
                data[i] = crop_item(x, self.transform, d)
            except ValueError:
                raise DatumError(f"{self.list_file}:{e.line} ('{e.path}'): an item of {'x'.join(map(str, x.shape))} "
                                 f"where the first was {'x'.join(map(str, self.shape))} before its crop; set "
                                 "new_height/new_width or crop_size") from None
            offsets[i], mirror[i], labels[i] = (d.h_off, d.w_off), d.mirror, e.label
        return {"data": data, "offsets": offsets, "mirror": mirror, "label": labels}


def write_tsn_videos(folder: str, videos: Sequence[tuple[str, int, int]], size: tuple[int, int] = (9, 11),
                     seed: int = 0, modalities: str = "rgb,flow") -> str:
    """Frame folders for tests and examples: ``videos`` of (name, frames, label), each with colour frames
    ``img_%05d.jpg`` and gray flow frames ``flow_x_%05d.jpg``/``flow_y_%05d.jpg`` of ``size`` (H, W) noise
    (PNG data under a ``.jpg`` name: lossless, and OpenCV reads by content). Returns the list file."""
    import cv2

    g = np.random.default_rng(seed)
    h, w = size
    lines = []
    for name, frames, label in videos:
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for n in range(1, frames + 1):
            if "rgb" in modalities:
                ok, buf = cv2.imencode(".png", g.integers(0, 256, (h, w, 3), dtype=np.uint8))
                buf.tofile(os.path.join(folder, name, f"img_{n:05d}.jpg"))
            if "flow" in modalities:
                for c in "xy":
                    ok, buf = cv2.imencode(".png", g.integers(0, 256, (h, w), dtype=np.uint8))
                    buf.tofile(os.path.join(folder, name, f"flow_{c}_{n:05d}.jpg"))
        lines.append(f"{os.path.join(folder, name)} {frames} {label}\n")
    path = os.path.join(folder, "list.txt")
    with open(path, "w") as f:
        f.writelines(lines)
    return path


def tsn_example() -> str:
    """The list of TSN's VideoData contract examples (written once): three videos of 7, 9 and 4 frames."""
    from neocaffe.data.examples import example_folder

    folder = os.path.join(example_folder(), "tsn")
    path = os.path.join(folder, "list.txt")
    if not os.path.exists(path):
        write_tsn_videos(folder, [("v0", 7, 0), ("v1", 9, 1), ("v2", 4, 2)], seed=3)
    return path
