#!/usr/bin/env python3
"""The "Coordinating Filters" fork's ``python/nn_decomposer.py``, kept at its path: runs ``neocaffe.tools.lowrank.main``
with the same arguments: ``--prototxt NET --caffemodel W [--rankratio R | --ranks K,.. | --rank_config J] [--lra_type pca|svd|kmeans] [--except_layers J]``."""
from _neocaffe_tool import run

if __name__ == "__main__":
    run("neocaffe.tools.lowrank", "main")
