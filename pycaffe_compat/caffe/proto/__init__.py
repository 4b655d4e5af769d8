"""``caffe.proto.caffe_pb2``: neocaffe's schema (every BVLC, fork-master and scnn field).

One difference from ``neocaffe.proto.caffe_pb2``: ``SolverParameter`` here also takes BVLC's scalar
``device_id`` as a keyword (``caffe_pb2.SolverParameter(device_id=0, ...)``, as the scripts of SSD and
caffe-jacinto-models write it). The schema's ``device_id`` is ``repeated`` (tsn's, see proto/NUMBERING.md), and a
protobuf constructor refuses a scalar for a repeated field; this one wraps it in a list. Everything else (enum
values, ``DESCRIPTOR``, ``isinstance``) is the schema's class.
"""
import sys
import types
from typing import Any

from neocaffe.proto import caffe_pb2 as _schema


class _SolverParameterMeta(type):
    def __getattr__(cls, name: str) -> Any:
        return getattr(_schema.SolverParameter, name)

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, _schema.SolverParameter)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if isinstance(kwargs.get("device_id"), int):
            kwargs["device_id"] = [kwargs["device_id"]]
        return _schema.SolverParameter(*args, **kwargs)


class SolverParameter(metaclass=_SolverParameterMeta):
    """Calls ``neocaffe.proto.caffe_pb2.SolverParameter``, taking a scalar ``device_id`` (BVLC's field)."""


class _Pb2Module(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        return getattr(_schema, name)


caffe_pb2 = _Pb2Module(__name__ + ".caffe_pb2", _schema.__doc__)
caffe_pb2.SolverParameter = SolverParameter  # type: ignore[attr-defined]
sys.modules[__name__ + ".caffe_pb2"] = caffe_pb2

__all__ = ["caffe_pb2"]
