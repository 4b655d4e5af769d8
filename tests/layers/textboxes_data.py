"""What the TextBoxes++ data tests write: small images with filled quadrilaterals ("words") and, per image, an
annotation in the fork's XML form (MhLiao/TextBoxes_plusplus ``data/example.xml``: per ``object`` a
``difficult``, a ``content``, a ``name`` and a ``bndbox`` holding ``x1 y1 .. x4 y4`` and ``xmin ymin xmax
ymax``, in pixels), the list file and the fork's label map (``data/text/labelmap_voc.prototxt``)."""
from __future__ import annotations

import math

import cv2
import numpy as np

LABEL_MAP = ('item { name: "background" label: 0 display_name: "background" }\n'
             'item { name: "text" label: 1 display_name: "text" }\n')


def word(r: np.random.Generator, size: int, axis_aligned: bool = False) -> list[int]:
    """Integer corners (tl, tr, br, bl) of a rotated rectangle inside a ``size`` square."""
    w, h = r.uniform(0.35, 0.6) * size, r.uniform(0.15, 0.3) * size
    a = 0.0 if axis_aligned else r.uniform(-0.4, 0.4)
    cx, cy = r.uniform(0.35, 0.65) * size, r.uniform(0.3, 0.7) * size
    ux, uy, vx, vy = math.cos(a), math.sin(a), -math.sin(a), math.cos(a)
    pts = []
    for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        x = cx + sx * w / 2 * ux + sy * h / 2 * vx
        y = cy + sx * w / 2 * uy + sy * h / 2 * vy
        pts += [int(round(min(max(x, 0), size - 1))), int(round(min(max(y, 0), size - 1)))]
    return pts


def fork_xml(objects: list[tuple[int, list[int]]], size: int, polygons: bool = True, name: str = "img") -> str:
    """The fork's annotation XML (``polygons``: False leaves out x1..y4, as a VOC file)."""
    out = ["<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<annotation>"]
    for difficult, q in objects:
        xs, ys = q[0::2], q[1::2]
        corners = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4"), q))
        out.append(f"<object><difficult>{difficult}</difficult><content>{'###' if difficult else 'WORD'}</content>"
                   f"<name>text</name><bndbox>{corners if polygons else ''}<xmin>{min(xs)}</xmin>"
                   f"<ymin>{min(ys)}</ymin><xmax>{max(xs)}</xmax><ymax>{max(ys)}</ymax></bndbox></object>")
    out.append(f"<folder>train_images</folder><filename>{name}.png</filename><size><width>{size}</width>"
               f"<height>{size}</height><depth>3</depth></size></annotation>")
    return "\n".join(out)


def write_dataset(folder, n: int = 6, size: int = 32, seed: int = 0, polygons: bool = True,
                  empty_first: bool = False, axis_aligned: bool = False) -> list[list[tuple[int, list[int]]]]:
    """Images ``img/<i>.png`` (one or two words filled on noise) with the fork's XML ``img/<i>.xml``,
    ``list.txt`` and ``labelmap.prototxt`` under ``folder``; returns per image its objects (difficult, corners).
    ``empty_first``: image 0 has no object."""
    r = np.random.default_rng(seed)
    (folder / "img").mkdir(exist_ok=True)
    truth, lines = [], []
    for i in range(n):
        img = r.integers(0, 60, (size, size, 3), dtype=np.uint8)
        objs = [] if (empty_first and i == 0) else [(int(k == 1 and i % 3 == 0), word(r, size, axis_aligned))
                                                     for k in range(1 + i % 2)]
        for _, q in objs:
            cv2.fillPoly(img, [np.array(q, np.int32).reshape(4, 2)], (220, 220, 220))
        cv2.imwrite(str(folder / "img" / f"{i}.png"), img)
        (folder / "img" / f"{i}.xml").write_text(fork_xml(objs, size, polygons, str(i)))
        lines.append(f"img/{i}.png img/{i}.xml")
        truth.append(objs)
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    (folder / "labelmap.prototxt").write_text(LABEL_MAP)
    return truth


def convert(folder, db: str = "db") -> None:
    """convert_annoset as the fork's ``data/text/create_data.sh`` runs it (detection, its label map, encoded)."""
    from neocaffe.tools import convert_annoset

    rc = convert_annoset.run(["--anno_type=detection", f"--label_map_file={folder / 'labelmap.prototxt'}",
                              "--check_label", "--encoded", "--encode_type=png", f"{folder}/", str(folder / "list.txt"),
                              str(folder / db)])
    assert rc == 0
