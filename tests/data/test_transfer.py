"""neocaffe.data.transfer.to_device: batch tensors to their device, CPU tensors bound for CUDA through
pinned memory (asynchronously), dtype converted on the host first."""
from __future__ import annotations

import pytest
import torch

from neocaffe.data.transfer import to_device


def test_on_the_cpu_it_is_a_dtype_conversion_at_most():
    t = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32)
    assert to_device(t, "cpu") is t
    got = to_device(t, torch.device("cpu"), torch.int64)
    assert got.dtype == torch.int64 and torch.equal(got, t.long())
    flags = to_device(torch.tensor([0, 1, 1], dtype=torch.uint8), "cpu", torch.bool)
    assert flags.tolist() == [False, True, True]


def test_a_tensor_already_there_in_another_dtype_is_converted_in_place_of_a_copy():
    t = torch.arange(4, dtype=torch.float64, device="meta")
    got = to_device(t, "meta", torch.float32)
    assert got.device.type == "meta" and got.dtype == torch.float32


@pytest.mark.gpu
def test_cpu_to_cuda_through_pinned_memory_keeps_the_values():
    labels = torch.arange(256, dtype=torch.float32)
    offsets = torch.randint(0, 30, (256, 2), dtype=torch.int32)
    got = to_device(labels, "cuda")
    offs = to_device(offsets, "cuda", torch.int64)
    back = to_device(got, "cuda")
    assert back is got and got.device.type == "cuda" and offs.dtype == torch.int64
    torch.cuda.synchronize()
    assert torch.equal(got.cpu(), labels) and torch.equal(offs.cpu(), offsets.long())
