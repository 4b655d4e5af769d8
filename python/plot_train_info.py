#!/usr/bin/env python3
"""The "Coordinating Filters" fork's ``python/plot_train_info.py``, kept at its path: runs ``neocaffe.tools.plot_train_info.main``
with the same arguments: ``--traininfo TRAIN.INFO``."""
from _neocaffe_tool import run

if __name__ == "__main__":
    run("neocaffe.tools.plot_train_info", "main")
