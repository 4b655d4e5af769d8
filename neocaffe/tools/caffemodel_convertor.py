"""Convert weights between ``.caffemodel`` (binary) and ``.caffemodel.h5`` (Caffe's HDF5 layout).

Usage: caffemodel_convertor IN OUT   (the format of OUT follows its name: ``.h5`` -> HDF5)
"""
from __future__ import annotations

import argparse
import sys

from neocaffe.io.weights import load_weights, save_weights


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("output")
    a = ap.parse_args(argv)
    try:
        layers = load_weights(a.input)
        save_weights(a.output, layers)
    except (ValueError, OSError) as e:
        print(f"caffemodel_convertor: {e}", file=sys.stderr)
        return 1
    print(f"caffemodel_convertor: {len(layers)} layers, {a.input} -> {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
