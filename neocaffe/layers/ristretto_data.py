"""Ristretto V1's ``DataRistretto`` (pmgysel/caffe @ adf5742f, ``src/caffe/ristretto/layers/
data_ristretto_layer.cpp``; the fork's V2, ``fc109ba1``, removed it as obsolete).

Caffe's Data layer whose transformed images are trimmed to dynamic fixed point, in every phase, by
``QuantizeLayerOutputs_cpu``: ``quantization_param.bw_layer_out``/``fl_layer_out`` with its
``rounding_scheme`` (STOCHASTIC: one uniform per element from a generator seeded by the layer's data seed
and the batch's index, so a resumed run draws what the uninterrupted one does; the fork: ``rand()``). The label is untouched. The fork only logs an error for the other precisions and then runs
its output quantizer with fields it never read (minifloat's bit widths uninitialized); here they are an
error naming the layer.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from neocaffe.layers.base import Example, Shape
from neocaffe.layers.data_layers import DataLayer
from neocaffe.layers.registry import register_layer
from neocaffe.layers.ristretto_quant import DYNAMIC_FIXED_POINT, STOCHASTIC, Quantization, trim_fixed_point


@register_layer("DataRistretto")
class DataRistrettoLayer(DataLayer):
    """Ristretto V1's DataRistrettoLayer: ``Data`` (``data_param``, ``transform_param``) with its data
    top trimmed to ``bw_layer_out`` bits, ``fl_layer_out`` of them fractional."""

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.quant = Quantization.read(self, (DYNAMIC_FIXED_POINT,))
        super().setup(bottom_shapes)

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        batch = self.resume_state()["batch"]   # the batch this forward returns
        tops = super().forward()
        q = self.quant
        g = None
        if q.rounding == STOCHASTIC:   # a batch's draws follow from the layer's seed, as its crops do
            g = torch.Generator(device=tops[0].device).manual_seed((self.seed * 1_000_003 + batch) % 2**63)
        return [trim_fixed_point(tops[0], q.bw_out, q.fl_out, q.rounding, g), *tops[1:]]

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        quants = ('quantization_param { bw_layer_out: 6 fl_layer_out: 2 }',
                  'quantization_param { precision: FIXED_POINT bw_layer_out: 8 fl_layer_out: -2 '
                  'rounding_scheme: STOCHASTIC }')
        return [replace(ex, param=ex.param.replace('type: "Data"', 'type: "DataRistretto"') + " " + quant)
                for ex, quant in zip(DataLayer.examples(), quants)]


__all__ = ["DataRistrettoLayer"]
