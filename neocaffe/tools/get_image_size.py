"""get_image_size: the height and width of every image of a list (SSD's tool, weiliu89/caffe ``ssd``
branch ``tools/get_image_size.cpp``, same flag and arguments; SSD's ``create_list.sh`` calls it to make
``test_name_size.txt``).

    get_image_size [FLAGS] ROOTFOLDER/ LISTFILE OUTFILE

LISTFILE holds whitespace-separated pairs ``image second`` (a label or an annotation file; the second
is not read). For each image, read under ROOTFOLDER as Caffe reads it (``cv2.imread`` in colour), one
line ``<image stem> <height> <width>`` goes to OUTFILE, in list order; with ``--name_id_file`` (pairs
``name id``, one per listed image) the stem is replaced by its id. ``Processed N files.`` every 1000.
Unlike the fork, which logs an unreadable image and writes the previous image's size for it, an
unreadable image, a stem missing from the id file or a repeated name is an error naming the file (and
line), and OUTFILE is then not written.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

from neocaffe.cli.log import glog_to_stderr
from neocaffe.data.datum import read_image
from neocaffe.data.sources import DataSourceError
from neocaffe.flags import Flag, run_tool
from neocaffe.io.files import atomic_output
from neocaffe.progress import Progress

__all__ = ["image_sizes", "main", "run"]

log = logging.getLogger("neocaffe.tools.get_image_size")

FLAGS = {"name_id_file": Flag(str, "", "A file which maps image_name to image_id.")}
USAGE = "Get sizes of a set of images.\nUsage:\n    get_image_size ROOTFOLDER/ LISTFILE OUTFILE\n"
REPORT_EVERY = 1000


def _pairs(path: str, what: str) -> list[tuple[str, str, int]]:
    """Whitespace-separated pairs of ``path`` as (first, second, line of the first); an odd token is
    dropped as C++'s ``>>`` pairs drop it."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DataSourceError(f"Failed to open {what}: {path} ({e.strerror or e})") from None
    tokens = [(tok, n) for n, line in enumerate(lines, 1) for tok in line.split()]
    return [(tokens[i][0], tokens[i + 1][0], tokens[i][1]) for i in range(0, len(tokens) - 1, 2)]


def _name_ids(path: str, count: int) -> dict[str, int]:
    ids: dict[str, int] = {}
    for name, value, line in _pairs(path, "name_id_file"):
        if name in ids:
            raise DataSourceError(f"{path}:{line}: name '{name}' is listed twice")
        try:
            ids[name] = int(value)
        except ValueError:
            raise DataSourceError(f"{path}:{line}: the id of '{name}' must be an integer; received '{value}'") from None
    if len(ids) != count:
        raise DataSourceError(f"{path} maps {len(ids)} names but the list holds {count} images; they must be equal")
    return ids


def image_sizes(root: str, list_file: str, name_id_file: str = "") -> list[tuple[str, int, int]]:
    """(stem or id, height, width) of each listed image, in list order."""
    lines = _pairs(list_file, "file")
    log.info("A total of %d images.", len(lines))
    ids = _name_ids(name_id_file, len(lines)) if name_id_file else None
    out: list[tuple[str, int, int]] = []
    with Progress(len(lines), "get_image_size", "images", log) as bar:
        for image, _, line in lines:
            bar.update()
            path = os.path.join(root, image)
            img = read_image(path)
            if img is None:
                raise DataSourceError(f"{list_file}:{line}: Could not open or find file {path}")
            stem = os.path.splitext(os.path.basename(path))[0]
            if ids is not None:
                if stem not in ids:
                    raise DataSourceError(f"{list_file}:{line}: image name '{stem}' is not in {name_id_file}")
                stem = str(ids[stem])
            out.append((stem, int(img.shape[0]), int(img.shape[1])))
            if len(out) % REPORT_EVERY == 0:
                log.info("Processed %d files.", len(out))
    if len(out) % REPORT_EVERY:
        log.info("Processed %d files.", len(out))
    return out


def write_sizes(root: str, list_file: str, out_file: str, *, name_id_file: str = "") -> int:
    """Write OUTFILE (see the module docstring); return the number of images."""
    sizes = image_sizes(root, list_file, name_id_file)
    text = "".join(f"{name} {h} {w}\n" for name, h, w in sizes)
    with atomic_output(out_file) as f:
        f.write(text.encode("utf-8", "surrogateescape"))
    return len(sizes)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (returns the exit status); logs glog lines to stderr as the fork's tool."""
    with glog_to_stderr():
        return run(list(sys.argv[1:] if argv is None else argv))


def run(argv: list[str]) -> int:
    """The tool on ``argv`` (without the program name)."""
    return run_tool("get_image_size", USAGE, FLAGS, argv, 3, write_sizes, (DataSourceError, OSError), log)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
