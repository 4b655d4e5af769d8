#!/usr/bin/env python3
"""The "Coordinating Filters" fork's ``python/mixed_decomposer_tuner.py``, kept at its path: runs
``neocaffe.tools.mixed_decomposer_tuner.main`` with the same arguments: ``--solver S --model NET --weights W --rank_config1 J1 --rank_config2 J2 --path DIR [--device -1|ID]``."""
from _neocaffe_tool import run

if __name__ == "__main__":
    run("neocaffe.tools.mixed_decomposer_tuner")
