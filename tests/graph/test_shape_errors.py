"""Blob shapes no blob can have are refused before anything is allocated, in an error naming the
file, line, layer, field or blob, the shape and (when too large) the bytes, never PyTorch's own
RuntimeError ("negative dimension", "DefaultCPUAllocator: can't allocate memory")."""
from __future__ import annotations

import re

import pytest
import torch

from neocaffe.graph.net import Net, NetError
from neocaffe.io.prototxt import read_net_with_source
from neocaffe.layers import blob_shape
from neocaffe.proto import caffe_pb2

IN = 'layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}\n'


def _dims(*ds: int) -> str:
    return " ".join(f"dim: {d}" for d in ds)


def _build(tmp_path, text: str, phase: int = caffe_pb2.TEST) -> Net:
    path = tmp_path / "net.prototxt"
    path.write_text('name: "t"\n' + text)
    param, source = read_net_with_source(str(path))
    return Net(param, phase, source=source)


def _fails(tmp_path, text: str, *parts: str) -> str:
    """Building fails with a NetError (never a RuntimeError or MemoryError) whose message holds every part."""
    with pytest.raises(NetError) as info:
        _build(tmp_path, text)
    msg = str(info.value)
    assert str(tmp_path / "net.prototxt") in msg, msg
    for part in parts:
        assert part in msg, (part, msg)
    return msg


@pytest.mark.parametrize("text, parts", [
    (IN.format(dims=_dims(-2, 3, 8, 8)),
     ["net.prototxt:2:", "layer 'in' (Input)", "input_param.shape[0]", "(-2, 3, 8, 8)", "negative dimension"]),
    ('layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: -1 dim: 3 } } }\n',
     ["layer 'd' (DummyData)", "dummy_data_param.shape[0]", "(-1, 3)", "expected every dimension >= 1"]),
    ('layer { name: "d" type: "DummyData" top: "x" dummy_data_param { num: 2 channels: 0 height: 2 width: 2 } }\n',
     ["layer 'd' (DummyData)", "(2, 0, 2, 2)", "zero dimension"]),
    ('layer { name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: -3 dim: 2 } } }\n',
     ["layer 'p' (Parameter)", "parameter_param.shape", "(-3, 2)"]),
    # Caffe's fillers CHECK a non-empty blob: a convolution over 0 channels has an empty weight
    (IN.format(dims=_dims(2, 0, 8, 8)) + 'layer { name: "c" type: "Convolution" bottom: "x" top: "c" '
     'convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" } } }\n',
     ["net.prototxt:3:", "layer 'c' (Convolution)", "(2, 0, 3, 3)", "'gaussian' filler", "zero dimension"]),
])
def test_negative_and_empty_shapes(tmp_path, text, parts):
    _fails(tmp_path, text, *parts)


@pytest.mark.parametrize("text, parts", [
    (IN.format(dims=_dims(100000, 100000, 1000, 10)),
     ["layer 'in' (Input)", "input_param.shape[0]", "(100000, 100000, 1000, 10)", "400000000000000 bytes (363.8 TiB)"]),
    ('layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: 100000 dim: 100000 dim: 1000 } } }\n',
     ["layer 'd' (DummyData)", "(100000, 100000, 1000)", "40000000000000 bytes (36.4 TiB)"]),
    ('layer { name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 100000 dim: 100000 dim: 10000 } } }\n',
     ["layer 'p' (Parameter)", "400000000000000 bytes"]),
    # a parameter blob: 4e9 outputs x 192 inputs
    (IN.format(dims=_dims(2, 3, 8, 8)) + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
     'inner_product_param { num_output: 4000000000 } }\n',
     ["net.prototxt:3:", "layer 'ip' (InnerProduct)", "(4000000000, 192)", "3072000000000 bytes (2.8 TiB)"]),
    # a top: a padding no input needs makes a 4e9 x 4e9 output
    (IN.format(dims=_dims(2, 3, 8, 8)) + 'layer { name: "c" type: "Convolution" bottom: "x" top: "c" '
     'convolution_param { num_output: 2 kernel_size: 3 pad: 2000000000 } }\n',
     ["layer 'c' (Convolution)", "top 'c'", "(2, 2, 4000000006, 4000000006)", "bytes"]),
])
def test_blobs_too_large_to_allocate(tmp_path, text, parts):
    msg = _fails(tmp_path, text, *parts)
    assert "more than this machine's memory" in msg


