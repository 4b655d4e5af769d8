#!/usr/bin/env python3
"""BVLC Caffe's ``python/classify.py``, kept at its path: runs neocaffe's ``classify`` (``caffe.classify``)
with the same arguments; default paths are taken from this folder, as Caffe's script does."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import caffe.classify
except ImportError:  # a checkout without `pip install -e .`
    sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "pycaffe_compat")]
    import caffe.classify

if __name__ == "__main__":
    sys.exit(caffe.classify.main(sys.argv[1:], pycaffe_dir=HERE))
