"""The Caffe schema: ``caffe_pb2``, generated from ``proto/caffe.proto``.

Regenerate with ``scripts/gen_proto.sh``; ``proto/NUMBERING.md`` lists the
fields whose numbers differ from their lineage of origin.
"""

from . import caffe_pb2

__all__ = ["caffe_pb2"]
