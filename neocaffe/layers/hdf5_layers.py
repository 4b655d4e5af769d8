"""Caffe's HDF5Data (``hdf5_data_param``: a list file of HDF5 files whose datasets are the tops) and
HDF5Output (``hdf5_output_param``: bottoms written as datasets of one HDF5 file) layers, over
``neocaffe.data``; the other data layers are :mod:`neocaffe.layers.data_layers`."""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import Tensor

from neocaffe.data.batches import HDF5Batches
from neocaffe.data.examples import example_folder
from neocaffe.data.sources import read_hdf5_list
from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.prefetched import DATA_ERRORS, data_seed
from neocaffe.layers.registry import register_layer

log = logging.getLogger("neocaffe.data")


@register_layer("HDF5Data")
class HDF5DataLayer(Layer):
    """Caffe's HDF5DataLayer: one dataset per top (named like the top) from the files listed in
    ``hdf5_data_param.source``, walked in list order (continuing across files inside one batch,
    wrapping to the first file); ``shuffle`` permutes files and rows. No transform."""

    exact_bottoms = 0
    min_tops = 1
    allow_in_place = False
    produces_host_data = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        hp = self.param.hdf5_data_param
        if self.param.HasField("transform_param"):
            raise self.error("HDF5Data does not transform data; remove transform_param")
        if hp.batch_size <= 0:
            raise self.error(f"hdf5_data_param.batch_size must be positive; received {hp.batch_size}")
        try:
            listed = read_hdf5_list(hp.source, what=f"hdf5_data_param.source '{hp.source}'")
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        files = [(os.path.abspath(f), f"{hp.source}:{no}", f) for f, no in listed]
        log.info("Number of HDF5 files: %d", len(files))
        try:
            rank, world = self.context.rank, self.context.world  # data-parallel: this process's slice
            self.batches = HDF5Batches(files, list(self.param.top), hp.batch_size, hp.shuffle, data_seed(), rank, world)
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return list(self.batches.shapes)

    def resume_state(self) -> dict:
        """The walk's position: file and row orders, the current file and row, the shuffle generator."""
        return self.batches.state()

    def load_resume_state(self, state: dict) -> None:
        """Continue the walk where ``state`` was taken (a different file list: start over, as Caffe)."""
        try:
            self.batches.load_state(state)
        except ValueError as e:
            log.warning("layer '%s': %s; reading from the start", self.name, e)
        except DATA_ERRORS as e:
            raise type(e)(f"layer '{self.name}' (HDF5Data): {e}") from None

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        try:
            return [torch.from_numpy(a) for a in self.batches.next()]
        except DATA_ERRORS as e:
            raise type(e)(f"layer '{self.name}' (HDF5Data): {e}") from None

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        folder = example_folder()
        return [Example(f'name: "h" type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ '
                        f'source: "{folder}/h5list.txt" batch_size: 4 }}', [], grad_bottoms=(), grad_params=False)]


@register_layer("HDF5Output")
class HDF5OutputLayer(Layer):
    """Caffe's HDF5OutputLayer: writes bottom 0 as dataset ``data`` and bottom 1 as ``label`` to
    ``hdf5_output_param.file_name`` (truncated at setup). Deliberate difference: Caffe can write
    only once (its second forward fails to recreate the datasets); here every forward appends its
    rows, so after one forward the file holds exactly what Caffe writes."""

    exact_bottoms = 2
    exact_tops = 0
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        import h5py

        self.file_name = self.param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.error("hdf5_output_param.file_name is empty")
        try:
            h5py.File(self.file_name, "w").close()
        except OSError as e:
            raise self.error(f"cannot create '{self.file_name}': {e}") from None
        self.path = os.path.abspath(self.file_name)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        if bottom_shapes[0][:1] != bottom_shapes[1][:1]:
            raise self.error(f"data and label must have the same number of rows; received {bottom_shapes[0]} and {bottom_shapes[1]}")
        return []

    def forward(self, data: Tensor, label: Tensor) -> list[Tensor]:  # type: ignore[override]
        import h5py

        with h5py.File(self.path, "a") as f:
            for name, t in (("data", data), ("label", label)):
                arr = t.detach().to("cpu", torch.float32).numpy()
                if name not in f:
                    f.create_dataset(name, data=arr, maxshape=(None, *arr.shape[1:]), chunks=True)
                else:
                    ds = f[name]
                    if ds.shape[1:] != arr.shape[1:]:
                        raise self.error(f"{name} rows changed shape from {ds.shape[1:]} to {arr.shape[1:]}")
                    n = ds.shape[0]
                    ds.resize(n + arr.shape[0], axis=0)
                    ds[n:] = arr
        return []

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        folder = example_folder()
        return [Example(f'name: "o" type: "HDF5Output" bottom: "data" bottom: "label" hdf5_output_param {{ '
                        f'file_name: "{folder}/out.h5" }}', [np.ones((2, 3)), np.arange(2.0)],
                        grad_bottoms=(), grad_params=False)]


__all__ = ["HDF5DataLayer", "HDF5OutputLayer"]
