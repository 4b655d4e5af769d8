"""Shared test helpers: where ../shared is, and the ``gpu`` marker."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per test worker: `-n 2` on 2 cores would otherwise oversubscribe them many times over
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the repository; NEOCAFFE_SHARED points elsewhere (the GPU check carries a copy with the repo)
SHARED = Path(os.environ.get("NEOCAFFE_SHARED") or REPO / ".." / "shared").resolve()


def shared_path(*parts: str) -> Path:
    """A path under ../shared; skips the test with a clear reason when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"reference data not present: {p} (../shared beside the repo holds the real-Caffe goldens)")
    return p


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def pytest_collection_modifyitems(config, items):  # noqa: D103
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seeded_rng():
    """Every test starts from the same neocaffe/torch random state: fillers and Dropout masks are then
    the same in every run, so no test passes or fails by the draw (e.g. a finite-difference check
    landing on a ReLU kink, a saturated softmax)."""
    from neocaffe import rng

    rng.set_seed(20261122)
    yield


@pytest.fixture(autouse=True)
def _process_switches():
    """PyTorch's process-wide CUDA switches (TF32, cuDNN autotuning) as each test found them: a test
    (or the solver it builds) that sets them must not decide how the next test in its worker computes."""
    import torch

    from neocaffe.graph.cuda_math import set_tf32_switches, tf32_switches

    saved, bench = tf32_switches(), torch.backends.cudnn.benchmark
    yield
    if saved is not None:
        set_tf32_switches(*saved)
    torch.backends.cudnn.benchmark = bench
