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

# a built tool's name -> (its folder under build/, the module whose main(argv) runs it); tools/ holds
# Caffe's tools/*.cpp (and SSD's), examples/<folder>/ the examples' programs
TOOLS: dict[str, tuple[str, str]] = {
    "caffe": ("tools", "neocaffe.cli.caffe"),
    "compute_image_mean": ("tools", "neocaffe.tools.compute_image_mean"),
    "convert_imageset": ("tools", "neocaffe.tools.convert_imageset"),
    "extract_features": ("tools", "neocaffe.tools.extract_features"),
    "upgrade_net_proto_binary": ("tools", "neocaffe.tools.upgrade_net_proto_binary"),
    "upgrade_net_proto_text": ("tools", "neocaffe.tools.upgrade_net_proto_text"),
    "upgrade_solver_proto_text": ("tools", "neocaffe.tools.upgrade_solver_proto_text"),
    "convert_annoset": ("tools", "neocaffe.tools.convert_annoset"),                      # SSD
    "get_image_size": ("tools", "neocaffe.tools.get_image_size"),                        # SSD
    "ristretto": ("tools", "neocaffe.tools.ristretto"),                                  # Ristretto
    "convert_mnist_data": ("examples/mnist", "neocaffe.tools.convert_mnist_data"),
    "convert_cifar_data": ("examples/cifar10", "neocaffe.tools.convert_cifar_data"),
    "convert_mnist_siamese_data": ("examples/siamese", "neocaffe.tools.convert_mnist_siamese_data"),
    "classification": ("examples/cpp_classification", "neocaffe.tools.classification"),
    "ssd_detect": ("examples/ssd", "neocaffe.tools.ssd_detect"),                         # SSD
}

# the links under build/, by folder (each name with and without .bin)
LINKS: dict[str, tuple[str, ...]] = {
    folder: tuple(name for name, (f, _) in TOOLS.items() if f == folder)
    for folder in dict.fromkeys(f for f, _ in TOOLS.values())
}


def tool_module(path: str) -> str:
    """The module of the tool ``path`` names (its last component, ``.bin`` dropped); ValueError when
    it names none."""
    name = os.path.basename(path)
    name = name[:-4] if name.endswith(".bin") else name
    if name not in TOOLS:
        raise ValueError(f"{path}: not a Caffe tool neocaffe provides; expected one of {', '.join(sorted(TOOLS))}")
    return TOOLS[name][1]


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
