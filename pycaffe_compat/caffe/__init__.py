"""``import caffe``: pycaffe's interface on neocaffe (PyTorch), so existing scripts run unchanged."""
from neocaffe import __version__

from caffe._mode import TEST, TRAIN, set_device, set_mode_cpu, set_mode_gpu, set_random_seed
from caffe._net import Net
from caffe.proto import caffe_pb2  # noqa: F401

from neocaffe.layers import layer_types as _layer_types


def layer_type_list() -> list[str]:
    """Every registered layer type (pycaffe's ``caffe.layer_type_list()``)."""
    return _layer_types()


def set_logging_disabled() -> None:
    """FlowNet 2.0's pycaffe addition (lmb-freiburg/flownet2 @ b92e198b, ``python/caffe/_caffe.cpp``:
    ``Caffe::set_logging(false)``, glog's ``minloglevel = 2``): only ERROR lines and above from now on."""
    import logging

    logging.getLogger("neocaffe").setLevel(logging.ERROR)


__all__ = [
    "Net", "TRAIN", "TEST", "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed",
    "layer_type_list", "caffe_pb2", "__version__", "set_logging_disabled",
]

# pycaffe's other modules: io, net_spec, Classifier/Detector, solvers (``caffe.draw`` is imported
# on its own, as in pycaffe)
from caffe import io  # noqa: E402,F401
from caffe.net_spec import NetSpec, layers, params, to_proto  # noqa: E402
from caffe import coord_map  # noqa: E402,F401  (FCN scripts' crop offsets)
from caffe.classifier import Classifier  # noqa: E402
from caffe.detector import Detector  # noqa: E402
from caffe._solver import (  # noqa: E402
    NCCL, AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver, SGDSolver,
    Timer, get_solver, has_nccl, init_log, log, set_multiprocess, set_solver_count, set_solver_rank,
    solver_count, solver_rank,
)

__all__ += [
    "io", "coord_map", "NetSpec", "layers", "params", "to_proto", "Classifier", "Detector", "SGDSolver",
    "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "get_solver",
    "NCCL", "has_nccl", "set_solver_count", "set_solver_rank", "set_multiprocess", "solver_count",
    "solver_rank", "Timer", "init_log", "log",
]

# pycaffe's caffe.Layer: the base class user Python layers subclass
from neocaffe.layers.python_layer import PythonLayerBase as Layer  # noqa: E402

__all__ += ["Layer"]
