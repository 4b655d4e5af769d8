"""caffe.layer_type_list(): pycaffe's test_layer_type_list."""
from __future__ import annotations

import caffe


def test_standard_types():
    for type_name in ["Data", "Convolution", "InnerProduct"]:
        assert type_name in caffe.layer_type_list(), f"{type_name} not in layer_type_list()"


def test_list_is_sorted_unique_and_has_pycaffe_layers():
    types = caffe.layer_type_list()
    assert types == sorted(types) and len(types) == len(set(types))  # Caffe lists its registry's keys
    for name in ["Python", "MemoryData", "Input", "SoftmaxWithLoss", "Pooling", "ReLU", "Accuracy"]:
        assert name in types
