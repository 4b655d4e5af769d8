#!/usr/bin/env python3
"""The "Coordinating Filters" fork's ``python/lowrank_netsolver.py``, kept at its path: runs
``neocaffe.tools.lowrank_netsolver.main`` with the same arguments: ``--solver S --weights W [--ratio R]
[--lra_type pca|svd] [--pruning_iter N] [--device -1|ID]``."""
from _neocaffe_tool import run

if __name__ == "__main__":
    run("neocaffe.tools.lowrank_netsolver")
