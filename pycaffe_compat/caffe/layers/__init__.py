"""``caffe.layers``: BVLC pycaffe's NetSpec layer helper (``from caffe import layers as L``) that is also
a package, so that NVCaffe's Python layers import as ``caffe.layers.detectnet.clustering``.

``import caffe`` binds ``caffe.layers`` to :data:`caffe.net_spec.layers` (a ``Layers`` object). Importing a
submodule (``caffe.layers.detectnet...``, what a DetectNet prototxt's ``python_param.module`` does) makes
Python bind ``caffe.layers`` to this module instead; every attribute this module does not define
(``L.Convolution``, ``L.Python``, ...) is looked up on that same ``Layers`` object, so ``L.<Type>(...)``
works whichever object a script holds. The one name taken is ``detectnet`` (no Caffe layer type).
"""
from __future__ import annotations

from typing import Any

from caffe.net_spec import layers as _netspec_layers


def __getattr__(name: str) -> Any:
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    return getattr(_netspec_layers, name)
