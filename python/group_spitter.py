#!/usr/bin/env python3
"""The "Coordinating Filters" fork's ``python/group_spitter.py``, kept at its path: runs ``neocaffe.tools.group_split.main_fork_split``
with the same arguments: ``--original_alexnet G --split_alexnet S --caffemodel W``."""
from _neocaffe_tool import run

if __name__ == "__main__":
    run("neocaffe.tools.group_split", "main_fork_split")
