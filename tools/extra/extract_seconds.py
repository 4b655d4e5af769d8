#!/usr/bin/env python3
"""Caffe's tools/extra/extract_seconds.py: INPUT_LOG OUTPUT_FILE -> seconds since 'Solving' of each 'Iteration' line

Kept at Caffe's path so scripts written for Caffe run unchanged from a neocaffe checkout; runs neocaffe.tools.extract_seconds."""
import os
import sys

try:
    import neocaffe.tools.extract_seconds as tool
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    import neocaffe.tools.extract_seconds as tool

if __name__ == "__main__":
    sys.exit(tool.main(sys.argv[1:]))
