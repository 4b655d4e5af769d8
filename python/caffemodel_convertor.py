#!/usr/bin/env python3
"""The "Coordinating Filters" fork's ``python/caffemodel_convertor.py``, kept at its path: runs ``neocaffe.tools.caffemodel_convertor.main``
with the same arguments: ``--network NET --caffemodel W``."""
from _neocaffe_tool import run

if __name__ == "__main__":
    run("neocaffe.tools.caffemodel_convertor", "main")
