"""FlowNet 2.0's file reader and writer layers: ImgReader, FloatReader, FLOWriter, FloatWriter, PFMWriter,
ImgWriter.

lmb-freiburg/flownet2 @ b92e198b: ``src/caffe/layers/{imgreader,floatreader,flowriter,floatwriter,pfmwriter,
imgwriter}_layer.cpp`` with the formats of ``src/caffe/util/output.cpp`` (:mod:`neocaffe.data.flownet_files`).

Readers (no bottoms, one top): ``reader_param.file`` read once, its (C, H, W) repeated ``reader_param.num``
times. ImgReader reads the image as Caffe's ReadImageToCVMat (BGR) through ``transform_param`` (crop, mirror,
mean, scale; a TRAIN crop/mirror is drawn once, as the fork transforms once).

Writers (one bottom, no tops) write every item of every forward: ``writer_param.file`` when set (every item
to that one file, the last one staying), else ``<folder>/<prefix><iteration %07d><suffix>.<ext>``, with
``(<item %03d>)`` after the iteration when num > 1. The iteration is the fork's ``Net::iter()``: the solver's
(``set_iteration``) in a training net, else the number of forwards before this one, which is what the fork's
``caffe test`` sets (``caffe_net.set_iter(i)`` per batch; elsewhere the fork leaves it unset). The
folder is made at setup when missing. FLOWriter: 2 channels, ``.flo``; FloatWriter: ``.float3``; PFMWriter:
``.pfm``, negated values; ImgWriter: 1 channel ``.pgm`` or 3 channels ``.ppm`` (``normalize`` maps [min, max]
to [0, 255], else ``scale``). None of them has a backward.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from neocaffe.data import flownet_files as ff
from neocaffe.data.datum import read_image
from neocaffe.data.transformer import DataTransformer
from neocaffe.layers.base import TRAIN, Example, Layer, Shape, legacy_shape
from neocaffe.layers.prefetched import DATA_ERRORS, data_seed
from neocaffe.layers.registry import register_layer

log = logging.getLogger("neocaffe")


def _reader_example(kind: str, write: Callable[[str], Any], fields: str = "") -> list[Example]:
    from neocaffe.data.examples import example_folder

    folder = os.path.join(example_folder(), "flownet_reader")
    os.makedirs(folder, exist_ok=True)
    path = write(folder)
    return [Example(f'name: "r" type: "{kind}" top: "x" reader_param {{ file: "{path}" num: 2 }} {fields}', [],
                    grad_bottoms=(), grad_params=False)]


def _write_img(folder: str) -> str:
    import cv2

    path = os.path.join(folder, "img.png")
    cv2.imwrite(path, np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8))
    return path


def _write_f3(folder: str) -> str:
    path = os.path.join(folder, "a.float3")
    ff.write_float3(path, np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    return path


class _Reader(Layer):
    exact_bottoms, exact_tops = 0, 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        rp = self.param.reader_param
        if not rp.file:
            raise self.error("reader_param.file is empty; expected the file to read")
        try:
            data = self.read(rp.file)
        except (OSError, ValueError, *DATA_ERRORS) as e:
            raise self.error(f"cannot read reader_param.file '{rp.file}': {e}") from None
        self.register_buffer("data", torch.as_tensor(np.ascontiguousarray(data, np.float32)), persistent=False)
        self.num = int(rp.num)

    def read(self, path: str) -> np.ndarray:
        raise NotImplementedError

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [(self.num, *self.data.shape)]

    def forward(self) -> Tensor:  # type: ignore[override]
        return self.data.unsqueeze(0).expand(self.num, *self.data.shape).clone()


@register_layer("ImgReader")
class ImgReaderLayer(_Reader):
    """An image file through ``transform_param``, as (num, C, H, W)."""

    def read(self, path: str) -> np.ndarray:
        img = read_image(path)
        if img is None:
            raise ValueError("could not load the image")
        chw = np.ascontiguousarray(img.transpose(2, 0, 1)) if img.ndim == 3 else img[None]
        tr = DataTransformer(self.param.transform_param, self.phase, where=f"layer '{self.name}' transform_param")
        rng = np.random.default_rng(data_seed()) if self.phase == TRAIN else None
        return tr.transform([chw], rng)[0].numpy()

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        return _reader_example("ImgReader", _write_img, "transform_param { crop_size: 4 scale: 0.5 }")


@register_layer("FloatReader")
class FloatReaderLayer(_Reader):
    """A ``float`` file (``.float3``) as (num, Z, Y, X)."""

    def read(self, path: str) -> np.ndarray:
        return ff.read_float(path)

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        return _reader_example("FloatReader", _write_f3)


class _Writer(Layer):
    exact_bottoms, exact_tops = 1, 0
    ext = ""
    channels: tuple[int, ...] = ()

    def setup(self, bottom_shapes: list[Shape]) -> None:
        c = legacy_shape(bottom_shapes[0], self)[1]
        if self.channels and c not in self.channels:
            raise self.error(f"input must have {' or '.join(map(str, self.channels))} channels; received shape "
                             f"{tuple(bottom_shapes[0])}")
        wp = self.param.writer_param
        if wp.folder and not os.path.isdir(wp.folder):
            os.makedirs(wp.folder, exist_ok=True)
        self.iteration: int | None = None
        self.forwards = 0

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return []

    def set_iteration(self, iteration: int, stop: int) -> None:
        """The solver's iteration (the fork's ``Net::iter()``), used in the file names."""
        self.iteration = int(iteration)

    def filename(self, n: int, num: int, iteration: int, ext: str | None = None) -> str:
        """Item ``n``'s file (``writer_param``: file, or folder/prefix/iteration/(item)/suffix)."""
        wp = self.param.writer_param
        if wp.HasField("file"):
            return wp.file
        item = f"({n:03d})" if num > 1 else ""
        return f"{wp.folder}/{wp.prefix}{iteration:07d}{item}{wp.suffix}.{ext or self.ext}"

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        num, c, h, w = legacy_shape(tuple(x.shape), self)
        data = x.detach().to("cpu", torch.float32).numpy().reshape(num, c, h, w)
        iteration = self.iteration if self.iteration is not None else self.forwards
        self.forwards += 1
        for n in range(num):
            write, ext = self.writer(c)
            path = self.filename(n, num, iteration, ext)
            log.info("Saving %s", path)
            write(path, data[n])
        return []

    def writer(self, c: int) -> tuple[Callable[[str, np.ndarray], None], str]:
        raise NotImplementedError

    @classmethod
    def _example(cls, fields: str, shape: tuple[int, ...]) -> list[Example]:
        from neocaffe.data.examples import example_folder

        folder = os.path.join(example_folder(), "flownet_writer")
        x = np.random.default_rng(0).uniform(0, 1, shape)
        return [Example(f'name: "w" type: "{cls.type_name}" bottom: "x" writer_param {{ folder: "{folder}" '
                        f'prefix: "p_" {fields} }}', [x], grad_bottoms=(), grad_params=False)]


