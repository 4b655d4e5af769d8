#!/usr/bin/env python3
"""The "Coordinating Filters" fork's ``python/set_layer_param.py``, kept at its path: runs ``neocaffe.tools.set_layer_param.main``
with the same arguments: ``--net_template NET --layer_type TYPE --param_value V``."""
from _neocaffe_tool import run

if __name__ == "__main__":
    run("neocaffe.tools.set_layer_param", "main")
