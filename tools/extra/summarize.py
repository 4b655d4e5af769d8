#!/usr/bin/env python3
"""Caffe's tools/extra/summarize.py: NET.prototxt [-w MAX_WIDTH] -> a table of the net's layers on stdout.

Kept at Caffe's path so scripts written for Caffe run unchanged from a neocaffe checkout (Caffe's own is
Python 2 only); runs neocaffe.tools.summarize with this checkout's code."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import neocaffe.tools.summarize as tool  # noqa: E402

if __name__ == "__main__":
    sys.exit(tool.main(sys.argv[1:]))
