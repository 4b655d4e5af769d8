"""pycaffe's global mode: ``set_mode_cpu/gpu``, ``set_device``, phases, random seed.

The only global state in neocaffe lives here; the core takes its device explicitly.
"""
from __future__ import annotations

import torch

from neocaffe import rng

TRAIN = 0
TEST = 1

_state = {"gpu": False, "device": 0}


def set_mode_cpu() -> None:
    """Nets and solvers made from now on run on the CPU."""
    _state["gpu"] = False


def set_mode_gpu() -> None:
    """Nets and solvers made from now on run on CUDA device ``set_device`` (default 0)."""
    if not torch.cuda.is_available():
        raise RuntimeError("caffe.set_mode_gpu(): no CUDA device is available to PyTorch on this machine")
    _state["gpu"] = True


def set_device(device_id: int) -> None:
    """Select the CUDA device for GPU mode (Caffe's ``Caffe::SetDevice``)."""
    n = torch.cuda.device_count()
    if n and not 0 <= device_id < n:
        raise ValueError(f"caffe.set_device({device_id}): this machine has {n} CUDA device(s)")
    _state["device"] = int(device_id)


def set_random_seed(seed: int) -> None:
    """Seed fillers, Dropout and data shuffles (Caffe's ``Caffe::set_random_seed``)."""
    rng.set_seed(seed)


def current_device() -> torch.device:
    """The device new nets go to under the current mode."""
    return torch.device(f"cuda:{_state['device']}") if _state["gpu"] else torch.device("cpu")
