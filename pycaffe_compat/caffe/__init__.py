"""``import caffe``: pycaffe's interface on neocaffe (PyTorch), so existing scripts run unchanged."""
from neocaffe import __version__

from caffe._mode import TEST, TRAIN, set_device, set_mode_cpu, set_mode_gpu, set_random_seed
from caffe._net import Net
from caffe.proto import caffe_pb2  # noqa: F401

from neocaffe.layers import layer_types as _layer_types


def layer_type_list() -> list[str]:
    """Every registered layer type (pycaffe's ``caffe.layer_type_list()``)."""
    return _layer_types()


__all__ = [
    "Net", "TRAIN", "TEST", "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed",
    "layer_type_list", "caffe_pb2", "__version__",
]
