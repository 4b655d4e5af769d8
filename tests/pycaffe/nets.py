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
