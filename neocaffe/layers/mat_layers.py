"""DeepLab's ``MatWrite`` and ``MatRead``: blobs to and from MATLAB MAT-files, one file per image.

Lineage and source files: hszhao/PSPNet @ 798bdc9 (DeepLab v2's caffe), ``src/caffe/layers/mat_write_layer.cpp``,
``mat_read_layer.cpp`` and ``src/caffe/util/matio_io.cpp`` (the file layout: ``neocaffe.io.matfile``).
DeepLab's test nets write the upsampled scores of each test image with MatWrite for its MATLAB and
DenseCRF steps; MatRead feeds such files back into a net.

Both read ``prefix`` and ``source`` (a list file whose lines' first words name the files, each with
``strip`` characters cut from its end); without ``source`` file ``k`` is named ``iter_<k>``. File names
are ``<prefix><name>_blob_<i>.mat`` for bottom/top ``i``.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import Tensor

from neocaffe.data.examples import example_folder
from neocaffe.io.errors import CaffeFileError
from neocaffe.io.matfile import read_blob_mat, write_blobs_mat
from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.registry import register_layer

log = logging.getLogger("neocaffe.layers")


def _names(layer: Layer, p: object, field: str) -> list[str] | None:
    """The file names of ``<field>.source`` (first word of each line, ``strip`` characters cut), or
    None without a source."""
    if not p.HasField("source"):  # type: ignore[attr-defined]
        return None
    source, strip = p.source, int(p.strip)  # type: ignore[attr-defined]
    if strip < 0:
        raise layer.error(f"{field}.strip cannot be negative; received {strip}")
    if not os.path.isfile(source):
        raise layer.error(f"{field}.source: failed to open source file '{source}' (cwd {os.getcwd()})")
    names = []
    with open(source, "r", encoding="utf-8", errors="surrogateescape") as f:
        for no, line in enumerate(f.read().splitlines(), 1):
            words = line.split()
            if not words:  # the fork reads an empty name here and then fails "Too much stripping"
                continue
            if len(words[0]) <= strip:
                raise layer.error(f"{source}:{no}: too much stripping: strip {strip} of '{words[0]}' "
                                  f"({len(words[0])} characters) leaves nothing")
            names.append(words[0][:len(words[0]) - strip])
    return names


@register_layer("MatWrite")
class MatWriteLayer(Layer):
    """``mat_write_param`` ``prefix``, ``source``, ``strip``, ``period``: every ``period``-th forward
    (counting from the first, 0) writes each bottom to ``<prefix><name>_blob_<i>.mat``, name ``k`` of
    the source for forward ``k`` (more forwards than names is an error, as the fork's CHECK). The
    folder must exist, as for the fork. No tops; nothing to propagate."""

    min_bottoms = 1
    exact_tops = 0
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.mat_write_param
        self.prefix, self.period, self.iter = p.prefix, int(p.period), 0
        if self.period <= 0:
            raise self.error(f"mat_write_param.period must be positive; received {self.period}")
        self.names = _names(self, p, "mat_write_param")
        if self.names is not None:
            log.info("MatWrite will save a maximum of %d files.", len(self.names))

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        for s in bottom_shapes:
            if len(s) > 4:
                raise self.error(f"MAT-files hold blobs of at most 4 axes (N, C, H, W); received {s}")
        return []

    def forward(self, *bottoms: Tensor) -> list[Tensor]:  # type: ignore[override]
        k, self.iter = self.iter, self.iter + 1
        if k % self.period:
            return []
        if self.names is not None and k >= len(self.names):
            raise self.error(f"forward {k + 1}: the net has run for more iterations than "
                             f"mat_write_param.source '{self.param.mat_write_param.source}' names files "
                             f"({len(self.names)})")
        stem = self.prefix + (self.names[k] if self.names is not None else f"iter_{k}")
        for i, b in enumerate(bottoms):
            try:
                write_blobs_mat(f"{stem}_blob_{i}.mat", {"data": b.detach().to("cpu", torch.float32).numpy()})
            except CaffeFileError as e:
                raise self.error(str(e)) from None
        return []

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        prefix = os.path.join(example_folder(), "matwrite_")
        return [Example(f'name: "w" type: "MatWrite" bottom: "x" mat_write_param {{ prefix: "{prefix}" period: 2 }}',
                        [np.arange(24.0).reshape(1, 2, 3, 4)], grad_bottoms=(), grad_params=False)]


@register_layer("MatRead")
class MatReadLayer(Layer):
    """``mat_read_param`` ``prefix``, ``source``, ``strip``, ``batch_size``: each forward fills the top's
    ``batch_size`` items from the next files (``<prefix><name>_blob_0.mat``, each holding one item of
    the first file's shape; the source's names wrap around). The top's shape comes from the first
    file at setup."""

    exact_bottoms = 0
    exact_tops = 1
    allow_in_place = False
    produces_host_data = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.mat_read_param
        self.prefix, self.batch_size, self.iter = p.prefix, int(p.batch_size), 0
        if self.batch_size <= 0:
            raise self.error(f"mat_read_param.batch_size must be positive; received {self.batch_size}")
        self.names = _names(self, p, "mat_read_param")
        if self.names is not None:
            if not self.names:
                raise self.error(f"mat_read_param.source '{p.source}' names no files")
            log.info("MatRead will load from a set of %d files.", len(self.names))
        first = self._read(0)
        self.item_shape = first.shape[1:]

    def _read(self, k: int) -> np.ndarray:
        if self.names is not None:
            k %= len(self.names)
        path = f"{self.prefix}{self.names[k] if self.names is not None else f'iter_{k}'}_blob_0.mat"
        try:
            blob = read_blob_mat(path)
        except CaffeFileError as e:
            raise self.error(str(e)) from None
        if blob.shape[0] != 1:
            raise self.error(f"{path}: holds {blob.shape[0]} items (dims {list(reversed(blob.shape))}); expected one "
                             f"(a 4th dim of 1)")
        if hasattr(self, "item_shape") and blob.shape[1:] != self.item_shape:
            raise self.error(f"{path}: item of shape {blob.shape[1:]}; expected {self.item_shape} as the first file's")
        return blob

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [(self.batch_size, *self.item_shape)]

    def resume_state(self) -> dict:
        """The read position: the file the next forward reads first."""
        return {"iter": int(self.iter)}

    def load_resume_state(self, state: dict) -> None:
        self.iter = int(state["iter"])

    def forward(self) -> Tensor:  # type: ignore[override]
        items = []
        for _ in range(self.batch_size):
            if self.names is not None and self.iter >= len(self.names):
                self.iter = 0
            items.append(self._read(self.iter))
            self.iter += 1
        return torch.from_numpy(np.concatenate(items))

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        folder = example_folder()
        path = os.path.join(folder, "matread_a_blob_0.mat")
        if not os.path.exists(path):
            write_blobs_mat(path, {"data": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)})
            with open(os.path.join(folder, "matread_list.txt"), "w") as f:
                f.write("a.jpg\n")
        return [Example(f'name: "r" type: "MatRead" top: "x" mat_read_param {{ prefix: "{folder}/matread_" '
                        f'source: "{folder}/matread_list.txt" strip: 4 batch_size: 2 }}', [],
                        grad_bottoms=(), grad_params=False)]
