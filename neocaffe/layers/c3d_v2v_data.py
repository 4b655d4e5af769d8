"""C3D-v1.0's voxel-to-voxel data layers: ``VideoSegmentationData`` and ``VideoWithVoxelTruthData``, clips
whose last channels are a per-voxel truth, read from C3D's binary blob files.

Lineage: facebookarchive/C3D @ 71336a2 (``C3D-v1.0``): ``src/caffe/layers/video_segmentation_data_layer.cpp``
and ``src/caffe/layers/video_with_voxel_truth_data_layer.cpp`` (their ``.cu`` copy the same prefetched batch),
``include/caffe/video_segmentation_data_layer.hpp``, ``include/caffe/video_with_voxel_truth_data_layer.hpp``
and ``src/caffe/util/image_io.cpp`` (``load_blob_from_uint8_binary``, ``load_blob_from_binary``). Their V1
types ``VIDEO_SEGMENTATION_DATA`` and ``VIDEO_WITH_VOXEL_TRUTH_DATA`` upgrade to these names
(``neocaffe/io/legacy_types.py``); the fork's ``examples/v2v/video_segmentation_gatech/deconv3d_gatech*.prototxt``
and ``examples/v2v/ucf101_optical_flow/deconv3d_ucf101_brox*.prototxt`` use them.

**The list** (``image_data_param.source``): one volume file per line, paths as written (from the working
directory at setup). **A volume file**: five native (little-endian) int32 ``num, channels, length, height,
width``, then ``num x channels x length x height x width`` values: uint8 (``load_blob_from_uint8_binary``) or
float32 (``load_blob_from_binary``, the layout of the fork's ``save_blob_to_binary``). Item 0 is the volume
(the fork's buffers hold ``channels x length x height x width``). Its last ``T`` channels are the truth, the
others the frames: ``T`` = 1 for VideoSegmentationData (which reads uint8 files), ``num_truth_channels`` for
VideoWithVoxelTruthData (uint8 files with ``use_byte_input``, float32 ones without).

Fields read (``image_data_param``): ``source``, ``batch_size``, ``crop_size``, ``mirror`` (only with
``crop_size``, the fork's FATAL), ``shuffle`` (at setup and at every wrap), ``rand_skip``, ``scale``,
``mean_file`` (a 5-D BlobProto of 1 x (C - T) x L x H x W, the frames' uncropped size) or ``mean_value``,
``show_data`` (OpenCV windows in the fork; not shown); VideoWithVoxelTruthData also ``num_truth_channels``,
``use_byte_input``, ``is_flow``, ``truth_scale``, ``clip_min``, ``clip_max``. Setup reads the list's first
file (whatever the shuffle and skip) for the sizes. Per volume: TRAIN ``h_off = rand % (H - crop)``, ``w_off =
rand % (W - crop)`` (never the last offset), TEST the centre; ``mirror`` flips the crop left-right with
probability 1/2 (frames, mean and truth alike). The frames become ``(x - mean) * scale`` in float32, the mean
taken at the same element of the uncropped volume. The truth is:

* VideoSegmentationData: the value as read (a uint8 label).
* VideoWithVoxelTruthData with ``crop_size``: ``x * truth_scale``, or where ``clip_min`` is set
  ``clip((x - clip_min) / (clip_max - clip_min), 0, 1)`` (``clip_max`` unset: its 0); with ``is_flow``, the
  first truth channel of a mirrored crop is negated first (a horizontal flow flips its sign). Without
  ``crop_size`` the fork copies the truth as read: no scale, no clip (so here too).

Tops (exactly two): frames ``(batch_size, C - T, L, crop, crop)`` and truth ``(batch_size, T, L, crop, crop)``
(H x W without a crop). The draws come from a generator seeded with (seed, batch), in the fork's order
(h_off, w_off, mirror) per volume, so a batch depends on its number alone and any number of workers gives the
same batches; the fork's boost draws cannot be reproduced. A file that cannot be opened is skipped in TRAIN
(the fork's read status false: it takes the next entry; here the batch takes the entries after its own, so
later batches keep theirs) and an error in TEST ("Testing must not miss any example").

Deviations, on purpose:

* Without ``crop_size`` the fork shapes the truth top ``(batch_size, T, C, H, W)`` (channels where the length
  belongs) and copies its ``(batch_size, T, L, H, W)`` prefetch buffer into it, short of it or past its end
  unless C = L; here the truth top is ``(batch_size, T, L, H, W)``, the buffer's shape (the fork's top where
  C = L). Its no-crop loop also writes item ``i``'s frames from ``i C L H W`` on (the whole volume's size, not
  the frames'), so with ``batch_size`` > 1 every later item lands shifted and the last ones past the buffer;
  here each item's frames are in their place (the fork's result for ``batch_size: 1``).
* The fork reads its list as whitespace-separated tokens, each one a file; here a line of more than one
  token (``<file> <label>``, as other lists are written) is an error naming ``file:line``.
* Where the fork reads garbage or past its buffers, an error naming the list's ``file:line``: a file shorter
  than its header or of another size than its dims need (the fork reads a short one's missing values as
  whatever its buffer held and ignores a long one's tail; a float32 file read as uint8, or the reverse, is
  told), a volume of other dims than the first file's (the fork reads it in the first one's layout),
  a volume of no frame channels (C <= T), a mean of another shape. ``num_truth_channels: 0`` is an error (a
  truth top of no channels). A TRAIN list none of whose files opens is an error (the fork loops forever).
* ``mirror`` in the TEST phase is an error at setup: the fork's prefetch has no random generator there and
  aborts at the first draw. ``transform_param`` is not read by the fork's layers and is an error here.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from neocaffe.data.batches import ListBatchMaker
from neocaffe.data.datum import DatumError
from neocaffe.data.list_file import token_lines
from neocaffe.layers.base import TEST, TRAIN, Example, Shape
from neocaffe.layers.c3d_video_data import c3d_mean, mean_crops
from neocaffe.layers.prefetched import DATA_ERRORS, PrefetchedLayer, data_seed
from neocaffe.layers.registry import register_layer

log = logging.getLogger("neocaffe.data")
HEADER = 20  # five int32: num, channels, length, height, width


@dataclass(frozen=True)
class VolumeFile:
    """One list line: the volume file as written and its line number."""

    path: str
    line: int


def read_volume_list(path: str, what: str = "image_data_param.source") -> list[VolumeFile]:
    """The fork's list: one volume file per line (blank lines skipped)."""
    out = []
    for i, tok, text in token_lines(path, what, "volume"):
        if len(tok) > 1:
            raise DatumError(f"{path}:{i}: expected one volume file per line ('<file.bin>'); received "
                             f"'{text.strip()}'")
        out.append(VolumeFile(tok[0], i))
    if not out:
        raise DatumError(f"{what} '{path}' lists no volume files (the fork: 'failed to read chunk list'); "
                         "expected one C3D blob file per line")
    return out


