"""The process-wide random source (Caffe's ``Caffe::set_random_seed``).

Fillers, Dropout masks, random crops and shuffles draw from here, so ``random_seed`` in a solver or
``caffe.set_random_seed`` makes a run repeatable. Caffe's own boost/mt19937 streams cannot be
reproduced bit for bit; seeded runs repeat within neocaffe.
"""
from __future__ import annotations

import numpy as np
import torch

_generator = torch.Generator()
_generator.seed()
_np_rng = np.random.default_rng()
_cuda_generators: dict[int, torch.Generator] = {}


def set_seed(seed: int) -> None:
    """Seed every neocaffe random stream (CPU, NumPy and CUDA)."""
    global _np_rng
    _generator.manual_seed(int(seed))
    _np_rng = np.random.default_rng(int(seed))
    for dev, g in _cuda_generators.items():
        g.manual_seed(int(seed) + 1 + dev)
    torch.manual_seed(int(seed))


def generator(device: torch.device | str | None = None) -> torch.Generator:
    """The generator for ``device`` (CPU by default)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "cuda":
        return _generator
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    if idx not in _cuda_generators:
        g = torch.Generator(device=f"cuda:{idx}")
        g.manual_seed(int(torch.randint(0, 2**62, (1,), generator=_generator)))
        _cuda_generators[idx] = g
    return _cuda_generators[idx]


def numpy_rng() -> np.random.Generator:
    """The NumPy generator (shuffles, host-side random crops)."""
    return _np_rng


def get_state() -> dict:
    """Every neocaffe random stream's position (CPU, NumPy, CUDA, and torch's own generators, which
    compiled Dropout draws from), for a resume that continues the exact trajectory."""
    state: dict = {
        "cpu": _generator.get_state(),
        "numpy": _np_rng.bit_generator.state,
        "cuda": {dev: g.get_state() for dev, g in _cuda_generators.items()},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_state(state: dict) -> None:
    """Continue every random stream from ``state`` (``get_state()``'s). CUDA streams of devices this
    machine lacks are left out."""
    import logging

    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for dev, s in state.get("cuda", {}).items():
        if int(dev) < n_cuda:
            generator(torch.device("cuda", int(dev))).set_state(s)  # created first: creation draws from the CPU one
        else:
            logging.getLogger("neocaffe").warning("random state of cuda:%s not restored: this machine has %d CUDA "
                                                  "device(s)", dev, n_cuda)
    _generator.set_state(state["cpu"])
    if _np_rng.bit_generator.state["bit_generator"] != state["numpy"]["bit_generator"]:
        raise ValueError(f"NumPy random state is for {state['numpy']['bit_generator']}; expected "
                         f"{_np_rng.bit_generator.state['bit_generator']}")
    _np_rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    if "torch_cuda" in state and n_cuda:
        torch.cuda.set_rng_state_all(state["torch_cuda"][:n_cuda])
