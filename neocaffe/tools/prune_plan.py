"""Which channels ``prune`` removes: the net's blobs as channel classes, and the decision per class.

A *channel class* is a set of (blob, channel) pairs that must go together: channel-wise layers (ReLU,
BatchNorm, Scale, Pooling, Dropout, Eltwise, ...) join their inputs' channel c with their output's
channel c, Concat (axis 1) joins input i's channel c with output channel ``offset_i + c``, Split and
in-place layers join the blob versions they read and write. A class is produced by Convolution or
InnerProduct filters and read by Convolution or InnerProduct layers (their input channels); anything
else that produces or reads a member (a data layer, Softmax, a loss, Reshape, a net output) keeps it.

A class is removed when

* (unused) no reader uses it: every reader's weights on it are zero (the SSL "channel"/"filter shape"
  groups), so its producing filters go whatever they hold; or
* (dead) every producing filter is zero: each member is then a constant (the filter's bias through the
  channel-wise layers: ReLU, PReLU, BatchNorm with its stored statistics, Scale, Bias, Power, Sigmoid,
  TanH, AbsVal, ELU, MAX pooling, unpadded AVE pooling, Eltwise, Concat), folded into each reader's bias
  (``bias[o] += value * sum of the reader's weights on it``); a padded Convolution reader can take
  only a zero constant (its border taps would read the padding instead).

A weight is zero when ``|w| < threshold`` (the scnn branch's sparsity test, ``ZEROUT_THRESHOLD`` 1e-4 by
default; threshold 0: exact zeros only). Grouped convolutions keep equal groups: the removals in each
group that stays must be equal (a class is kept otherwise, and the plan is made again), and a group
all of whose input channels and filters go is removed (the group count drops).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["Graph", "Plan", "make_plan", "is_zero", "PRODUCERS", "LINKS", "PruneError"]

PRODUCERS = ("Convolution", "InnerProduct")
LINKS = frozenset({"ReLU", "PReLU", "BatchNorm", "Scale", "Bias", "Dropout", "Pooling", "Sigmoid", "TanH",
                   "AbsVal", "ELU", "Power", "Split", "Flatten", "Eltwise", "Concat"})


class PruneError(ValueError):
    """The net or its weights cannot be pruned as asked (names the layer and what was received)."""


def is_zero(a: np.ndarray, threshold: float) -> np.ndarray:
    """The branch's test: ``|w| < threshold``; with threshold 0, exact zeros."""
    a = np.asarray(a)
    return np.abs(a) < threshold if threshold > 0 else a == 0


@dataclass
class Version:
    """One write of a blob: its producing layer (-1: a net input), channel count (None: unknown)."""
    name: str
    producer: int
    channels: int | None
    readers: list[tuple[int, int]] = field(default_factory=list)  # (layer, bottom index)


def _is_link(lp: Any) -> bool:
    t = lp.type
    if t not in LINKS:
        return False
    if t in ("Scale", "Bias"):
        p = lp.scale_param if t == "Scale" else lp.bias_param
        return len(lp.bottom) == 1 and p.axis in (1, -3) and p.num_axes == 1
    if t == "Concat":
        p = lp.concat_param
        return (p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim) == 1
    if t == "Flatten":
        return lp.flatten_param.axis == 1 and lp.flatten_param.end_axis == -1
    return True


