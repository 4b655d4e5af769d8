#!/usr/bin/env python3
"""BVLC Caffe's ``scripts/download_model_binary.py``, kept at its path: ``python scripts/download_model_binary.py
models/bvlc_alexnet`` downloads the weights its readme.md names (``neocaffe.tools.download_model_binary``)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from neocaffe.tools.download_model_binary import main  # noqa: E402  (this checkout's code)

if __name__ == "__main__":
    sys.exit(main())
