"""``rand_skip`` of the list-reading data layers: a draw past the end of the list is refused with the
layer, the source and its length named (Caffe's CHECK "Not enough points to skip")."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

# layer type -> the parameter message that holds its list's source and rand_skip
LIST_LAYERS = {"ImageData": "image_data_param", "DenseImageData": "dense_image_data_param",
               "ImageLabelmapData": "image_data_param", "ImageSegData": "image_data_param",
               "VideoData": "image_data_param",  # C3D's VideoData: told from SSD's by image_data_param
               "VideoSegmentationData": "image_data_param", "VideoWithVoxelTruthData": "image_data_param"}


def _list_example(type_name: str):
    cls = get_layer_class(type_name)
    for ex in cls.examples():
        param = text_format.Parse(ex.param, caffe_pb2.LayerParameter())
        if param.HasField(LIST_LAYERS[type_name]):
            return cls, ex, param
    raise AssertionError(f"{type_name} has no example reading a list")


@pytest.mark.parametrize("type_name", sorted(LIST_LAYERS))
def test_a_skip_past_the_list_is_refused(type_name):
    cls, ex, param = _list_example(type_name)
    field = getattr(param, LIST_LAYERS[type_name])
    field.rand_skip = 1_000_000  # every list in the examples is far shorter: the draw falls past its end
    rng.set_seed(3)
    with pytest.raises(LayerSetupError) as err:
        layer = cls(param, [tuple(np.asarray(b).shape) for b in ex.bottoms], ex.phase)
        if ex.prepare is not None:
            ex.prepare(layer)
    msg = str(err.value)
    assert f"layer '{param.name}' ({type_name})" in msg and field.source in msg
    assert "rand_skip: 1000000 drew" in msg and "Not enough points to skip" in msg