class Graph:
    """The layers as blob versions and channel classes (union-find over (version, channel))."""

    def __init__(self, layers: list[Any], weights: dict[str, list[np.ndarray]],
                 input_channels: dict[str, int]) -> None:
        self.layers, self.weights = layers, weights
        self.versions: list[Version] = []
        current: dict[str, int] = {}
        self.bottoms: list[list[int]] = []
        self.tops: list[list[int]] = []
        for i, lp in enumerate(layers):
            bots = []
            for k, name in enumerate(lp.bottom):
                if name not in current:
                    current[name] = self._add(name, -1, input_channels.get(name))
                self.versions[current[name]].readers.append((i, k))
                bots.append(current[name])
            self.bottoms.append(bots)
            tops = []
            for name in lp.top:
                current[name] = self._add(name, i, self._channels(lp, bots))
                tops.append(current[name])
            self.tops.append(tops)
        self.parent: dict[tuple[int, int], tuple[int, int]] = {}
        for i, lp in enumerate(layers):
            if _is_link(lp):
                self._join(i, lp)

    def _add(self, name: str, producer: int, channels: int | None) -> int:
        self.versions.append(Version(name, producer, channels))
        return len(self.versions) - 1

    def _channels(self, lp: Any, bots: list[int]) -> int | None:
        if lp.type == "Convolution":
            return int(lp.convolution_param.num_output)
        if lp.type == "InnerProduct":
            return int(lp.inner_product_param.num_output)
        if not _is_link(lp) or not bots:
            return None
        counts = [self.versions[b].channels for b in bots]
        if any(c is None for c in counts):
            return None
        return int(sum(counts)) if lp.type == "Concat" else counts[0]  # type: ignore[arg-type]

    def find(self, node: tuple[int, int]) -> tuple[int, int]:
        root = node
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(node, node) != root:
            self.parent[node], node = root, self.parent[node]
        return root

    def _union(self, a: tuple[int, int], b: tuple[int, int]) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def _join(self, i: int, lp: Any) -> None:
        offset = 0
        for k, b in enumerate(self.bottoms[i]):
            c = self.versions[b].channels
            if c is None:
                return
            for t in self.tops[i]:
                for ch in range(c):
                    self._union((b, ch), (t, offset + ch))
            if lp.type == "Concat":
                offset += c

    def classes(self) -> dict[tuple[int, int], list[tuple[int, int]]]:
        """Root -> members, for every (version, channel) of a version with a known channel count."""
        out: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for v, ver in enumerate(self.versions):
            for ch in range(ver.channels or 0):
                out.setdefault(self.find((v, ch)), []).append((v, ch))
        return out

    # -- weights seen through a reader or a producer -------------------------------------------------
    def reader_slice(self, i: int, v: int, ch: int) -> tuple[np.ndarray, np.ndarray, Any]:
        """(reader weight, boolean mask of the weights reading channel ``ch``, output rows) of layer ``i``."""
        lp, w = self.layers[i], self.weights[self.layers[i].name][0]
        c = self.versions[v].channels or 1
        mask = np.zeros(w.shape, dtype=bool)
        if lp.type == "Convolution":
            g = int(lp.convolution_param.group)
            per_in, per_out = c // g, w.shape[0] // g
            gi = ch // per_in
            mask[gi * per_out:(gi + 1) * per_out, ch - gi * per_in] = True
        else:
            hw = w.shape[1] // c
            mask[:, ch * hw:(ch + 1) * hw] = True
        return w, mask, None

    def reads(self, i: int, v: int, ch: int, threshold: float) -> bool:
        """Whether layer ``i`` (a Convolution or InnerProduct reader) uses channel ``ch`` of version ``v``."""
        w, mask, _ = self.reader_slice(i, v, ch)
        return bool((~is_zero(w[mask], threshold)).any())

    def reader_ok(self, i: int, k: int) -> bool:
        lp = self.layers[i]
        if k != 0 or lp.name not in self.weights:
            return False
        if lp.type == "Convolution":
            return int(lp.convolution_param.axis) == 1 and self.weights[lp.name][0].ndim >= 3
        if lp.type == "InnerProduct":
            p = lp.inner_product_param
            return int(p.axis) == 1 and not p.transpose
        return False


@dataclass
class Plan:
    """The classes removed and the weights with the dead classes' constants folded into readers' biases."""
    graph: Graph
    removed: set[tuple[int, int]]
    weights: dict[str, list[np.ndarray]]
    added_bias: set[str] = field(default_factory=set)  # readers that got a bias they did not have
    threshold: float = 0.0

    def gone(self, v: int, ch: int) -> bool:
        return self.graph.find((v, ch)) in self.removed


def _first_producer(g: Graph, members: list[tuple[int, int]]) -> int:
    return min((g.versions[v].producer for v, _ in members), default=-1)


def make_plan(layers: list[Any], weights: dict[str, list[np.ndarray]], input_channels: dict[str, int],
              threshold: float, constant: Callable[..., float | None]) -> Plan:
    """Decide every class (see the module docstring); ``constant(plan_weights, graph, v, ch)`` is the
    value of a dead member (None when it is not one constant)."""
    graph = Graph(layers, weights, input_channels)
    classes = graph.classes()
    forced: set[tuple[int, int]] = set()
    while True:
        plan = _decide(graph, classes, weights, threshold, constant, forced)
        extra = _group_violations(plan, classes)
        if not extra:
            return plan
        forced |= extra


