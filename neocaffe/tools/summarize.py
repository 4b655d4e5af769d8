"""summarize: a net prototxt as a table, one layer a row (BVLC Caffe's ``tools/extra/summarize.py``, same
arguments and output; Caffe's is Python 2 only, this one runs on Python 3 and is kept at that path).

    python tools/extra/summarize.py NET.prototxt [-w MAX_WIDTH]

Columns: name, type (``module.layer`` for Python layers), ParamSpecs (``name``, ``x<lr_mult>``,
``Dx<decay_mult>`` where not 1), bottoms, ``->``, tops (``<loss_weight> * top`` where loss weights are
given), and for Convolution/Deconvolution with one kernel size ``k[/stride][+pad] num_output[/group]`` and for
Pooling ``k[/stride][+pad]``. Each blob has an ANSI colour of its own (cycled), bottoms that no layer
produced are on red, and tops no later layer reads are bold and underlined. Columns are as narrow as their
cells, at most ``MAX_WIDTH`` (default 30); longer text overflows into the next column where it can. The net
is read as written (no upgrade), as Caffe's script reads it.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Sequence

__all__ = ["summarize_net", "format_table", "main"]

COLORS = ["92", "93", "94", "95", "97", "96", "42", "43;30", "100", "444", "103;30", "107;30"]
DISCONNECTED = "41"
_ANSI = re.compile(r"\033\[[\d;]+m")


def _num(value: float) -> str:
    """A float field as Caffe's (Python 2) script prints it: ``str(float)``, 12 significant digits, ``2.0``
    for whole numbers (a float32 0.1 is 0.100000001490116 in double: ``0.10000000149``)."""
    text = "%.12g" % float(value)
    return text if any(c in text for c in ".en") else text + ".0"


def _param(spec: Any) -> str:
    parts = [spec.name] if spec.name else []
    if spec.lr_mult != 1:
        parts.append(f"x{_num(spec.lr_mult)}")
    if spec.decay_mult != 1:
        parts.append(f"Dx{_num(spec.decay_mult)}")
    return " ".join(parts)


def _args(layer: Any) -> str:
    if layer.type in ("Convolution", "Deconvolution") and len(layer.convolution_param.kernel_size) == 1:
        p = layer.convolution_param
        text = str(p.kernel_size[0])
        if len(p.stride) and p.stride[0] != 1:
            text += f"/{p.stride[0]}"
        if len(p.pad) and p.pad[0] != 0:
            text += f"+{p.pad[0]}"
        text += f" {p.num_output}"
        return text + (f"/{p.group}" if p.group != 1 else "")
    if layer.type == "Pooling":
        p = layer.pooling_param
        return (str(p.kernel_size) + (f"/{p.stride}" if p.stride != 1 else "")
                + (f"+{p.pad}" if p.pad != 0 else ""))
    return ""


def summarize_net(net: Any) -> list[list[str]]:
    """The table's rows (cells may hold ANSI colour codes)."""
    unread: set[str] = set()
    for layer in net.layer:
        unread |= set(layer.top)
        unread -= set(layer.bottom)
    colors: dict[str, str] = {}
    rows = []
    for layer in net.layer:
        tops = []
        for i, top in enumerate(layer.top):
            color = colors.setdefault(top, COLORS[len(colors) % len(COLORS)])
            text = ("\033[1;4m" + top) if top in unread else top
            if len(layer.loss_weight):
                text = f"{_num(layer.loss_weight[i])} * {text}"
            tops.append(f"\033[{color}m{text}\033[0m")
        bottoms = [f"\033[{colors.get(b, DISCONNECTED)}m{b}\033[0m" for b in layer.bottom]
        kind = f"{layer.python_param.module}.{layer.python_param.layer}" if layer.type == "Python" else layer.type
        specs = [_param(s) for s in layer.param]
        params = f"({', '.join(specs)})" if specs and max(map(len, specs)) > 0 else ""
        rows.append([layer.name, kind, params, ", ".join(bottoms), "->", ", ".join(tops), _args(layer)])
    return rows


def _printed_len(text: str) -> int:
    return len(_ANSI.sub("", text))


def format_table(rows: Sequence[Sequence[str]], max_width: int) -> str:
    """The rows as lines: each column as wide as its widest cell plus one, at most ``max_width``; a longer
    cell pushes only as far as it must (later cells start at their column when there is room)."""
    if not rows:
        return ""
    widths = [min(max(_printed_len(row[j]) + 1 for row in rows), max_width) for j in range(len(rows[0]))]
    lines = []
    for row in rows:
        line, right = "", 0
        for cell, width in zip(row, widths):
            right += width
            line += cell + " "
            line += " " * max(right - _printed_len(line), 0)
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Print a concise summary of net computation.")
    ap.add_argument("filename", help="net prototxt file to summarize")
    ap.add_argument("-w", "--max-width", help="maximum field width", type=int, default=30)
    a = ap.parse_args(argv)
    from neocaffe.io.errors import CaffeFileError, PrototxtError
    from neocaffe.io.prototxt import read_net

    try:
        net = read_net(a.filename, upgrade=False)
    except (PrototxtError, CaffeFileError, OSError) as e:
        print(f"summarize: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(format_table(summarize_net(net), a.max_width))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
