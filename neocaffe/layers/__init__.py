"""Caffe's layers. Importing this package imports every layer module, which registers its types."""
from __future__ import annotations

import importlib
import pkgutil

from neocaffe.layers.base import Layer
from neocaffe.layers.registry import get_layer_class, layer_types, register_layer

_NOT_LAYER_MODULES = {"base", "registry", "fillers", "functional"}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name not in _NOT_LAYER_MODULES and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Layer", "get_layer_class", "layer_types", "register_layer"]
