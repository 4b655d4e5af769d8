"""One contract test over every registered layer type: a new layer is tested by being registered."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.layers import layer_types
from neocaffe.layers.base import Example, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

TYPES = layer_types()


def _build(cls, ex: Example, dtype=torch.float64):
    param = text_format.Parse(ex.param, caffe_pb2.LayerParameter())
    bottoms = [torch.as_tensor(np.asarray(b), dtype=dtype) for b in ex.bottoms]
    told = {"net": ex.net} if ex.net is not None else {}  # what a ``takes_net`` type is told of its net
    layer = cls(param, [tuple(b.shape) for b in bottoms], ex.phase, **told)
    return param, layer, bottoms


def _tops(out):
    return [out] if isinstance(out, torch.Tensor) else list(out)


@pytest.mark.parametrize("type_name", TYPES)
def test_layer_contract(type_name):
    cls = get_layer_class(type_name)
    examples = cls.examples()
    assert examples, f"{type_name} lists no contract examples"
    for ex in examples:
        param, layer, bottoms = _build(cls, ex)
        assert param.type == type_name, f"example for {type_name} has type {param.type}"
        # reshape agrees with forward
        shapes = layer.reshape([tuple(b.shape) for b in bottoms])
        layer = layer.double()
        if ex.prepare is not None:
            ex.prepare(layer)
        torch.manual_seed(0)
        tops = _tops(layer(*bottoms))
        assert len(tops) == len(param.top)
        for t, s in zip(tops, shapes):
            assert tuple(t.shape) == tuple(s), f"{type_name}: reshape says {s}, forward gives {tuple(t.shape)}"
        # float64 gradient check of the listed bottoms (and params)
        inputs = [b.clone().requires_grad_(i in ex.grad_bottoms) for i, b in enumerate(bottoms)]
        if not ex.grad_bottoms and not (ex.grad_params and len(layer.blobs)):
            continue

        names = [n for n, p in layer.named_parameters() if p.requires_grad] if ex.grad_params else []
        pv = [dict(layer.named_parameters())[n].detach().clone().requires_grad_(True) for n in names]

        def fcall(*args):
            rng.set_seed(0)  # the same random mask (Dropout) on every evaluation
            out = torch.func.functional_call(layer, dict(zip(names, args[len(inputs):])), tuple(args[: len(inputs)]))
            return tuple(o for o in _tops(out) if o.is_floating_point() and o.requires_grad)

        assert torch.autograd.gradcheck(fcall, (*inputs, *pv), atol=ex.atol, rtol=1e-4, eps=1e-6)


@pytest.mark.parametrize("type_name", [t for t in TYPES if not get_layer_class(t).produces_host_data])
def test_layer_makes_no_tensor_off_its_inputs_device(type_name):
    """Forward and backward run with PyTorch's default device set to ``meta`` on CPU inputs: a tensor a
    layer makes without ``device=`` (``torch.zeros(n)``) lands on meta, and mixing it with the inputs
    raises, as mixing a CPU tensor into CUDA work raises on a GPU. Every top stays on the inputs'
    device. (Data layers make their tops on the host by design; the net moves them.)"""
    cls = get_layer_class(type_name)
    for ex in cls.examples():
        param, layer, bottoms = _build(cls, ex, torch.float32)
        if ex.prepare is not None:
            ex.prepare(layer)
        inputs = [b.requires_grad_(i in ex.grad_bottoms) for i, b in enumerate(bottoms)]
        with torch.device("meta"):
            rng.set_seed(0)
            tops = [t for t in _tops(layer(*inputs)) if isinstance(t, torch.Tensor)]
            assert all(t.device.type == "cpu" for t in tops), f"{type_name}: tops on {[t.device for t in tops]}"
            graded = [t for t in tops if t.requires_grad]
            if graded:
                torch.autograd.backward(graded, [torch.ones_like(t, device="cpu") for t in graded])


@pytest.mark.parametrize("type_name", TYPES)
def test_lean_kernel_equals_forward(type_name):
    """Where a layer gives the lean inference path a kernel (or, for its examples with top == bottom, an
    in-place kernel), it returns forward's tops bit for bit (float32, where the small-convolution kernel
    choice applies, and float64), twice in a row; an in-place kernel returns its bottom's tensor."""
    cls = get_layer_class(type_name)
    for ex in cls.examples():
        for dtype in (torch.float32, torch.float64):
            _, layer, bottoms = _build(cls, ex, dtype)
            layer = layer.to(dtype)
            if ex.prepare is not None:
                ex.prepare(layer)
            with torch.no_grad():
                kernels = [(k, False) for k in (layer.lean_kernel(bottoms),) if k is not None]
                param = text_format.Parse(ex.param, caffe_pb2.LayerParameter())
                if list(param.top) == list(param.bottom)[:1]:  # top == bottom: an in-place kernel may be offered
                    kernels += [(k, True) for k in (layer.lean_kernel_in_place(bottoms),) if k is not None]
                if not kernels:
                    continue
                torch.manual_seed(0)
                rng.set_seed(0)
                want = _tops(layer(*[b.clone() for b in bottoms]))
                for kernel, in_place in kernels:
                    for _ in range(2):
                        given = [b.clone() for b in bottoms]
                        got = _tops(kernel(*given))
                        assert len(got) == len(want)
                        for g, w in zip(got, want):
                            assert g.dtype == w.dtype and torch.equal(g, w), f"{type_name}: {ex.param}"
                        if in_place:  # it wrote its bottom
                            assert got[0].data_ptr() == given[0].data_ptr(), f"{type_name}: {ex.param}"


@pytest.mark.parametrize("type_name", TYPES)
def test_layer_rejects_wrong_blob_counts(type_name):
    cls = get_layer_class(type_name)
    ex = cls.examples()[0]
    param = text_format.Parse(ex.param, caffe_pb2.LayerParameter())
    shapes = [tuple(np.asarray(b).shape) for b in ex.bottoms]
    too_many = cls.exact_bottoms if cls.exact_bottoms is not None else cls.max_bottoms
    if too_many is None:
        pytest.skip(f"{type_name} takes any number of bottoms")
    with pytest.raises(LayerSetupError, match=param.name):
        cls(param, shapes + [shapes[0] if shapes else (1,)] * (too_many + 1 - len(shapes)), ex.phase)
