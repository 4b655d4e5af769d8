"""YOLO9000's WordTree for ``region_loss_param.softmax_tree``: the tree file, the per-group softmax, the
hierarchical class delta and probability.

Lineage: choasup/caffe-yolo9000 @ e8a476c4c23d756632f7a26c681a96e3ab672544, ``src/caffe/util/tree.cpp`` and
``include/caffe/util/tree.hpp`` (darknet's ``read_tree`` in C++), with ``softmax_tree``, ``delta_region_class`` (its
tree branch) and ``get_hierarchy_prob`` of ``src/caffe/layers/region_loss_layer.cpp``. Intel Caffe (@ 44d53638) has the
same three functions and a ``tree.cpp`` that takes the name from the first 9 characters and the parent from the 11th
on: the two read darknet's WordNet trees (9-character ids, e.g. ``9k.tree``) alike; neocaffe reads choasup's way
(the name before the first space), which is the only way ``voc.tree`` reads (Intel's throws ``std::out_of_range``).

Tree file: one node a line, ``<name> <parent>``, parent -1 for a root or the line index (from 0) of an earlier node;
nodes of one parent are consecutive lines (a *group*: a new group starts wherever the parent changes). The parent is
C++'s ``ss >> parent`` of what follows the first space (leading blanks skipped, the integer prefix taken). Refused,
naming the file and line, where the fork reads out of bounds, loops forever or reads no node: a missing or empty file
(the fork prints "file is not exist!" and goes on with no node), a line without a space or without an integer after
it (the fork's parent would be 0 or -1 by accident), a parent that is not -1 or an earlier line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

_INT_PREFIX = re.compile(r"\s*([+-]?\d+)")


@dataclass(frozen=True)
class Tree:
    """``tree``: per node its name, parent (-1: root) and group; per group its offset and size (first node, count)."""

    name: tuple[str, ...]
    parent: tuple[int, ...]
    group: tuple[int, ...]
    group_offset: tuple[int, ...]
    group_size: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.parent)


def read_tree(path: str, error: Callable[[str], Exception]) -> Tree:
    """``tree::tree(filename)`` on ``path`` (opened as written: relative to the current working directory, where
    the fork's ``caffe`` runs); ``error`` makes the layer's exception."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise error(f"region_loss_param.softmax_tree: cannot read the tree file {path!r} (relative paths are relative "
                    f"to the working directory): {e.strerror or e}") from None
    if lines and lines[-1] == "":
        lines.pop()  # getline: a final newline ends the last line
    names, parents, group, offsets, sizes = [], [], [], [], []
    last_parent, group_size = -1, 0
    for n, line in enumerate(lines):
        pos = line.find(" ")
        m = _INT_PREFIX.match(line, pos + 1) if pos >= 0 else None
        if m is None:
            raise error(f"region_loss_param.softmax_tree {path!r} line {n + 1}: {line!r} is not '<name> <parent>'; "
                        "expected a name, a space and the parent's line index (-1 for a root)")
        parent = int(m.group(1))
        if not -1 <= parent < n:
            raise error(f"region_loss_param.softmax_tree {path!r} line {n + 1}: parent {parent} of {line[:pos]!r}; "
                        f"expected -1 or the index of an earlier line, 0..{n - 1}")
        if parent != last_parent:
            offsets.append(n - group_size)
            sizes.append(group_size)
            group_size, last_parent = 0, parent
        names.append(line[:pos])
        parents.append(parent)
        group.append(len(offsets))
        group_size += 1
    if not parents:
        raise error(f"region_loss_param.softmax_tree {path!r} has no node; expected lines '<name> <parent>'")
    offsets.append(len(parents) - group_size)
    sizes.append(group_size)
    return Tree(tuple(names), tuple(parents), tuple(group), tuple(offsets), tuple(sizes))


def tree_softmax(logits: np.ndarray, tree: Tree, exp: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``softmax_tree``: ``softmax_region`` over each group in turn, along axis 2 of ``logits`` (N x num x classes x
    cells, the data type): per group its maximum, ``exp(v - max)`` (``exp``: the fork's, rounded to the data type),
    the sum accumulated in group order in the data type, the quotients. Classes past the tree's nodes stay as given."""
    ft = logits.dtype.type
    out = logits.copy()
    for off, size in zip(tree.group_offset, tree.group_size):
        if size == 0:
            continue
        g = logits[:, :, off:off + size]
        e = exp(g - g.max(axis=2, keepdims=True)).astype(ft)
        total = np.cumsum(e, axis=2, dtype=ft)[:, :, -1:]
        out[:, :, off:off + size] = e / total
    return out


def delta_class_tree(swap: np.ndarray, diff: np.ndarray, index: int, label: int, tree: Tree, stride: int,
                     scale: np.floating) -> np.floating:
    """``delta_region_class`` with the tree: from node ``label`` up to its root, every node of the node's group gets
    ``-scale * (0 - p)`` and the node ``-scale * (1 - p)`` (in double, stored in the data type), written into
    ``diff`` (flat; class k at ``index + k * stride``). Returns the fork's ``pred``: the path's probabilities
    multiplied in float (its ``avg_cat`` term)."""
    ft = diff.dtype.type
    pred = np.float32(1)
    s = np.float64(scale)
    while label >= 0:
        pred = np.float32(pred * swap[index + label * stride])
        g = tree.group[label]
        k = index + (tree.group_offset[g] + np.arange(tree.group_size[g])) * stride
        diff[k] = (-1.0 * s * (ft(0) - swap[k]).astype(np.float64)).astype(ft)
        at = index + label * stride
        diff[at] = ft(-1.0 * s * np.float64(ft(1) - swap[at]))
        label = tree.parent[label]
    return pred


def hierarchy_prob(swap: np.ndarray, index: int, label: int, tree: Tree, stride: int) -> np.float32:
    """``get_hierarchy_prob``: the probabilities from node ``label`` up to its root multiplied in float."""
    p = np.float32(1)
    while label >= 0:
        p = np.float32(p * swap[index + label * stride])
        label = tree.parent[label]
    return p
