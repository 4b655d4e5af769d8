#!/usr/bin/env python3
"""BVLC Caffe's ``python/classify.py``, kept at its path: runs neocaffe's ``classify`` (``caffe.classify``)
with the same arguments; default paths are taken from this folder, as Caffe's script does."""
from _neocaffe_tool import HERE, run

if __name__ == "__main__":
    run("caffe.classify", pycaffe_dir=HERE)
