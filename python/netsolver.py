#!/usr/bin/env python3
"""The "Coordinating Filters" fork's ``python/netsolver.py``, kept at its path: runs
``neocaffe.tools.netsolver.main`` with the same arguments: ``--solver S [--weights W] [--device -1|ID]``."""
from _neocaffe_tool import run

if __name__ == "__main__":
    run("neocaffe.tools.netsolver")
