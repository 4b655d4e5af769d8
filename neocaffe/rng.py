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
