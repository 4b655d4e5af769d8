"""What the scripts in this folder share: run one of neocaffe's tools with this script's arguments.

The scripts keep BVLC Caffe's and the "Coordinating Filters" fork's ``python/*.py`` paths, so shell scripts
that call ``python python/<tool>.py ...`` run unchanged from the repository root. This checkout's code runs,
whether or not it (or another copy of neocaffe) is pip-installed."""
import importlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(module: str, function: str = "main", **kwargs) -> None:
    """Exit with ``<module>.<function>(sys.argv[1:], **kwargs)``'s status."""
    sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "pycaffe_compat")]
    tool = importlib.import_module(module)
    sys.exit(getattr(tool, function)(sys.argv[1:], **kwargs))
