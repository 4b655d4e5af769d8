"""get_image_size (SSD's tools/get_image_size.cpp): sizes of listed images, by stem or by id."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from neocaffe.tools import get_image_size


@pytest.fixture
def voc_like(tmp_path):
    """A VOC-like root: JPEGImages with 3 images of different sizes and a test.txt of image/annotation pairs."""
    (tmp_path / "VOC" / "JPEGImages").mkdir(parents=True)
    sizes = {"000001": (7, 11), "000004": (13, 5), "000010": (9, 9)}
    for stem, (h, w) in sizes.items():
        assert cv2.imwrite(str(tmp_path / "VOC" / "JPEGImages" / f"{stem}.jpg"), np.full((h, w, 3), 100, np.uint8))
    (tmp_path / "test.txt").write_text("".join(f"VOC/JPEGImages/{s}.jpg VOC/Annotations/{s}.xml\n" for s in sizes))
    return tmp_path, sizes


def test_sizes_by_stem_in_list_order(voc_like, caplog):
    root, sizes = voc_like
    out = root / "test_name_size.txt"
    with caplog.at_level(logging.INFO, logger="neocaffe"):
        assert get_image_size.main([f"{root}/", str(root / "test.txt"), str(out)]) == 0
    assert out.read_text() == "".join(f"{s} {h} {w}\n" for s, (h, w) in sizes.items())
    assert "A total of 3 images." in caplog.text and "Processed 3 files." in caplog.text


def test_name_id_file(voc_like):
    root, sizes = voc_like
    (root / "ids.txt").write_text("000010 30\n000001 10\n000004 40\n")
    out = root / "sizes.txt"
    assert get_image_size.main(["--name_id_file", str(root / "ids.txt"), f"{root}/", str(root / "test.txt"), str(out)]) == 0
    assert out.read_text() == "10 7 11\n40 13 5\n30 9 9\n"


def test_errors_name_the_file_and_write_nothing(voc_like, caplog):
    root, _ = voc_like
    out = root / "sizes.txt"
    (root / "bad.txt").write_text("VOC/JPEGImages/000001.jpg a.xml\nVOC/JPEGImages/ghost.jpg b.xml\n")
    with caplog.at_level(logging.ERROR, logger="neocaffe"):
        assert get_image_size.main([f"{root}/", str(root / "bad.txt"), str(out)]) == 1
    assert f"bad.txt:2: Could not open or find file {root}/VOC/JPEGImages/ghost.jpg" in caplog.text
    assert not out.exists()
    caplog.clear()
    (root / "ids.txt").write_text("000001 1\n000004 4\n")
    with caplog.at_level(logging.ERROR, logger="neocaffe"):
        assert get_image_size.main(["-name_id_file", str(root / "ids.txt"), f"{root}/", str(root / "test.txt"), str(out)]) == 1
    assert "ids.txt maps 2 names but the list holds 3 images" in caplog.text and not out.exists()
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="neocaffe"):
        assert get_image_size.main([f"{root}/", str(root / "missing.txt"), str(out)]) == 1
    assert "Failed to open file:" in caplog.text and "missing.txt" in caplog.text
    assert get_image_size.main([str(root)]) == 1          # too few arguments: the usage
