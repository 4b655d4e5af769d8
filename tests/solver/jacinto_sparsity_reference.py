"""A loop-by-loop NumPy port of caffe-jacinto's sparsification, the reference of test_jacinto_sparsity.py.

mathmanu/caffe-jacinto ``caffe-0.17`` @ 2678b2b8556cc64ba66d801537bb066fc070889a: ``src/caffe/solver.cpp``
(``Solver::ThresholdNet``), ``src/caffe/net.cpp`` (``FindAndApplyChannelThresholdNet``,
``StoreSparseModeConnectivity``, ``ApplySparseModeConnectivity``, ``GetConnectivitySparsity``,
``DisplayConnectivitySparsity``), ``src/caffe/util/math_functions.cpp`` (``caffe_cpu_count_zero``) and
``include/caffe/util/math_functions.hpp`` (``zerout``, ``if_nonzero``, ``eltwise_multi``). Every float is an
``np.float32`` as the fork's ``float``; the loops are the fork's loops.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

f32 = np.float32


@dataclass
class Layer:
    """What the fork reads of a layer: name, type, conv kernel and group, blob 0 (float32, edited in place)."""

    name: str
    type: str
    kernel: tuple[int, int] = (0, 0)
    group: int = 1
    weight: np.ndarray | None = None
    param_name: str = "0"


@dataclass
class State:
    """Solver's sparsity_factor_ and each blob's connectivity_ (None before a store)."""

    factor: np.float32
    connectivity: dict[str, np.ndarray | None] = field(default_factory=dict)


def count_zero(x: np.ndarray, threshold: np.float32) -> int:
    """caffe_cpu_count_zero: x <= threshold && x >= -threshold (a float count, exact here)."""
    count = 0
    count += int(np.count_nonzero((x <= threshold) & (x >= -threshold)))
    return count


def find_and_apply_channel_threshold(layers: list[Layer], low: np.float32, mid: np.float32, high: np.float32,
                                     maxratio: np.float32, value_max: np.float32,
                                     step_factor: np.float32 = f32(1e-7)) -> list[np.ndarray]:
    """Net::FindAndApplyChannelThresholdNet; returns each thresholded layer's per-channel thresholds."""
    chosen = []
    for layer in layers:
        if layer.type != "Convolution":
            continue
        w = layer.weight.reshape(-1)  # a view: zerout writes the layer's weights
        num_group = layer.group
        kh, kw = layer.kernel
        no = layer.weight.shape[0]
        ni = layer.weight.shape[1] * num_group
        need = kh > 2 and kw > 2 and num_group != no
        if (ni >= 32 or no >= 32) and num_group < no and need:
            fraction = high if (ni >= 256 and no >= 512) else (mid if (ni >= 32 and no >= 32) else low)
            thresholds = []
            for c in range(no):
                wc = ni * kh * kw // num_group
                start = wc * c
                ch = w[start:start + wc]
                max_abs = f32(abs(ch.max()))
                min_abs = f32(abs(ch.min()))
                max_abs_value = max(max_abs, min_abs)
                step_size = f32(max_abs_value * step_factor)
                max_threshold_value = min(min(value_max, f32(max_abs_value * maxratio)), max_abs_value)
                selected = f32(0)
                granularity, search_iter = f32(1000), f32(0)
                while granularity >= 1:
                    step_x = f32(step_size * granularity)
                    range_x = f32(f32(step_x * f32(10)) * f32(2))
                    start_x = selected
                    min_step = max(f32(start_x - range_x), f32(0)) if search_iter > 0 else f32(0)
                    max_step = f32(start_x + range_x) if search_iter > 0 else max_threshold_value
                    step = min_step
                    while step < max_step and step < max_threshold_value:
                        zcount = f32(count_zero(ch, step))
                        zratio = f32(zcount / f32(wc))
                        if zratio <= fraction:
                            selected = step
                        else:
                            break
                        step = f32(step + step_x)
                    granularity, search_iter = f32(granularity / f32(10)), f32(search_iter + 1)
                ch[(ch <= selected) & (ch >= -selected)] = 0  # zerout
                thresholds.append(selected)
            chosen.append(np.array(thresholds, dtype=f32))
    return chosen


def store_connectivity(layers: list[Layer], state: State) -> None:
    """Net::StoreSparseModeConnectivity: if_nonzero of each Convolution blob 0."""
    for layer in layers:
        if layer.type == "Convolution":
            x = layer.weight
            state.connectivity[layer.name] = ((x > 0) | (x < -0.0)).astype(f32)


def apply_connectivity(layers: list[Layer], state: State) -> None:
    """Net::ApplySparseModeConnectivity: eltwise_multi of each blob by its connectivity."""
    for layer in layers:
        conn = state.connectivity.get(layer.name) if layer.type == "Convolution" else None
        if conn is not None:
            layer.weight *= conn


def connectivity_sparsity(layers: list[Layer], state: State) -> np.float32:
    """Net::GetConnectivitySparsity + DisplayConnectivitySparsity(false)."""
    sparsity_map = {}
    for i, layer in enumerate(layers):
        nxt = layers[i + 1].type if i + 1 < len(layers) else ""
        if nxt not in ("Softmax", "SoftmaxWithLoss") and layer.type == "Convolution":
            conn = state.connectivity.get(layer.name)
            zeros = 0 if conn is None else count_zero(conn, f32(0))
            sparsity_map[f"{layer.name}_param_{layer.param_name}"] = (zeros, layer.weight.size)
    total_zero, total = f32(0), f32(0)
    for key in sorted(sparsity_map):
        total_zero = f32(total_zero + f32(sparsity_map[key][0]))
        total = f32(total + f32(sparsity_map[key][1]))
    with np.errstate(invalid="ignore"):
        return f32(total_zero / total)


def threshold_net(layers: list[Layer], state: State, iteration: int, p) -> None:
    """Solver::ThresholdNet at ``iteration`` for SolverParameter ``p``."""
    if p.sparse_mode == 0:
        return
    if p.sparsity_target > 0 and iteration >= p.sparsity_start_iter and iteration % p.sparsity_step_iter == 0:
        low, mid = f32(state.factor / 2), state.factor
        target_max = f32(min(float(f32(p.sparsity_target)) + 0.15, 0.95))
        achieved = connectivity_sparsity(layers, state)
        if state.factor <= target_max and achieved < f32(p.sparsity_target):
            find_and_apply_channel_threshold(layers, low, mid, mid, f32(p.sparsity_threshold_maxratio),
                                             f32(p.sparsity_threshold_value_max))
            store_connectivity(layers, state)
            state.factor = f32(state.factor + f32(p.sparsity_step_factor))
    apply_connectivity(layers, state)
