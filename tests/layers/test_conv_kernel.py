"""The per-shape CPU kernel choice for 2-D convolutions in forwards that record nothing."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neocaffe.layers import conv_kernel
from neocaffe.layers.conv_kernel import KernelChoice, eligible

CASES = [((1, 1, 28, 28), (20, 1, 5, 5), (1, 1), (0, 0)),
         ((2, 20, 12, 12), (50, 20, 5, 5), (1, 1), (0, 0)),
         ((1, 3, 17, 15), (8, 3, 3, 5), (2, 1), (1, 2)),
         ((3, 4, 9, 9), (6, 4, 1, 1), (1, 1), (0, 0))]


@pytest.mark.parametrize("xs,ws,stride,pad", CASES)
@pytest.mark.parametrize("force", [True, False])
def test_either_kernel_equals_conv2d(monkeypatch, xs, ws, stride, pad, force: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(xs, generator=g), torch.randn(ws, generator=g), torch.randn(ws[0], generator=g)
    monkeypatch.setattr(conv_kernel, "im2col_wins", lambda *a: force)
    choice = KernelChoice()
    with torch.no_grad():
        y = choice.conv2d(x, w, b, stride, pad)
        y64 = F.conv2d(x.double(), w.double(), b.double(), stride, pad)
    assert y.shape == y64.shape
    assert (y.double() - y64).abs().max().item() <= 1e-5 * y64.abs().max().item()
    assert list(choice._by_key.values()) == [force]


def test_no_choice_while_a_graph_is_recorded(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(conv_kernel, "im2col_wins", lambda *a: calls.append(1) or True)
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    w = torch.randn(3, 2, 3, 3)
    choice = KernelChoice()
    y = choice.conv2d(x, w, None, (1, 1), (0, 0))
    y.sum().backward()
    assert calls == [] and x.grad is not None and y.grad_fn is not None
    with torch.no_grad():  # now it is chosen; a later recorded forward still takes PyTorch's default
        choice.conv2d(x, w, None, (1, 1), (0, 0))
    y = choice.conv2d(x, w, None, (1, 1), (0, 0))
    assert calls == [1] and "SlowConv2D" not in type(y.grad_fn).__name__


def test_rule_keeps_larger_convolutions_on_the_default() -> None:
    d = conv_kernel.im2col_wins
    assert d(torch.randn(1, 1, 28, 28), torch.randn(20, 1, 5, 5), (1, 1), (0, 0))  # LeNet conv1: 0.29M
    assert d(torch.randn(1, 20, 12, 12), torch.randn(50, 20, 5, 5), (1, 1), (0, 0))  # LeNet conv2: 1.6M
    assert not d(torch.randn(1, 32, 16, 16), torch.randn(32, 32, 5, 5), (1, 1), (2, 2))  # 6.5M
    assert not d(torch.randn(1, 64, 64, 64), torch.randn(64, 64, 3, 3), (1, 1), (1, 1))  # 151M


def test_same_shape_same_kernel_in_every_instance() -> None:
    """A fixed rule: two nets (or processes) compute the same numbers for the same input."""
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(1, 20, 12, 12, generator=g), torch.randn(50, 20, 5, 5, generator=g)
    with torch.no_grad():
        outs = [KernelChoice().conv2d(x, w, None, (1, 1), (0, 0)) for _ in range(4)]
        ref = torch._C._nn.thnn_conv2d(x, w, (5, 5), None, (1, 1), (0, 0))
    assert all(torch.equal(ref, o) for o in outs)


def test_eligible() -> None:
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 4, 3, 3)
    assert eligible(x, w, 1, (1, 1))
    assert not eligible(x, w, 2, (1, 1)) and not eligible(x, w, 1, (2, 1))
    assert not eligible(x.double(), w.double(), 1, (1, 1))
