#!/usr/bin/env python3
"""BVLC Caffe's ``python/draw_net.py``, kept at its path: draws a net prototxt with ``caffe.draw``.
Same arguments: INPUT_NET_PROTO_FILE OUTPUT_IMAGE_FILE [--rankdir LR] [--phase ALL|TRAIN|TEST] [--display_lrm]."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import caffe.draw
except ImportError:  # a checkout without `pip install -e .`
    sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "pycaffe_compat")]
    import caffe.draw

if __name__ == "__main__":
    sys.exit(caffe.draw.main(sys.argv[1:]))