def _decide(graph: Graph, classes: dict, weights: dict, threshold: float, constant: Callable,
            forced: set) -> Plan:
    work = {k: [a.copy() for a in v] for k, v in weights.items()}
    plan = Plan(graph, set(), work, threshold=threshold)
    graph.weights = work
    order = sorted(classes, key=lambda r: _first_producer(graph, classes[r]))
    for root in order:
        members = classes[root]
        if root in forced:
            continue
        producers, readers, blocked = [], [], False
        for v, ch in members:
            ver = graph.versions[v]
            p = graph.layers[ver.producer].type if ver.producer >= 0 else None
            if p in PRODUCERS and graph.layers[ver.producer].name in work:
                producers.append((ver.producer, ch))
            elif p is None or not _is_link(graph.layers[ver.producer]):
                blocked = True
            if not ver.readers:
                blocked = True  # a net output
            for i, k in ver.readers:
                if _is_link(graph.layers[i]):
                    if any(graph.versions[x].channels is None for x in graph.bottoms[i] + graph.tops[i]):
                        blocked = True  # a channel-wise layer whose channels are not all known: not joined
                    continue
                if graph.reader_ok(i, k):
                    readers.append((i, v, ch))
                else:
                    blocked = True
        if blocked or not producers:
            continue
        if not any(graph.reads(i, v, ch, threshold) for i, v, ch in readers):
            plan.removed.add(root)
            continue
        if all(is_zero(work[graph.layers[i].name][0][ch], threshold).all() for i, ch in producers):
            if _fold(plan, readers, constant):
                plan.removed.add(root)
    return plan


def _fold(plan: Plan, readers: list[tuple[int, int, int]], constant: Callable) -> bool:
    """Fold each reader's constant input into its bias; False (nothing changed) when one cannot be."""
    g, changes = plan.graph, []
    for i, v, ch in readers:
        value = constant(plan.weights, g, v, ch)
        if value is None:
            return False
        if value == 0.0:
            continue
        lp = g.layers[i]
        if lp.type == "Convolution" and any(x for x in list(lp.convolution_param.pad) + [
                lp.convolution_param.pad_h, lp.convolution_param.pad_w]):
            return False
        w, mask, _ = g.reader_slice(i, v, ch)
        per_row = np.where(mask, w, 0).reshape(w.shape[0], -1).sum(axis=1, dtype=np.float64)
        changes.append((lp.name, (value * per_row).astype(np.float32)))
    for name, delta in changes:
        blobs = plan.weights[name]
        if len(blobs) < 2:
            blobs.append(np.zeros(blobs[0].shape[0], dtype=np.float32))
            plan.added_bias.add(name)
        blobs[1] = (blobs[1].reshape(-1) + delta).astype(np.float32)
    return True


def _group_violations(plan: Plan, classes: dict) -> set[tuple[int, int]]:
    """Classes to keep so that every grouped convolution keeps equal groups and no blob loses all
    its channels (the first one stays)."""
    g, keep = plan.graph, set()
    for v, ver in enumerate(g.versions):
        if ver.channels and all(plan.gone(v, c) for c in range(ver.channels)):
            keep.add(g.find((v, 0)))
    for i, lp in enumerate(g.layers):
        if lp.type != "Convolution" or int(lp.convolution_param.group) == 1 or not g.bottoms[i]:
            continue
        groups = int(lp.convolution_param.group)
        v_in, v_out = g.bottoms[i][0], g.tops[i][0]
        c_in, c_out = g.versions[v_in].channels, g.versions[v_out].channels
        if not c_in or not c_out:
            continue
        ins = [[c for c in range(gi * c_in // groups, (gi + 1) * c_in // groups) if plan.gone(v_in, c)]
               for gi in range(groups)]
        outs = [[c for c in range(gi * c_out // groups, (gi + 1) * c_out // groups) if plan.gone(v_out, c)]
                for gi in range(groups)]
        whole = [len(a) == c_in // groups and len(b) == c_out // groups for a, b in zip(ins, outs)]
        stay = [gi for gi in range(groups) if not whole[gi]]
        for lists, v in ((ins, v_in), (outs, v_out)):
            if not stay:
                continue
            least = min(len(lists[gi]) for gi in stay)
            for gi in stay:
                keep |= {g.find((v, c)) for c in lists[gi][least:]}
    return keep
