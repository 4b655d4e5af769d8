"""Grouped AlexNet <-> split AlexNet weights (``group_split`` / ``group_merge``).

The split net (``train_val_split.prototxt``) replaces a layer ``X`` by parallel layers ``X_group0``,
``X_group1``, ... whose filters are consecutive slices of ``X``'s filters (axis 0 of weights and
biases): a grouped convolution's groups, or an ungrouped layer cut into equal parts. Layers without
``_group<k>`` counterparts are copied unchanged. Merging concatenates the parts back: a split ->
merge round trip is exact.

Usage: group_split NET_SPLIT.prototxt GROUPED.caffemodel OUT.caffemodel[.h5]
       group_merge NET_GROUPED.prototxt SPLIT.caffemodel[.h5] OUT.caffemodel[.h5]

The fork's ``python/group_spitter.py`` and ``python/group_merger.py`` (``main_fork_split`` /
``main_fork_merge``) take ``--original_alexnet GROUPED.prototxt --split_alexnet SPLIT.prototxt
--caffemodel W`` and write ``W.split.caffemodel.h5`` / ``W.merge.caffemodel.h5``.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

import numpy as np

from neocaffe.io.prototxt import read_net
from neocaffe.io.weights import LayerWeights, load_weights, save_weights

_PART = re.compile(r"^(?P<base>.+)_group(?P<k>\d+)$")


def _parts_by_base(names: Sequence[str]) -> dict[str, list[str]]:
    parts: dict[str, list[tuple[int, str]]] = {}
    for n in names:
        m = _PART.match(n)
        if m:
            parts.setdefault(m.group("base"), []).append((int(m.group("k")), n))
    return {b: [n for _, n in sorted(v)] for b, v in parts.items()}


def split_weights(grouped: Sequence[LayerWeights], split_layer_names: Sequence[str],
                  split_types: dict[str, str]) -> list[LayerWeights]:
    """Weights for the split net's layers from the grouped net's weights."""
    by_base = _parts_by_base(split_layer_names)
    out: list[LayerWeights] = []
    for lw in grouped:
        names = by_base.get(lw.name)
        if not names:
            if lw.name in split_types:
                out.append(LayerWeights(lw.name, lw.type, list(lw.blobs)))
            continue
        p = len(names)
        for b in lw.blobs:
            if b.shape[0] % p:
                raise ValueError(f"layer '{lw.name}': {b.shape[0]} filters do not split into {p} equal parts")
        pieces = [np.split(b, p, axis=0) for b in lw.blobs]  # once per blob, not once per part
        for k, name in enumerate(names):
            blobs = [np.ascontiguousarray(parts[k]) for parts in pieces]
            out.append(LayerWeights(name, split_types.get(name, lw.type), blobs))
    return out


def merge_weights(split: Sequence[LayerWeights], grouped_layer_names: Sequence[str],
                  grouped_types: dict[str, str]) -> list[LayerWeights]:
    """Weights for the grouped net's layers from the split net's weights."""
    by_name = {lw.name: lw for lw in split}
    by_base = _parts_by_base([lw.name for lw in split])
    out: list[LayerWeights] = []
    for name in grouped_layer_names:
        if name in by_base:
            parts = [by_name[n] for n in by_base[name]]
            nblobs = {len(p.blobs) for p in parts}
            if len(nblobs) != 1:
                raise ValueError(f"layer '{name}': its parts hold different numbers of blobs {sorted(nblobs)}")
            blobs = [np.concatenate([p.blobs[i] for p in parts], axis=0) for i in range(nblobs.pop())]
            out.append(LayerWeights(name, grouped_types[name], blobs))
        elif name in by_name:
            lw = by_name[name]
            out.append(LayerWeights(name, lw.type, list(lw.blobs)))
    return out


def _layer_types(prototxt: str) -> tuple[list[str], dict[str, str]]:
    net = read_net(prototxt)
    names = [l.name for l in net.layer]
    return names, {l.name: l.type for l in net.layer}


def _main(prog: str, argv: list[str] | None, net_help: str, weights_help: str, convert) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prototxt", help=net_help)
    ap.add_argument("weights", help=weights_help)
    ap.add_argument("output")
    a = ap.parse_args(argv)
    try:
        names, types = _layer_types(a.prototxt)
        out = convert(load_weights(a.weights), names, types)
        save_weights(a.output, out)
    except (ValueError, OSError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    print(f"{prog}: {len(out)} layers -> {a.output}")
    return 0


def main_split(argv: list[str] | None = None) -> int:
    """``group_split NET_SPLIT.prototxt GROUPED.caffemodel OUT``."""
    return _main("group_split", argv, "the split net", "the grouped net's weights", split_weights)


def main_merge(argv: list[str] | None = None) -> int:
    """``group_merge NET_GROUPED.prototxt SPLIT.caffemodel OUT``."""
    return _main("group_merge", argv, "the grouped net", "the split net's weights", merge_weights)


def _fork_main(prog: str, argv: list[str] | None, split: bool) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--original_alexnet", required=True, help="the grouped net")
    ap.add_argument("--split_alexnet", required=True, help="the split net")
    ap.add_argument("--caffemodel", required=True, help="the weights to " + ("split" if split else "merge"))
    a = ap.parse_args(argv)
    out = a.caffemodel + (".split" if split else ".merge") + ".caffemodel.h5"
    net = a.split_alexnet if split else a.original_alexnet
    status = (main_split if split else main_merge)([net, a.caffemodel, out])
    if status == 0:
        print(f"Saved as {out}")
    return status


def main_fork_split(argv: list[str] | None = None) -> int:
    """The fork's ``group_spitter.py --original_alexnet G --split_alexnet S --caffemodel W``."""
    return _fork_main("group_spitter.py", argv, split=True)


def main_fork_merge(argv: list[str] | None = None) -> int:
    """The fork's ``group_merger.py --original_alexnet G --split_alexnet S --caffemodel W``."""
    return _fork_main("group_merger.py", argv, split=False)
