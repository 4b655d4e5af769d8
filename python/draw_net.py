#!/usr/bin/env python3
"""BVLC Caffe's ``python/draw_net.py``, kept at its path: draws a net prototxt with ``caffe.draw``.
Same arguments: INPUT_NET_PROTO_FILE OUTPUT_IMAGE_FILE [--rankdir LR] [--phase ALL|TRAIN|TEST] [--display_lrm]."""
from _neocaffe_tool import run

if __name__ == "__main__":
    run("caffe.draw")