def read_volume_file(path: str, byte_input: bool, where: str, switch: str = "") -> np.ndarray | None:
    """load_blob_from_uint8_binary (``byte_input``) or load_blob_from_binary: item 0 of the file as C x L x H
    x W (uint8 or float32); None where the fork's fopen fails. ``switch``: told where a file of the other
    kind's size is met (how to read it as such)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    kind, size = ("uint8", 1) if byte_input else ("float32", 4)
    if len(raw) < HEADER:
        raise DatumError(f"{where}: '{path}' holds {len(raw)} bytes; a C3D blob file starts with 5 int32 "
                         f"(num, channels, length, height, width)")
    dims = tuple(int(d) for d in np.frombuffer(raw, "<i4", 5))
    shown = "x".join(map(str, dims))
    if min(dims) <= 0:
        raise DatumError(f"{where}: '{path}' has dims {shown} (num x channels x length x height x width); "
                         "expected positive dims")
    need, got = math.prod(dims) * size, len(raw) - HEADER
    if got != need:
        other = "float32" if byte_input else "uint8"
        hint = f" (a file of {other} values?{switch})" if got == (need * 4 if byte_input else need / 4) else ""
        raise DatumError(f"{where}: '{path}' holds {got} bytes after its header; its dims {shown} need {need} "
                         f"({kind} values){hint}")
    return np.frombuffer(raw, "<u1" if byte_input else "<f4", math.prod(dims[1:]), HEADER).reshape(dims[1:])


class TruthVolumeBatchMaker(ListBatchMaker):
    """Batch ``k``: the volumes of entries ``skip + k B + i`` of the pass order, cropped and mirrored on the
    host (see the module docstring); ``dims``: the first file's (C, L, H, W), which every volume must have."""

    def __init__(self, list_file: str, entries: Sequence[VolumeFile], dims: Sequence[int], byte_input: bool,
                 crop: int, mirror: bool, train: bool, batch_size: int, seed: int, shuffle: bool = False,
                 skip: int = 0, rank: int = 0, world: int = 1, switch: str = "") -> None:
        super().__init__(list_file, entries, "", batch_size, None,  # type: ignore[arg-type]  # no transformer
                         seed, shuffle, skip, rank, world)
        self.dims, self.byte_input, self.switch = tuple(int(d) for d in dims), bool(byte_input), switch
        self.crop, self.mirror, self.train = int(crop), bool(mirror), bool(train)

    def load(self, e: VolumeFile) -> np.ndarray | None:
        return read_volume_file(os.path.join(self.cwd, e.path), self.byte_input, f"{self.list_file}:{e.line}",
                                self.switch)

    def _volume(self, t: int) -> np.ndarray | None:
        e = self.entry(t)
        vol = self.load(e)
        if vol is None:
            if not self.train:
                raise DatumError(f"{self.list_file}:{e.line}: cannot open '{e.path}' (Testing must not miss any "
                                 "example)")
            log.info("%s:%d: cannot open '%s'; skipped", self.list_file, e.line, e.path)
        elif vol.shape != self.dims:
            raise DatumError(f"{self.list_file}:{e.line}: '{e.path}' holds a volume of {'x'.join(map(str, vol.shape))}"
                             f", the first file's {'x'.join(map(str, self.dims))}; every volume must have one size")
        return vol

    def make(self, k: int) -> dict[str, Any]:
        k, _ = self.batch_entries(k)
        n, B, c = len(self.entries), self.batch_size, self.crop
        g = np.random.default_rng([self.seed, k])
        C, L, H, W = self.dims
        shape = (B, C, L) + ((c, c) if c else (H, W))
        dtype = np.uint8 if self.byte_input else np.float32
        data = self.alloc(shape, dtype) if self.alloc is not None else np.empty(shape, dtype)
        offsets, mirror = np.zeros((B, 2), np.int64), np.zeros(B, bool)
        spare, failed = self.skip + (k + 1) * B, 0
        for i in range(B):
            vol = self._volume(self.skip + k * B + i)
            while vol is None:  # TRAIN: the fork skips a file it cannot open
                failed += 1
                if failed >= n:
                    raise DatumError(f"{self.list_file}: {failed} volume files in a row could not be opened")
                vol, spare = self._volume(spare), spare + 1
            if c:
                h0, w0 = ((int(g.integers(0, H - c)), int(g.integers(0, W - c))) if self.train
                          else ((H - c) // 2, (W - c) // 2))
                vol = vol[..., h0:h0 + c, w0:w0 + c]
                if self.mirror and g.integers(0, 2):
                    vol, mirror[i] = vol[..., ::-1], True
                offsets[i] = h0, w0
            data[i] = vol
        return {"data": data, "offsets": offsets, "mirror": mirror}


class _TruthVolumeData(PrefetchedLayer):
    """What the two layers share; a subclass gives ``_truth_param``, ``byte_input`` and ``_truth``."""

    exact_tops = 2
    byte_input = True
    switch = ""  # how to read a file of the other kind, for the size error

    def _truth_param(self, p: Any) -> int:
        """Read the truth's fields of ``p``; return the number of truth channels."""
        return 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.image_data_param
        if self.param.HasField("transform_param"):
            raise self.error(f"transform_param is not read by C3D-v1.0's {self.type_name}; set image_data_param's "
                             "scale, mean_file (or mean_value), crop_size and mirror")
        if not p.source:
            raise self.error("image_data_param.source is empty; expected a list of C3D blob files, one per line")
        if p.batch_size <= 0:
            raise self.error(f"image_data_param.batch_size must be positive; received {p.batch_size}")
        if p.mirror and not p.crop_size:
            raise self.error("Current implementation requires mirror and crop_size to be set at the same time.")
        if p.mirror and self.phase != TRAIN:
            raise self.error("image_data_param.mirror in the TEST phase: C3D-v1.0's prefetch has no random "
                             "generator there and aborts; set mirror: false")
        if p.show_data:
            log.info("layer '%s': image_data_param.show_data is not shown (the fork opens OpenCV windows)", self.name)
        self.T = self._truth_param(p)
        try:
            self.entries = read_volume_list(p.source)
            first = self.entries[0]  # the fork's file_list_[0], whatever the shuffle and skip
            vol = read_volume_file(first.path, self.byte_input, f"{p.source}:{first.line}", self.switch)
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        if vol is None:
            raise self.error(f"{p.source}:{first.line}: cannot open '{first.path}' (the fork's CHECK at setup: "
                             "Cannot load video and segmentation data)")
        log.info("A total of %d examples.", len(self.entries))
        self.dims = tuple(int(d) for d in vol.shape)
        C, L, H, W = self.dims
        if C <= self.T:
            raise self.error(f"{p.source}:{first.line}: '{first.path}' holds {C} channel(s), {self.T} of them truth; "
                             f"expected more than {self.T} (frame channels, then the truth)")
        self.crop = int(p.crop_size)
        if not (H > self.crop and W > self.crop):
            raise self.error(f"crop_size {self.crop} must be smaller than the volumes' {H}x{W} (the fork's CHECK_GT)")
        self.skip = self.draw_skip(p.rand_skip, len(self.entries), p.source, "volume files")
        self.batch_size, self.seed, self.scale = int(p.batch_size), data_seed(), float(p.scale)
        self._reseeded()
        self.register_buffer("mean", self._mean(p), persistent=False)
        h, w = (self.crop, self.crop) if self.crop else (H, W)
        self._top_shapes = [(self.batch_size, C - self.T, L, h, w), (self.batch_size, self.T, L, h, w)]
        log.info("output data size: %s", ",".join(str(d) for d in self._top_shapes[0]))
        log.info("output truth size: %s", ",".join(str(d) for d in self._top_shapes[1]))

    def _mean(self, p: Any) -> Tensor:
        """The mean as the fork's data_mean_: 1 x (C - T) x L x H x W (empty: none; ``mean_value`` apart)."""
        self.mean_value = float(p.mean_value) if p.HasField("mean_value") else 0.0
        if not p.HasField("mean_file"):
            return torch.zeros(0)
        C, L, H, W = self.dims
        return c3d_mean(self, p.mean_file, (1, C - self.T, L, H, W), "the volumes",
                        "num 1, the frame channels, length, and the uncropped height and width")

    def _reseeded(self) -> None:
        """The batch maker for ``seed`` and ``skip`` (built here, so relative paths resolve from the working
        directory at setup)."""
        p = self.param.image_data_param
        self._volumes = TruthVolumeBatchMaker(p.source, self.entries, self.dims, self.byte_input, self.crop,
                                              bool(p.mirror), self.phase == TRAIN, self.batch_size, self.seed,
                                              shuffle=p.shuffle, skip=self.skip, rank=self.context.rank,
                                              world=self.context.world, switch=self.switch)

    def _maker(self) -> TruthVolumeBatchMaker:
        return self._volumes

    def _mean_crops(self, offsets: np.ndarray, mirror: np.ndarray, device: torch.device) -> Tensor | float:
        """The mean under each volume (``mean_value`` without a mean file)."""
        if self.mean.numel() == 0:
            return self.mean_value
        return mean_crops(self.mean.to(device), self.crop, offsets, mirror)

    def _truth(self, x: Tensor, mirror: np.ndarray) -> Tensor:
        """The truth channels (float32, a copy) of the batch, as the fork writes them to its truth top."""
        return x

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        batch, get, x = self._next_batch()
        offsets, mirror = np.asarray(get("offsets")), np.asarray(get("mirror"))
        D = x.shape[1] - self.T
        data = (x[:, :D].to(torch.float32) - self._mean_crops(offsets, mirror, x.device)) * self.scale
        truth = self._truth(x[:, D:].to(torch.float32, copy=True), mirror)
        self._release(batch)  # the host buffers are consumed
        return [data, truth]


@register_layer("VideoSegmentationData")
class VideoSegmentationData(_TruthVolumeData):
    """C3D-v1.0's VideoSegmentationDataLayer: uint8 volumes, the last channel the label (see the module
    docstring)."""

    switch = " VideoSegmentationData reads uint8 files only"

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        seg, _, _, mean = v2v_example()
        return [
            Example(f'name: "v" type: "VideoSegmentationData" top: "data" top: "truth" image_data_param {{ '
                    f'source: "{seg}" mean_file: "{mean}" batch_size: 2 crop_size: 3 mirror: true shuffle: true '
                    'scale: 0.5 }', [], grad_bottoms=(), grad_params=False, phase=TRAIN),
            Example(f'name: "v" type: "VideoSegmentationData" top: "data" top: "truth" image_data_param {{ '
                    f'source: "{seg}" batch_size: 3 mean_value: 100 }}', [], grad_bottoms=(), grad_params=False,
                    phase=TEST),
        ]


@register_layer("VideoWithVoxelTruthData")
class VideoWithVoxelTruthData(_TruthVolumeData):
    """C3D-v1.0's VideoWithVoxelTruthDataLayer: uint8 or float32 volumes, the last ``num_truth_channels`` the
    truth, scaled or clipped to [0, 1] (see the module docstring)."""

    def _truth_param(self, p: Any) -> int:
        if p.num_truth_channels <= 0:
            raise self.error("image_data_param.num_truth_channels must be positive; received 0")
        self.byte_input = bool(p.use_byte_input)
        self.switch = f" set use_byte_input: {'false' if self.byte_input else 'true'}"
        self.is_flow, self.truth_scale = bool(p.is_flow), float(p.truth_scale)
        self.clip: tuple[float, float] | None = None
        if p.HasField("clip_min"):  # the fork's float arithmetic: clip_max - clip_min rounded to float32
            self.clip = float(p.clip_min), float(np.float32(p.clip_max) - np.float32(p.clip_min))
        return int(p.num_truth_channels)

    def _truth(self, x: Tensor, mirror: np.ndarray) -> Tensor:
        if not self.crop:  # the fork's copy without a crop: the values as read
            return x
        if self.is_flow and mirror.any():
            x[torch.as_tensor(mirror, device=x.device), 0] *= -1
        if self.clip is not None:
            return ((x - self.clip[0]) / self.clip[1]).clamp(0, 1)
        return x * self.truth_scale

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        _, flow, byte, _ = v2v_example()
        return [
            Example(f'name: "v" type: "VideoWithVoxelTruthData" top: "data" top: "truth" image_data_param {{ '
                    f'source: "{flow}" num_truth_channels: 2 batch_size: 2 crop_size: 3 mirror: true is_flow: true '
                    'shuffle: true truth_scale: 0.125 mean_value: 1 }', [], grad_bottoms=(), grad_params=False,
                    phase=TRAIN),
            Example(f'name: "v" type: "VideoWithVoxelTruthData" top: "data" top: "truth" image_data_param {{ '
                    f'source: "{byte}" use_byte_input: true batch_size: 3 crop_size: 4 clip_min: 50 clip_max: 200 '
                    'scale: 0.25 }', [], grad_bottoms=(), grad_params=False, phase=TEST),
        ]


def write_volume_file(path: str, volume: np.ndarray) -> None:
    """A C3D blob file of one item: the header (1, C, L, H, W) as int32, then the values (uint8 or float32)."""
    with open(path, "wb") as f:
        f.write(np.asarray((1,) + volume.shape, "<i4").tobytes())
        f.write(np.ascontiguousarray(volume, "<u1" if volume.dtype == np.uint8 else "<f4").tobytes())


def v2v_example() -> tuple[str, str, str, str]:
    """The two layers' examples (written once, in the data examples' folder): lists of five uint8 volumes
    (3 + 1 channels x 2 x 5 x 6, the labels 0-7), five float32 ones (3 + 2 x 2 x 5 x 6, the truth a flow in
    [-20, 20]) and four uint8 ones (2 + 1 x 2 x 6 x 7), and a mean of 1 x 3 x 2 x 5 x 6."""
    from neocaffe.data.examples import example_folder
    from neocaffe.io.binaryproto import write_blobproto

    folder = os.path.join(example_folder(), "c3d_v2v")
    lists = tuple(os.path.join(folder, f"{n}.txt") for n in ("seg", "flow", "byte"))
    mean = os.path.join(folder, "mean.binaryproto")
    if not os.path.exists(mean):
        os.makedirs(folder, exist_ok=True)
        g = np.random.default_rng(11)
        for name, n in (("seg", 5), ("flow", 5), ("byte", 4)):
            with open(os.path.join(folder, f"{name}.txt"), "w") as lst:
                for i in range(n):
                    if name == "seg":
                        vol = np.concatenate([g.integers(0, 256, (3, 2, 5, 6)), g.integers(0, 8, (1, 2, 5, 6))])
                    elif name == "flow":
                        vol = np.concatenate([g.uniform(0, 255, (3, 2, 5, 6)), g.uniform(-20, 20, (2, 2, 5, 6))])
                    else:
                        vol = g.integers(0, 256, (3, 2, 6, 7))
                    path = os.path.join(folder, f"{name}_{i}.bin")
                    write_volume_file(path, vol.astype(np.float32 if name == "flow" else np.uint8))
                    lst.write(path + "\n")
        write_blobproto(mean, g.uniform(80, 140, (1, 3, 2, 5, 6)).astype(np.float32), legacy=True)
    return lists + (mean,)  # type: ignore[return-value]


__all__ = ["TruthVolumeBatchMaker", "VideoSegmentationData", "VideoWithVoxelTruthData", "VolumeFile",
           "read_volume_file", "read_volume_list", "v2v_example", "write_volume_file"]
