"""Small nets and solvers for the pycaffe tests (after pycaffe's own test fixtures)."""
from __future__ import annotations

from pathlib import Path


def simple_net_text(num_output: int = 13) -> str:
    """DummyData -> Convolution -> InnerProduct -> SoftmaxWithLoss, as pycaffe's test_net uses."""
    return f"""name: 'testnet' force_backward: true
layer {{ type: 'DummyData' name: 'data' top: 'data' top: 'label'
  dummy_data_param {{ num: 5 channels: 2 height: 3 width: 4
    num: 5 channels: 1 height: 1 width: 1
    data_filler {{ type: 'gaussian' std: 1 }}
    data_filler {{ type: 'constant' }} }} }}
layer {{ type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
  convolution_param {{ num_output: 11 kernel_size: 2 pad: 3
    weight_filler {{ type: 'gaussian' std: 1 }}
    bias_filler {{ type: 'constant' value: 2 }} }}
  param {{ decay_mult: 1 }} param {{ decay_mult: 0 }} }}
layer {{ type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip_blob'
  inner_product_param {{ num_output: {num_output}
    weight_filler {{ type: 'gaussian' std: 2.5 }}
    bias_filler {{ type: 'constant' value: -3 }} }} }}
layer {{ type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip_blob' bottom: 'label' top: 'loss' }}
"""


def simple_net_file(folder: Path, num_output: int = 13) -> str:
    path = Path(folder) / "simple_net.prototxt"
    path.write_text(simple_net_text(num_output))
    return str(path)


def solver_file(folder: Path, net_file: str, extra: str = "", **fields: object) -> str:
    """pycaffe's test_solver solver (inv policy, momentum 0.9), snapshots under ``folder``."""
    base = {
        "test_iter": 10, "test_interval": 10, "base_lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005,
        "lr_policy": "'inv'", "gamma": 0.0001, "power": 0.75, "display": 100, "max_iter": 100,
        "snapshot_after_train": "false",
    }
    base.update(fields)
    lines = [f"net: '{net_file}'", f"snapshot_prefix: '{Path(folder) / 'model'}'"]
    lines += [f"{k}: {v}" for k, v in base.items()]
    path = Path(folder) / "solver.prototxt"
    path.write_text("\n".join(lines) + "\n" + extra)
    return str(path)


def alexnet_shaped_text(classes: int = 20, batch: int = 10, size: int = 227) -> str:
    """AlexNet's deploy graph (conv 11/4, LRN, max pools 3/2, grouped conv2/4/5, fc6/fc7 with
    dropout, softmax) at a fraction of its widths, with gaussian weights so outputs differ by class."""
    def conv(name, bottom, n, k, stride=1, pad=0, group=1):
        return (f"layer {{ name: '{name}' type: 'Convolution' bottom: '{bottom}' top: '{name}'\n"
                f"  convolution_param {{ num_output: {n} kernel_size: {k} stride: {stride} pad: {pad} group: {group}\n"
                f"    weight_filler {{ type: 'gaussian' std: 0.05 }} bias_filler {{ type: 'constant' value: 0.1 }} }} }}\n"
                f"layer {{ name: 'relu_{name}' type: 'ReLU' bottom: '{name}' top: '{name}' }}\n")

    def lrn(name, bottom):
        return (f"layer {{ name: '{name}' type: 'LRN' bottom: '{bottom}' top: '{name}'\n"
                f"  lrn_param {{ local_size: 5 alpha: 0.0001 beta: 0.75 }} }}\n")

    def pool(name, bottom):
        return (f"layer {{ name: '{name}' type: 'Pooling' bottom: '{bottom}' top: '{name}'\n"
                f"  pooling_param {{ pool: MAX kernel_size: 3 stride: 2 }} }}\n")

    def fc(name, bottom, n, relu=True):
        text = (f"layer {{ name: '{name}' type: 'InnerProduct' bottom: '{bottom}' top: '{name}'\n"
                f"  inner_product_param {{ num_output: {n} weight_filler {{ type: 'gaussian' std: 0.05 }}\n"
                f"    bias_filler {{ type: 'constant' value: 0.1 }} }} }}\n")
        if relu:
            text += (f"layer {{ name: 'relu_{name}' type: 'ReLU' bottom: '{name}' top: '{name}' }}\n"
                     f"layer {{ name: 'drop_{name}' type: 'Dropout' bottom: '{name}' top: '{name}'\n"
                     f"  dropout_param {{ dropout_ratio: 0.5 }} }}\n")
        return text

    return ("name: 'AlexNetShaped'\n"
            f"layer {{ name: 'data' type: 'Input' top: 'data' input_param {{ shape {{ dim: {batch} dim: 3 dim: {size} dim: {size} }} }} }}\n"
            + conv("conv1", "data", 8, 11, stride=4) + lrn("norm1", "conv1") + pool("pool1", "norm1")
            + conv("conv2", "pool1", 16, 5, pad=2, group=2) + lrn("norm2", "conv2") + pool("pool2", "norm2")
            + conv("conv3", "pool2", 24, 3, pad=1) + conv("conv4", "conv3", 24, 3, pad=1, group=2)
            + conv("conv5", "conv4", 16, 3, pad=1, group=2) + pool("pool5", "conv5")
            + fc("fc6", "pool5", 32) + fc("fc7", "fc6", 32) + fc("fc8", "fc7", classes, relu=False)
            + "layer { name: 'prob' type: 'Softmax' bottom: 'fc8' top: 'prob' }\n")


def alexnet_shaped_files(folder: Path, classes: int = 20, batch: int = 10, seed: int = 0) -> tuple[str, str]:
    """(deploy prototxt, caffemodel) of ``alexnet_shaped_text`` with seeded gaussian weights."""
    import caffe

    caffe.set_random_seed(seed)
    model = Path(folder) / "alexnet_shaped.prototxt"
    model.write_text(alexnet_shaped_text(classes, batch))
    weights = Path(folder) / "alexnet_shaped.caffemodel"
    caffe.Net(str(model), caffe.TEST).save(str(weights))
    return str(model), str(weights)
