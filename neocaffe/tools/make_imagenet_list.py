"""make_imagenet_list: an ILSVRC-style folder tree into a convert_imageset list and a label file.

    make_imagenet_list [FLAGS] ROOTFOLDER/ LISTFILE

ROOTFOLDER holds one folder per class (``n01440764/``, ...). LISTFILE gets ``n01440764/xyz.JPEG 0`` lines
(paths relative to ROOTFOLDER, ``/``-separated, classes in sorted folder order, files sorted within a
class) and ``--label_file`` (default ``synset_words.txt`` beside LISTFILE) one ``<synset> <words>``
line per label, in label order, like Caffe's ``data/ilsvrc12/synset_words.txt``. ``--synset_words``
takes the order and words from an existing such file (labels then follow that file; folders it does
not name are an error). ``--shuffle`` shuffles the lines (``--seed``).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

import numpy as np

from neocaffe.cli.log import glog_to_stderr
from neocaffe.flags import Flag, parse_command

log = logging.getLogger("neocaffe.tools.make_imagenet_list")

FLAGS = {
    "label_file": Flag(str, "", "Where to write '<synset> <words>' per label (default: synset_words.txt beside LISTFILE)"),
    "synset_words": Flag(str, "", "Existing '<synset> <words>' file giving label order and names"),
    "extensions": Flag(str, ".jpeg,.jpg,.png,.bmp", "Image file extensions (case-insensitive), comma-separated"),
    "shuffle": Flag(bool, False, "Randomly shuffle the lines of LISTFILE"),
    "seed": Flag(int, 0, "Seed for --shuffle"),
}
USAGE = ("Make a convert_imageset list from one folder per class\nUsage:\n"
         "    make_imagenet_list [FLAGS] ROOTFOLDER/ LISTFILE\n")


class ListError(ValueError):
    """The folder tree or the synset file cannot give a list."""


def read_synset_words(path: str) -> list[tuple[str, str]]:
    """``(synset, words)`` per non-empty line of a synset_words-style file."""
    out = []
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            wnid, _, words = line.partition(" ")
            out.append((wnid, words.strip()))
    if not out:
        raise ListError(f"{path}: names no synsets")
    return out


def make_list(root: str, extensions: Sequence[str] = (".jpeg", ".jpg", ".png", ".bmp"),
              synsets: list[tuple[str, str]] | None = None) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """(``(relative path, label)`` per image, ``(synset, words)`` per label) for ``root``."""
    if not os.path.isdir(root):
        raise ListError(f"ROOTFOLDER '{root}' is not a folder")
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not folders:
        raise ListError(f"ROOTFOLDER '{root}' holds no class folders")
    if synsets is None:
        synsets = [(d, d) for d in folders]
    label_of = {wnid: i for i, (wnid, _) in enumerate(synsets)}
    unknown = [d for d in folders if d not in label_of]
    if unknown:
        raise ListError(f"class folders not in the synset file: {', '.join(unknown[:10])}"
                        + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    items: list[tuple[str, int]] = []
    for d in folders:
        found = []
        for base, dirs, files in os.walk(os.path.join(root, d)):
            dirs.sort()
            for name in files:
                if name.lower().endswith(exts):
                    found.append(os.path.relpath(os.path.join(base, name), root).replace(os.sep, "/"))
        items.extend((p, label_of[d]) for p in sorted(found))
    if not items:
        raise ListError(f"no images with extensions {', '.join(exts)} under '{root}'")
    return items, synsets


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (returns the exit status); logs glog lines to stderr as Caffe's tool."""
    with glog_to_stderr():
        return run(list(sys.argv[1:] if argv is None else argv))


def run(argv: list[str]) -> int:
    """The tool on ``argv`` (without the program name), logging wherever ``neocaffe`` logs go."""
    parsed = parse_command("make_imagenet_list", USAGE, FLAGS, argv, 2, 2)
    if parsed is None:
        return 1
    f, pos, _ = parsed
    root, list_file = pos
    label_file = f["label_file"] or os.path.join(os.path.dirname(os.path.abspath(list_file)), "synset_words.txt")
    try:
        synsets = read_synset_words(f["synset_words"]) if f["synset_words"] else None
        items, synsets = make_list(root, [e for e in f["extensions"].split(",") if e], synsets)
    except (ListError, OSError) as e:
        log.error("%s", e)
        return 1
    if f["shuffle"]:
        order = np.random.default_rng(f["seed"]).permutation(len(items))
        items = [items[int(i)] for i in order]
    with open(list_file, "w", encoding="utf-8") as out:
        out.writelines(f"{p} {label}\n" for p, label in items)
    with open(label_file, "w", encoding="utf-8") as out:
        out.writelines(f"{wnid} {words}\n" for wnid, words in synsets)
    log.info("Wrote %d images of %d classes to %s; labels to %s", len(items), len(synsets), list_file, label_file)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
