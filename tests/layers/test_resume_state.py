"""Every registered layer that carries a resume state (data layers: read position, seeds, shuffle
state) continues exactly from it: a freshly built layer (other seeds, already reading) given the state
and the original's blobs (a snapshot's weights) returns the batches the original returns next. The state survives ``torch.save``/``torch.load``
with ``weights_only``, as the companion ``.resume.pt`` file stores it."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.layers import layer_types
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

STATEFUL = {"Data", "ImageData", "HDF5Data", "MemoryData", "AnnotatedData", "DenseImageData", "WindowData",
            "LaneData",  # MobileNet-YOLO's lane records
            "DataRistretto",  # Ristretto V1's Data
            "VideoData", "ImageSegData", "MatRead",  # VideoData: a video file's frame position (a webcam has none)
            "ImageLabelmapData",  # HED's image/edge-map pair list
            "ImageLabelData",  # caffe-jacinto's image and label LMDBs, read in step
            "VolumeData",  # C3D-v1.0's VolumeDatum database
            "VideoSegmentationData", "VideoWithVoxelTruthData",  # C3D-v1.0's V2V blob-file lists
            "MarginInnerProduct",  # not data layers: SphereFace's lambda schedule counts forwards,
            "LargeMarginInnerProduct",  # as does L-Softmax's,
            "LabelSpecificAdd",  # and so does AM-Softmax's margin schedule,
            "GeneralContrastiveLoss",  # and NormFace's contrastive loss keeps its running intra_mae
            "CustomData",  # FlowNet's LMDB of image pairs and flows
            "DataAugmentation", "GenerateAugmentationParameters", "BlackAugmentation",  # FlowNet's draws
            "LpqLoss",  # FlowNet's p/q episodes follow the iteration
            "DetectionData", "EvalData",  # cascade-rcnn's window lists
            "FrcnnRoiData",  # D-X-Y/caffe-faster-rcnn's image list
            "AdaCosAddmScale",  # arcface-caffe's AdaCos keeps its running scale
            "UnlabeledMatching",  # person_search's OIM queue tail (LabeledMatching's state is all in its blobs)
            "CPMData"}  # OpenPose's genLMDB.py records
# layers that make host data but read no source: nothing to carry (DummyData draws from neocaffe.rng,
# whose state the solver carries; a Python layer's state is its author's)
NO_POSITION = {"Input", "DummyData", "Python"}


@pytest.mark.parametrize("type_name", layer_types())
def test_every_data_layer_is_known_to_carry_its_position_or_not(type_name):
    """A new data layer must say whether a resumed run continues its read position."""
    if get_layer_class(type_name).produces_host_data:
        assert type_name in STATEFUL | NO_POSITION, (
            f"{type_name} produces host data: give it resume_state()/load_resume_state() (its read position) "
            "and add it to STATEFUL, or add it to NO_POSITION if it reads no source")


def _build(cls, ex, seed: int):
    rng.set_seed(seed)
    param = text_format.Parse(ex.param, caffe_pb2.LayerParameter())
    told = {"net": ex.net} if ex.net is not None else {}  # what a ``takes_net`` type is told of its net
    layer = cls(param, [tuple(np.asarray(b).shape) for b in ex.bottoms], ex.phase, **told)
    if ex.prepare is not None:
        ex.prepare(layer)
    return layer


def _forward(layer, ex, times: int) -> list[list[np.ndarray]]:
    bottoms = [torch.as_tensor(np.asarray(b), dtype=torch.float32) for b in ex.bottoms]
    outs = []
    for _ in range(times):
        out = layer(*bottoms)
        outs.append([t.detach().numpy().copy() for t in ([out] if isinstance(out, torch.Tensor) else out)])
    return outs


def _round_trip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("type_name", layer_types())
def test_layer_resumes_from_its_state(type_name):
    cls = get_layer_class(type_name)
    for ex in cls.examples():
        layer = _build(cls, ex, seed=1)
        _forward(layer, ex, 3)  # mid-way through the source (the examples' sources hold a few batches)
        state = layer.resume_state()
        if state is None:
            assert type_name not in STATEFUL, f"{type_name} reads a source but keeps no resume state"
            continue
        assert type_name in STATEFUL, f"{type_name} carries a resume state: add it to STATEFUL"
        weights = [b.detach().clone() for b in layer.blobs]  # what a snapshot's .caffemodel holds now
        expected = _forward(layer, ex, 4)
        other = _build(cls, ex, seed=2)  # other seeds (crops, mirrors, shuffles, rand_skip)
        _forward(other, ex, 2)  # and already reading: the state replaces its position
        with torch.no_grad():  # a resume loads the snapshot's weights too (a layer's blobs may count forwards)
            for mine, theirs in zip(other.blobs, weights):
                mine.copy_(theirs)
        other.load_resume_state(_round_trip(state))
        got = _forward(other, ex, 4)
        for k, (e, g) in enumerate(zip(expected, got)):
            for j, (a, b) in enumerate(zip(e, g)):
                np.testing.assert_array_equal(b, a, err_msg=f"{type_name}: batch {k} top {j}")
        for lay in (layer, other):
            closer = getattr(lay, "close", None)
            if callable(closer):
                closer()
