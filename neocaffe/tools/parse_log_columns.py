"""The columns of Caffe's ``tools/extra/parse_log.sh`` (the shell script kept at that path runs this and pipes
its rows through ``column -t``, as Caffe's pastes its temporary files into ``column -t``).

    python -m neocaffe.tools.parse_log_columns test|train LOG

prints tab-separated rows (short columns leave empty fields, as ``paste`` does):

- ``test``: iteration, seconds, ``Test net output #0``, ``#1`` of each test pass. As Caffe's script: the
  lines from the first ``Iteration .* Testing net`` on (a sed range ending at a line matching
  ``Iteration *. loss``) without ``Waiting for data``, ``prefetch queue empty``, ``Iteration .* loss``,
  ``Iteration .* lr`` and ``Train net`` lines; the iteration is the number after the last ``Iteration ``
  of each remaining line that has one; the outputs are the 11th whitespace field of the ``Test net output
  #0`` / ``#1`` lines; the seconds are ``extract_seconds`` of the ``] Solving `` line and every ``Testing
  net`` line.
- ``train``: iteration, seconds, loss (the text between the first and second ``=`` of each ``, loss = ``
  line), learning rate (the 9th field of each ``, lr = `` line); iterations and seconds of the ``, loss = ``
  lines.

The year of the glog times is the current one (Caffe's script gives ``extract_seconds`` files it has just
written, whose creation year it takes).
"""
from __future__ import annotations

import datetime
import re
import sys
from itertools import zip_longest
from typing import Sequence

from neocaffe.tools.extract_seconds import elapsed_seconds

__all__ = ["test_rows", "train_rows", "main"]

_START = re.compile(r"Iteration .* Testing net")
_END = re.compile(r"Iteration *. loss")
_DROP = (re.compile(r"Waiting for data"), re.compile(r"prefetch queue empty"), re.compile(r"Iteration .* loss"),
         re.compile(r"Iteration .* lr"), re.compile(r"Train net"))
_ITER = re.compile(r".*Iteration (\d*)")


def _sed_range(lines: Sequence[str]) -> list[str]:
    """sed -n '/start/,/end/p': from a start line through the next end line (not tested on the start
    line itself), then again from the next start."""
    out, inside = [], False
    for line in lines:
        if inside:
            out.append(line)
            inside = not _END.search(line)
        elif _START.search(line):
            out.append(line)
            inside = True
    return out


def _iterations(lines: Sequence[str]) -> list[str]:
    return [_ITER.match(line).group(1) for line in lines if "Iteration " in line]  # type: ignore[union-attr]


def _field(line: str, n: int) -> str:
    parts = line.split()
    return parts[n - 1] if len(parts) >= n else ""


def _seconds(lines: Sequence[str], where: str) -> list[str]:
    return [f"{s:f}" for s in elapsed_seconds(lines, datetime.date.today().year, where)]


def _paste(*columns: Sequence[str]) -> list[list[str]]:
    return [list(row) for row in zip_longest(*columns, fillvalue="")]


def test_rows(lines: Sequence[str], where: str = "log") -> list[list[str]]:
    """The ``.test`` table's rows (see the module docstring)."""
    kept = [line for line in _sed_range(lines) if not any(d.search(line) for d in _DROP)]
    timed = [line for line in lines if "] Solving " in line] + [line for line in lines if "Testing net" in line]
    return _paste(_iterations(kept), _seconds(timed, where),
                  [_field(line, 11) for line in kept if "Test net output #0" in line],
                  [_field(line, 11) for line in kept if "Test net output #1" in line])


def train_rows(lines: Sequence[str], where: str = "log") -> list[list[str]]:
    """The ``.train`` table's rows (see the module docstring)."""
    timed = [line for line in lines if "] Solving " in line] + [line for line in lines if ", loss = " in line]
    return _paste(_iterations(timed), _seconds(timed, where),
                  [line.rstrip("\n").split("=")[1] for line in lines if ", loss = " in line],
                  [_field(line, 9) for line in lines if ", lr = " in line])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] not in ("test", "train"):
        print("usage: python -m neocaffe.tools.parse_log_columns test|train LOG", file=sys.stderr)
        return 2
    try:
        with open(args[1], errors="replace") as f:
            lines = f.read().splitlines()
        rows = (test_rows if args[0] == "test" else train_rows)(lines, args[1])
    except (OSError, ValueError) as e:
        print(f"parse_log.sh: {e}", file=sys.stderr)
        return 1
    sys.stdout.write("".join("\t".join(row) + "\n" for row in rows))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
