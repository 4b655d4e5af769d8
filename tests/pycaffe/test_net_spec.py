"""caffe.net_spec: pycaffe's test_net_spec plus the exact NetParameter pycaffe's NetSpec writes."""
from __future__ import annotations

import re

import pytest
from google.protobuf import text_format

import caffe
from caffe import layers as L
from caffe import params as P
from caffe.proto import caffe_pb2


def lenet(batch_size):
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]), dict(dim=[batch_size, 1, 1, 1])],
                                  transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


def anon_lenet(batch_size):
    data, label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]), dict(dim=[batch_size, 1, 1, 1])],
                              transform_param=dict(scale=1. / 255), ntop=2)
    conv1 = L.Convolution(data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    conv2 = L.Convolution(pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"))
    pool2 = L.Pooling(conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ip1 = L.InnerProduct(pool2, num_output=500, weight_filler=dict(type="xavier"))
    relu1 = L.ReLU(ip1, in_place=True)
    ip2 = L.InnerProduct(relu1, num_output=10, weight_filler=dict(type="xavier"))
    loss = L.SoftmaxWithLoss(ip2, label)
    return loss.to_proto()


def silent_net():
    n = caffe.NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    return n.to_proto()


def load_net(tmp_path, net_proto):
    f = tmp_path / "net.prototxt"
    f.write_text(str(net_proto))
    return caffe.Net(str(f), caffe.TEST)


def test_lenet(tmp_path):
    net_proto = lenet(50)
    assert net_proto.layer[6].bottom == net_proto.layer[6].top  # relu is in place
    assert len(load_net(tmp_path, net_proto).layers) == 9
    net_proto = anon_lenet(50)
    assert net_proto.layer[6].bottom == net_proto.layer[6].top
    assert len(load_net(tmp_path, net_proto).layers) == 9


def test_zero_tops(tmp_path):
    net = load_net(tmp_path, silent_net())
    assert len(net.forward()) == 0


def test_type_error():
    data = L.DummyData(ntop=2)  # a 2-tuple of Tops
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(data, ntop=0)
    L.Silence(*data, ntop=0)


# The prototxt Caffe's 01-learning-lenet notebook wrote with pycaffe's NetSpec
# (examples/mnist/lenet_auto_train.prototxt), with the scale as this protobuf prints 1/255.
LENET_AUTO_TRAIN = """layer {
  name: "data"
  type: "Data"
  top: "data"
  top: "label"
  transform_param {
    scale: %s
  }
  data_param {
    source: "examples/mnist/mnist_train_lmdb"
    batch_size: 64
    backend: LMDB
  }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param {
    num_output: 20
    kernel_size: 5
    weight_filler {
      type: "xavier"
    }
  }
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layer {
  name: "conv2"
  type: "Convolution"
  bottom: "pool1"
  top: "conv2"
  convolution_param {
    num_output: 50
    kernel_size: 5
    weight_filler {
      type: "xavier"
    }
  }
}
layer {
  name: "pool2"
  type: "Pooling"
  bottom: "conv2"
  top: "pool2"
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layer {
  name: "ip1"
  type: "InnerProduct"
  bottom: "pool2"
  top: "ip1"
  inner_product_param {
    num_output: 500
    weight_filler {
      type: "xavier"
    }
  }
}
layer {
  name: "relu1"
  type: "ReLU"
  bottom: "ip1"
  top: "ip1"
}
layer {
  name: "ip2"
  type: "InnerProduct"
  bottom: "ip1"
  top: "ip2"
  inner_product_param {
    num_output: 10
    weight_filler {
      type: "xavier"
    }
  }
}
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "ip2"
  bottom: "label"
  top: "loss"
}
"""


def test_lenet_auto_train_text_is_pycaffes():
    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=64, backend=P.Data.LMDB, source="examples/mnist/mnist_train_lmdb",
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    text = str(n.to_proto())
    scale = caffe_pb2.TransformationParameter(scale=1. / 255)
    expected = LENET_AUTO_TRAIN % str(scale).split(": ")[1].strip()
    assert text == expected
    # the file Caffe wrote (python 2 printed 0.00392156862745) parses to the same message
    old = text_format.Parse(LENET_AUTO_TRAIN % "0.00392156862745", caffe_pb2.NetParameter())
    assert old == n.to_proto()


def test_automatic_names():
    net = anon_lenet(4)
    names = [(l.name, list(l.bottom), list(l.top)) for l in net.layer]
    assert names == [
        ("DummyData1", [], ["DummyData1", "DummyData2"]),
        ("Convolution1", ["DummyData1"], ["Convolution1"]),
        ("Pooling1", ["Convolution1"], ["Pooling1"]),
        ("Convolution2", ["Pooling1"], ["Convolution2"]),
        ("Pooling2", ["Convolution2"], ["Pooling2"]),
        ("InnerProduct1", ["Pooling2"], ["InnerProduct1"]),
        ("ReLU1", ["InnerProduct1"], ["InnerProduct1"]),
        ("InnerProduct2", ["InnerProduct1"], ["InnerProduct2"]),
        ("SoftmaxWithLoss1", ["InnerProduct2", "DummyData2"], ["SoftmaxWithLoss1"]),
    ]


def test_to_proto_of_several_tops_and_top_less_names():
    d = L.DummyData(shape=dict(dim=[2, 3]))
    a, b = L.TanH(d), L.Sigmoid(d)
    net = caffe.to_proto(a, b)
    assert [l.name for l in net.layer] == ["DummyData1", "TanH1", "Sigmoid1"]
    assert list(net.layer[0].dummy_data_param.shape[0].dim) == [2, 3]
    s = L.Silence(d, ntop=0)
    net = caffe.to_proto(s.tops[0]) if s.tops else None
    assert net is None
    n = caffe.NetSpec()
    n.d = d
    n.sil = s
    assert [l.name for l in n.to_proto().layer] == ["d", "sil"]
    ns = caffe.NetSpec()
    ns.x = L.DummyData(shape=dict(dim=[1]))
    ns.s1 = L.Silence(ns.x, ntop=0)
    ns.s2 = L.Silence(ns.x, ntop=0)
    assert [l.name for l in ns.to_proto().layer] == ["x", "s1", "s2"]


def test_parameter_routing_and_repeated_fields():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3, pad=[1], stride=1,
                           param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
                           bias_filler=dict(type="constant", value=0.1), name="custom_name",
                           include=dict(phase=caffe.TRAIN), loss_weight=0, propagate_down=[True],
                           engine=P.Convolution.CAFFE)
    n.pool = L.Pooling(n.conv, pool="AVE", kernel_size=2, global_pooling=False)
    n.py = L.Python(n.pool, module="mymod", layer="MyLayer", param_str="{'a': 1}")
    net = n.to_proto()
    conv = net.layer[1]
    assert conv.name == "custom_name"  # an explicit name parameter wins, as in pycaffe
    assert list(conv.convolution_param.kernel_size) == [3]  # a lone value to a repeated field
    assert list(conv.convolution_param.pad) == [1] and list(conv.convolution_param.stride) == [1]
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert conv.convolution_param.bias_filler.value == pytest.approx(0.1)
    assert conv.include[0].phase == caffe.TRAIN and list(conv.loss_weight) == [0]
    assert list(conv.propagate_down) == [True]
    assert conv.convolution_param.engine == caffe_pb2.ConvolutionParameter.CAFFE
    assert net.layer[2].pooling_param.pool == P.Pooling.AVE == caffe_pb2.PoolingParameter.AVE
    assert net.layer[2].pooling_param.HasField("global_pooling")
    py = net.layer[3].python_param
    assert (py.module, py.layer, py.param_str) == ("mymod", "MyLayer", "{'a': 1}")
    assert re.search(r'pool: AVE', str(net))


def test_fields_that_share_a_message_route_to_the_layer_types_own():
    """ReLUParameter backs relu_param and the MobileNet-YOLO fork's relu6_param; NormalizeParameter
    backs SSD's norm_param and happynear's normalize_param: a bare field goes to the type's own."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.relu = L.ReLU(n.data, negative_slope=0.1)
    n.relu6 = L.ReLU6(n.data, negative_slope=0.2)
    n.norm = L.Normalize(n.data, across_spatial=False, channel_shared=False)
    n.hn = L.Normalize(n.data, normalize_param=dict(normalize_type="L1"))
    relu, relu6, norm, hn = n.to_proto().layer[1:]
    assert relu.relu_param.negative_slope == pytest.approx(0.1) and not relu.HasField("relu6_param")
    assert relu6.relu6_param.negative_slope == pytest.approx(0.2) and not relu6.HasField("relu_param")
    assert norm.HasField("norm_param") and not norm.HasField("normalize_param")
    assert norm.norm_param.across_spatial is False
    assert hn.normalize_param.normalize_type == "L1" and not hn.HasField("norm_param")


def test_netspec_container_behaviour():
    n = caffe.NetSpec()
    n["data"] = L.DummyData(shape=dict(dim=[2, 5]))
    n.ip = L.InnerProduct(n["data"], num_output=3)
    assert n.keys() == ["data", "ip"] and n.vals() == [n.data, n.ip]
    n.update("ip", dict(num_output=7, bias_term=False))
    net = n.to_proto()
    assert net.layer[1].inner_product_param.num_output == 7
    assert not net.layer[1].inner_product_param.bias_term
    with pytest.raises(KeyError):
        n.missing
    assert not hasattr(n, "__deepcopy__")
    del n["ip"]
    assert n.keys() == ["data"]


def test_same_top_under_two_names_takes_the_last():
    n = caffe.NetSpec()
    n.a = L.DummyData(shape=dict(dim=[1]))
    n.b = n.a
    assert [l.name for l in n.to_proto().layer] == ["b"]


def test_params_enum_lookup():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    assert P.Data.LMDB == caffe_pb2.DataParameter.LMDB
    with pytest.raises(AttributeError):
        P.Pooling.NOT_A_METHOD


def test_netspec_net_runs_and_trains_its_shapes(tmp_path):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 28, 28]))
    n.conv = L.Convolution(n.data, kernel_size=5, num_output=3, weight_filler=dict(type="xavier"))
    n.relu = L.ReLU(n.conv, in_place=True)
    n.pool = L.Pooling(n.relu, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.prob = L.Softmax(L.InnerProduct(n.pool, num_output=4, weight_filler=dict(type="xavier")))
    net = load_net(tmp_path, n.to_proto())
    assert net.blobs["conv"].data.shape == (2, 3, 24, 24)
    assert net.blobs["pool"].data.shape == (2, 3, 12, 12)
    out = net.forward()
    assert out["prob"].shape == (2, 4)
    assert abs(out["prob"].sum() - 2) < 1e-5
    assert "InnerProduct1" in net.blobs


def test_to_proto_takes_nvcaffes_verbose_flag():
    # caffe-jacinto-models' scripts call NVCaffe's ``NetSpec.to_proto(verbose=False)``; NVCaffe ignores the flag.
    n = caffe.NetSpec()
    n.data = L.Input(shape=[dict(dim=[1, 3, 4, 4])])
    n.relu = L.ReLU(n.data)
    assert n.to_proto(verbose=False) == n.to_proto() == n.to_proto(verbose=True)


def test_solver_parameter_takes_bvlcs_scalar_device_id():
    # BVLC's ``device_id`` is ``optional int32``; the schema's is tsn's ``repeated``. SSD's and caffe-jacinto-models'
    # scripts write ``caffe_pb2.SolverParameter(device_id=0, ...)``.
    from neocaffe.proto import caffe_pb2 as schema

    s = caffe_pb2.SolverParameter(device_id=2, base_lr=0.1, test_net=["t.prototxt"], solver_mode=P.Solver.CPU)
    assert type(s) is schema.SolverParameter and isinstance(s, caffe_pb2.SolverParameter)
    assert list(s.device_id) == [2] and s.base_lr == pytest.approx(0.1)
    assert s.solver_mode == caffe_pb2.SolverParameter.CPU
    assert list(caffe_pb2.SolverParameter(device_id=[0, 1]).device_id) == [0, 1]
    assert "device_id: 2" in text_format.MessageToString(s)
    assert caffe_pb2.SolverParameter.DESCRIPTOR is schema.SolverParameter.DESCRIPTOR
    assert caffe_pb2.NetParameter is schema.NetParameter
    with pytest.raises(TypeError):
        caffe_pb2.SolverParameter(device_id="0")
