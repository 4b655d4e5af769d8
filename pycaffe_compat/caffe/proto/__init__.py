"""``caffe.proto.caffe_pb2``: neocaffe's schema (every BVLC, fork-master and scnn field)."""
import sys

from neocaffe.proto import caffe_pb2

sys.modules[__name__ + ".caffe_pb2"] = caffe_pb2

__all__ = ["caffe_pb2"]
