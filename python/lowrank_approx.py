#!/usr/bin/env python3
"""The "Coordinating Filters" fork's ``python/lowrank_approx.py``, kept at its path: runs
``neocaffe.tools.lowrank_approx.main`` with the same arguments: ``--model NET --config J [--weights W] [--save_model P] [--save_weights H]``."""
from _neocaffe_tool import run

if __name__ == "__main__":
    run("neocaffe.tools.lowrank_approx")
