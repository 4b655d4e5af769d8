"""On CUDA: fp32 really is fp32 (TF32 switched off for matmuls and cuDNN), tf32 switches it on, bf16
autocast trains, and the default iteration does not read the loss back every time."""
from __future__ import annotations

import math

import pytest
import torch

from tests.speed.nets import make_solver, train_losses

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision, tf32", [("fp32", False), ("tf32", True), ("bf16", False)])
def test_precision_sets_the_tf32_switches(precision, tf32):
    torch.backends.cuda.matmul.allow_tf32 = not tf32
    torch.backends.cudnn.allow_tf32 = not tf32
    s = make_solver(device="cuda:0", precision=precision)
    assert torch.backends.cuda.matmul.allow_tf32 is tf32
    assert torch.backends.cudnn.allow_tf32 is tf32
    losses = train_losses(s, 3)
    assert all(math.isfinite(x) for x in losses)


def test_cudnn_benchmark_and_channels_last_on_cuda():
    torch.backends.cudnn.benchmark = False
    s = make_solver(device="cuda:0", cudnn_benchmark=True, channels_last=True, precision="bf16")
    assert torch.backends.cudnn.benchmark is True
    assert all(math.isfinite(x) for x in train_losses(s, 3))
    torch.backends.cudnn.benchmark = False


def test_losses_are_read_back_every_fifty_iterations_by_default():
    from neocaffe.solver.loss_monitor import DEFAULT_GPU_LOSS_CHECK_INTERVAL

    s = make_solver(device="cuda:0")
    assert s.loss_check_interval == DEFAULT_GPU_LOSS_CHECK_INTERVAL
    s.step(7)
    assert len(s.losses) == 1 and math.isfinite(s.smoothed_loss)