@register_layer("FLOWriter")
class FLOWriterLayer(_Writer):
    """Writes 2-channel blobs as Middlebury ``.flo`` files."""

    ext, channels = "flo", (2,)

    def writer(self, c: int) -> tuple[Callable[[str, np.ndarray], None], str]:
        return ff.write_flo, "flo"

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        return cls._example("", (2, 2, 3, 4))


@register_layer("FloatWriter")
class FloatWriterLayer(_Writer):
    """Writes blobs as ``.float3`` files."""

    ext = "float3"

    def writer(self, c: int) -> tuple[Callable[[str, np.ndarray], None], str]:
        return ff.write_float3, "float3"

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        return cls._example('suffix: "_s"', (1, 3, 2, 2))


@register_layer("PFMWriter")
class PFMWriterLayer(_Writer):
    """Writes blobs as negated PFM files (1 channel ``Pf``, more ``PF``)."""

    ext = "pfm"

    def writer(self, c: int) -> tuple[Callable[[str, np.ndarray], None], str]:
        return ff.write_pfm, "pfm"

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        return cls._example("", (2, 1, 3, 4))


@register_layer("ImgWriter")
class ImgWriterLayer(_Writer):
    """Writes 1-channel blobs as ``.pgm`` and 3-channel blobs as ``.ppm`` (``normalize``, ``scale``)."""

    channels = (1, 3)

    def writer(self, c: int) -> tuple[Callable[[str, np.ndarray], None], str]:
        wp = self.param.writer_param
        scale = float(wp.scale)
        if c == 1:
            if wp.normalize:
                return (lambda p, d: ff.write_pgm_norm(p, d[0])), "pgm"
            return (lambda p, d: ff.write_pgm(p, d[0], scale)), "pgm"
        if wp.normalize:
            return ff.write_ppm_norm, "ppm"
        return (lambda p, d: ff.write_ppm(p, d, scale)), "ppm"

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        return cls._example("scale: 255", (2, 3, 3, 4)) + cls._example("normalize: true", (1, 1, 3, 4))


__all__ = ["FLOWriterLayer", "FloatReaderLayer", "FloatWriterLayer", "ImgReaderLayer", "ImgWriterLayer",
           "PFMWriterLayer"]
