#!/usr/bin/env python3
"""SSD's ``scripts/create_annoset.py``, kept at its path (``data/VOC0712/create_data.sh`` runs it): an
AnnotatedDatum database with convert_annoset, linked into an examples folder
(``neocaffe.tools.create_annoset``, this checkout's code)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from neocaffe.tools.create_annoset import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
