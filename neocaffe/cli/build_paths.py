"""Caffe's built-tool paths: ``./build/tools/caffe``, ``./build/tools/caffe.bin``,
``./build/examples/mnist/convert_mnist_data.bin``, ... run neocaffe's tool of the same name.

Scripts written for Caffe (BVLC's ``examples/*/create_*.sh`` and ``train_*.sh``, the forks'
hyperparameter sweeps) call the tools by these paths from Caffe's root. In this repository each such
path is a link to ``build/caffe_tool.sh``, which runs ``python -m neocaffe.cli.build_paths <path> ARGS``;
this module picks the tool from the path's last component (``.bin`` dropped, as Caffe's Makefile and
CMake builds name each tool both ways) and runs its ``main`` with ``ARGS``. The path is kept as
``sys.argv[0]``, so glog's log files in ``GLOG_log_dir`` are named after it (``caffe.bin.INFO``).
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Sequence

__all__ = ["TOOLS", "LINKS", "tool_module", "main"]

# a built tool's name -> the module whose main(argv) runs it
TOOLS: dict[str, str] = {
    "caffe": "neocaffe.cli.caffe",
    "compute_image_mean": "neocaffe.tools.compute_image_mean",
    "convert_imageset": "neocaffe.tools.convert_imageset",
    "extract_features": "neocaffe.tools.extract_features",
    "upgrade_net_proto_binary": "neocaffe.tools.upgrade_net_proto_binary",
    "upgrade_net_proto_text": "neocaffe.tools.upgrade_net_proto_text",
    "upgrade_solver_proto_text": "neocaffe.tools.upgrade_solver_proto_text",
    "convert_annoset": "neocaffe.tools.convert_annoset",          # SSD
    "get_image_size": "neocaffe.tools.get_image_size",            # SSD
    "convert_mnist_data": "neocaffe.tools.convert_mnist_data",
    "convert_cifar_data": "neocaffe.tools.convert_cifar_data",
    "convert_mnist_siamese_data": "neocaffe.tools.convert_mnist_siamese_data",
    "classification": "neocaffe.tools.classification",
    "ssd_detect": "neocaffe.tools.ssd_detect",                    # SSD
}

# the links under build/ (without and with .bin): tools/ holds Caffe's tools/*.cpp (and SSD's),
# examples/<folder>/ the examples' programs
LINKS: dict[str, tuple[str, ...]] = {
    "tools": ("caffe", "compute_image_mean", "convert_imageset", "extract_features", "upgrade_net_proto_binary",
              "upgrade_net_proto_text", "upgrade_solver_proto_text", "convert_annoset", "get_image_size"),
    "examples/mnist": ("convert_mnist_data",),
    "examples/cifar10": ("convert_cifar_data",),
    "examples/siamese": ("convert_mnist_siamese_data",),
    "examples/cpp_classification": ("classification",),
    "examples/ssd": ("ssd_detect",),
}


def tool_module(path: str) -> str:
    """The module of the tool ``path`` names (its last component, ``.bin`` dropped); ValueError when
    it names none."""
    name = os.path.basename(path)
    name = name[:-4] if name.endswith(".bin") else name
    if name not in TOOLS:
        raise ValueError(f"{path}: not a Caffe tool neocaffe provides; expected one of {', '.join(sorted(TOOLS))}")
    return TOOLS[name]


def main(argv: Sequence[str] | None = None) -> int:
    """``main([tool_path, *args])``: run the tool ``tool_path`` names on ``args``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.stderr.write("usage: python -m neocaffe.cli.build_paths TOOL_PATH [ARGS...]\n")
        return 2
    try:
        module = tool_module(argv[0])
    except ValueError as e:
        sys.stderr.write(f"{e}\n")
        return 2
    sys.argv = list(argv)
    status = importlib.import_module(module).main(argv[1:])
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