def test_limit_is_the_machines_memory(tmp_path, monkeypatch):
    """The size limit is what this process can hold: a 4000-byte Input passes a 4000-byte limit and
    fails a 3999-byte one, named with both sizes."""
    text = IN.format(dims=_dims(10, 100))
    monkeypatch.setattr(blob_shape, "memory_limit", lambda: 4000)
    assert _build(tmp_path, text).blob_shapes["x"] == (10, 100)
    monkeypatch.setattr(blob_shape, "memory_limit", lambda: 3999)
    _fails(tmp_path, text, "4000 bytes", "3999 bytes")
    monkeypatch.undo()
    assert blob_shape.memory_limit() > 1 << 20


def test_flatten_end_axis_before_axis(tmp_path):
    """Caffe's Blob::count(start, end) CHECK: a raw reshape error at the first forward before."""
    _fails(tmp_path, IN.format(dims=_dims(2, 3, 8, 8)) +
           'layer { name: "f" type: "Flatten" bottom: "x" top: "f" flatten_param { axis: 3 end_axis: 1 } }\n',
           "layer 'f' (Flatten)", "end_axis 1", "axis 3", "(2, 3, 8, 8)")


def test_zero_batch_input_still_builds(tmp_path):
    """Caffe's Blob allows a zero dimension (an Input of 0 images): only the CHECKed cases fail."""
    net = _build(tmp_path, IN.format(dims=_dims(0, 3, 8, 8)) +
                 'layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { kernel_size: 2 stride: 2 } }\n')
    net.forward()
    assert tuple(net.state.value("p").shape) == (0, 3, 4, 4)


def test_out_of_memory_in_forward_names_the_net(tmp_path, monkeypatch):
    """An allocator failure while running (e.g. CUDA out of memory) becomes a NetError naming the net's
    file, its largest blob and the bytes, on every path (lean inference, training graph, pycaffe's); a
    layer's other RuntimeErrors pass unchanged."""
    text = IN.format(dims=_dims(4, 3, 8, 8)) + ('layer { name: "c" type: "Convolution" bottom: "x" top: "c" '
                                                'convolution_param { num_output: 5 kernel_size: 1 } }\n')
    conv_class = type(_build(tmp_path, text).layers[1])
    failure: list[BaseException] = []

    def failing(self, *args, **kwargs):
        raise failure[0]

    monkeypatch.setattr(conv_class, "forward", failing)
    monkeypatch.setattr(conv_class, "lean_kernel", lambda self, bottoms: None)  # the lean path calls forward
    failure.append(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    for grad in (False, True):
        net = _build(tmp_path, text)
        with torch.set_grad_enabled(grad), pytest.raises(NetError) as info:
            net.forward()
        msg = str(info.value)
        assert msg.startswith(str(tmp_path / "net.prototxt")), msg
        assert "during forward" in msg and "'c' (4, 5, 8, 8) (5120 bytes (5.0 KiB))" in msg, msg
        assert "Tried to allocate 20.00 GiB" in msg, msg
    failure[0] = RuntimeError("a layer's own failure")
    with pytest.raises(RuntimeError, match="a layer's own failure"):
        _build(tmp_path, text).forward()


def test_image_data_resized_beyond_memory(tmp_path):
    """ImageData's new_height x new_width is checked before the first image is resized to it (OpenCV's
    own 'Insufficient memory' cv2.error escaped from the resize before)."""
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.png'} 0\n")
    _fails(tmp_path, f'layer {{ name: "d" type: "ImageData" top: "x" top: "y" image_data_param {{ source: '
                     f'"{tmp_path / "list.txt"}" batch_size: 2 new_height: 1000000 new_width: 1000000 }} }}\n',
           "layer 'd' (ImageData)", "new_height", "(2, 3, 1000000, 1000000)", "24000000000000 bytes")


def test_allocation_failures_are_told_from_layer_errors():
    """What the builder and Net.forward rewrite: allocator failures of PyTorch and OpenCV, not others."""
    assert blob_shape.allocation_failure(MemoryError())
    assert blob_shape.allocation_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert blob_shape.allocation_failure(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not blob_shape.allocation_failure(RuntimeError("a Python layer's own error"))
    assert not blob_shape.allocation_failure(ValueError("out of memory"))
    cv2 = pytest.importorskip("cv2")
    assert blob_shape.allocation_failure(cv2.error("(-4:Insufficient memory) Failed to allocate 3000000000000 bytes"))
