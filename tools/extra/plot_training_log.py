#!/usr/bin/env python3
"""Caffe's tools/extra/plot_training_log.py(.example): CHART_TYPE[0-7] OUT.png LOG.log ...

Kept at Caffe's path so scripts written for Caffe run unchanged from a neocaffe checkout; runs neocaffe.tools.caffe_log_charts."""
import os
import sys

try:
    import neocaffe.tools.caffe_log_charts as tool
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    import neocaffe.tools.caffe_log_charts as tool

if __name__ == "__main__":
    sys.exit(tool.main(sys.argv[1:]))
