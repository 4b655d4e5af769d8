"""download_model_binary: fetch a model folder's weights named in its ``readme.md`` (BVLC Caffe's
``scripts/download_model_binary.py``, same argument; the script is kept at that path).

    python scripts/download_model_binary.py models/bvlc_alexnet

As Caffe's script: ``<dirname>/readme.md`` starts its front matter with a ``---`` line and ends it with the
next; the ``key: value`` lines between must give ``caffemodel`` (the file name), ``caffemodel_url`` and
``sha1``. When ``<dirname>/<caffemodel>`` exists with that SHA-1 it prints ``Model already exists.``;
otherwise the URL is downloaded (progress on a terminal) and its SHA-1 checked: a mismatch prints
``ERROR: model did not download correctly! Run this again.`` and exits with 1. Ours: the download goes to a
temporary name beside the target and replaces it only once its SHA-1 matches, so a failed or interrupted
download never leaves (or overwrites with) a bad file; the front matter needs no YAML package (flat
``key: value`` lines, quotes optional); errors name the readme and the missing keys.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Callable, Sequence, TextIO

__all__ = ["front_matter", "sha1_of", "download", "main"]

REQUIRED = ("caffemodel", "caffemodel_url", "sha1")


class ModelDirError(ValueError):
    """The folder's readme.md does not say what to download; the message names it."""


def front_matter(dirname: str) -> dict[str, str]:
    """The ``key: value`` pairs between the first two ``---`` lines of ``dirname/readme.md``."""
    readme = os.path.join(dirname, "readme.md")
    try:
        with open(readme, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except OSError as e:
        raise ModelDirError(f"{readme}: {e.strerror or e}; expected a Caffe model folder with a readme.md") from None
    marks = [i for i, line in enumerate(lines) if line == "---"]
    if len(marks) < 2:
        raise ModelDirError(f"{readme}: no front matter (two '---' lines around 'key: value' lines)")
    values: dict[str, str] = {}
    for line in lines[marks[0] + 1:marks[1]]:
        key, sep, value = line.partition(":")
        if sep and key.strip():
            values[key.strip()] = value.strip().strip("'\"")
    missing = [k for k in REQUIRED if not values.get(k)]
    if missing:
        raise ModelDirError(f"{readme}: the front matter lacks {', '.join(missing)}; expected {', '.join(REQUIRED)}")
    return values


def sha1_of(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reporter(stream: TextIO) -> Callable[[int, int, int], None]:
    start = time.monotonic()

    def report(count: int, block: int, total: int) -> None:
        done = count * block
        elapsed = max(time.monotonic() - start, 0.01)
        percent = f"{min(100, 100 * done // total)}%" if total > 0 else "?%"
        stream.write(f"\r...{percent}, {done >> 20} MB, {int(done / 1024 / elapsed)} KB/s, "
                     f"{int(elapsed)} seconds passed")
        stream.flush()

    return report


def download(dirname: str, out: TextIO | None = None) -> int:
    """The script (see the module docstring); returns the exit status. Messages go to ``out`` (stdout)."""
    out = sys.stdout if out is None else out
    meta = front_matter(dirname)
    target = os.path.join(dirname, meta["caffemodel"])
    sha1 = meta["sha1"].lower()
    if os.path.exists(target) and sha1_of(target) == sha1:
        print("Model already exists.", file=out)
        return 0
    temp = f"{target}.download-{os.getpid()}"
    hook = _reporter(sys.stderr) if sys.stderr.isatty() else None
    try:
        urllib.request.urlretrieve(meta["caffemodel_url"], temp, hook)
        if hook is not None:
            sys.stderr.write("\n")
        if sha1_of(temp) != sha1:
            print("ERROR: model did not download correctly! Run this again.", file=out)
            return 1
        os.replace(temp, target)
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"ERROR: downloading {meta['caffemodel_url']} to {target} failed: {e}", file=out)
        return 1
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: download_model_binary.py [-h] dirname\nDownload trained model binary.", file=sys.stderr)
        return 0 if args in (["-h"], ["--help"]) else 2
    try:
        return download(args[0])
    except ModelDirError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
