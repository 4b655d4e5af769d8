"""Convert weights between ``.caffemodel`` (binary) and ``.caffemodel.h5`` (Caffe's HDF5 layout).

Usage: caffemodel_convertor IN OUT   (the format of OUT follows its name: ``.h5`` -> HDF5)
       caffemodel_convertor --network NET.prototxt --caffemodel W.caffemodel[.h5]

The second form is the fork's ``python/caffemodel_convertor.py``: the TEST net of NET with W copied in
(so only NET's layers, and a NET layer that W lacks gets its fillers' values) is saved in the other
format beside W: ``W.caffemodel`` -> ``W.caffemodel.h5``, ``W.caffemodel.h5`` -> ``W.caffemodel``.
"""
from __future__ import annotations

import argparse
import os
import sys

from neocaffe.io.weights import load_weights, save_weights


def convert_for_net(network: str, caffemodel: str) -> str:
    """The fork's conversion (see the module docstring); returns the path written."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net_with_source
    from neocaffe.layers.base import TEST

    root, ext = os.path.splitext(caffemodel)
    if ext not in (".h5", ".caffemodel"):
        raise ValueError(f"{caffemodel}: File with wrong suffix; expected .caffemodel or .h5")
    out, hdf5 = (root, False) if ext == ".h5" else (caffemodel + ".h5", True)
    param, source = read_net_with_source(network)
    net = Net(param, TEST, source=source, keep_blob_diffs=False)
    try:
        net.copy_from(caffemodel)
        save_weights(out, net.to_weights(), hdf5=hdf5, net_param=None if hdf5 else net.net_param)
    finally:
        net.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", nargs="?")
    ap.add_argument("output", nargs="?")
    ap.add_argument("--network", help="the fork's form: the net prototxt")
    ap.add_argument("--caffemodel", help="the fork's form: its weights, converted beside themselves")
    a = ap.parse_args(argv)
    fork = a.network is not None or a.caffemodel is not None
    if fork and (a.network is None or a.caffemodel is None or a.input is not None):
        ap.error("the fork's form takes --network and --caffemodel and no positional arguments")
    if not fork and (a.input is None or a.output is None):
        ap.error("expected IN OUT, or --network NET --caffemodel W")
    try:
        if fork:
            out = convert_for_net(a.network, a.caffemodel)
            print(f"caffemodel_convertor: {a.caffemodel} -> {out}")
            return 0
        layers = load_weights(a.input)
        save_weights(a.output, layers)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"caffemodel_convertor: {e}", file=sys.stderr)
        return 1
    print(f"caffemodel_convertor: {len(layers)} layers, {a.input} -> {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
