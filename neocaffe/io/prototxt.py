"""Text prototxt read/write, strictly as Caffe's ReadProtoFromTextFile (protobuf TextFormat::Parse).

A singular field set twice, an unknown field, a syntax error or a value of the wrong type is a
`PrototxtError` naming ``file:line:col``. Accepted like Caffe: ``#`` comments, enums by name or number,
scientific notation, single- or double-quoted strings, ``field: { ... }`` and ``< ... >``.
`read_net` upgrades old formats (ReadNetParamsFromTextFileOrDie) and remembers where each layer starts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from google.protobuf import text_encoding, text_format
from google.protobuf.message import Message

from .errors import PrototxtError
from .files import atomic_output, check_readable

__all__ = ["NetSource", "parse_text", "read_prototxt", "read_net", "read_net_with_source", "read_solver",
           "to_text", "write_prototxt", "layer_locations", "is_text_source"]

M = TypeVar("M", bound=Message)
Source = str | bytes | os.PathLike


@dataclass
class NetSource:
    """Where a net came from: ``filename`` (``<string>`` for text) and the 1-based line and column at
    which each (upgraded) layer starts (None where it has none, e.g. the Input layer made from
    ``input`` fields). `read_net_with_source` returns one beside the net; pass it on to whatever
    builds the net so its errors can name the line."""

    filename: str
    layer_lines: list[int | None] = field(default_factory=list)
    layer_cols: list[int | None] = field(default_factory=list)

    def where(self, layer_index: int | None) -> str:
        """``train_val.prototxt:42:1`` for layer ``layer_index`` (just the filename if unknown)."""
        ok = layer_index is not None and 0 <= layer_index < len(self.layer_lines)
        line = self.layer_lines[layer_index] if ok else None  # type: ignore[index]
        if line is None:
            return self.filename
        col = self.layer_cols[layer_index] if layer_index < len(self.layer_cols) else None  # type: ignore[operator,index]
        return f"{self.filename}:{line}:{col}" if col is not None else f"{self.filename}:{line}"


def is_text_source(source: Source) -> bool:
    """A str naming an existing file is a path (``run:1/net.prototxt`` too); otherwise a str with a
    newline, ``{`` or ``:`` is prototxt text; any other str or a PathLike is a path."""
    if isinstance(source, bytes):
        return True
    if isinstance(source, str):
        if ("\n" in source or "{" in source or ":" in source) and not _is_file(source):
            return True
    return False


def _is_file(name: str) -> bool:
    try:
        return os.path.isfile(name)
    except ValueError:  # an embedded NUL: text, not a name
        return False


def _load(source: Source) -> tuple[str, str]:
    """(text, filename) for a path or a text source."""
    if is_text_source(source):
        if isinstance(source, bytes):
            return _decode(source, "<string>"), "<string>"
        return str(source), "<string>"
    name = check_readable(source)
    with open(name, "rb") as f:
        raw = f.read()
    return _decode(raw, name), name


def _decode(raw: bytes, filename: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        hint = " (a binary file? expected a text prototxt)" if b"\0" in raw[:4096] else ""
        raise PrototxtError(filename, line, col, f"invalid UTF-8 byte 0x{raw[exc.start]:02x}{hint}") from None


_PREFIX = re.compile(r"^\d+:\d+ : ")
#: errors after which the parse goes on (the field is blanked out and the text parsed again), so one
#: error lists every unknown field and enum value of a file, not only the first
_UNKNOWN_FIELD = re.compile(r'has no field named "?[\w.]+"?')
_UNKNOWN_VALUE = re.compile(r"has no value (named|with number)")
_MAX_PROBLEMS = 100


def _parse_error(exc: text_format.ParseError, text: str) -> tuple[int | None, int | None, str]:
    line, col = exc.GetLine(), exc.GetColumn()
    msg = _PREFIX.sub("", str(exc))
    if line is not None:
        lines = text.splitlines()
        if 0 < line <= len(lines):
            quoted = f"'{lines[line - 1]}': "
            if msg.startswith(quoted):
                msg = msg[len(quoted):]
    return line, col, msg


def parse_text(text: str, message: M, filename: str = "<string>") -> M:
    """Parse ``text`` into ``message`` (cleared first) like C++ TextFormat::Parse; errors name
    ``filename:line:col``. Unknown fields and enum values do not stop the search: the error lists
    all of them (and the first other error after them)."""
    problems: list[tuple[int | None, int | None, str]] = []
    current = text
    while True:
        message.Clear()
        try:
            text_format.Parse(current, message)
            break
        except text_format.ParseError as exc:
            line, col, msg = _parse_error(exc, current)
            if (line, col, msg) in problems:
                break
            problems.append((line, col, msg))
            blanked = None
            if line is not None and col is not None and len(problems) < _MAX_PROBLEMS:
                if _UNKNOWN_FIELD.search(msg):
                    blanked = _blank_entry(current, line, col, at_value=False)
                elif _UNKNOWN_VALUE.search(msg):
                    blanked = _blank_entry(current, line, col, at_value=True)
            if blanked is None:
                break
            current = blanked
    if problems:
        line, col, msg = problems[0]
        raise PrototxtError(filename, line, col, msg, problems)
    return message


def _tokens(text: str) -> list[tuple[str, int]]:
    """(token, offset) of every token of ``text`` that is not white space or a comment."""
    return [(m.group(), m.start()) for m in _TOKEN.finditer(text) if not (m.group()[0].isspace() or m.group()[0] == "#")]


def _blank_entry(text: str, line: int, col: int, at_value: bool) -> str | None:
    """``text`` with the entry ``name: value`` / ``name { ... }`` at ``line:col`` (its name, or with
    ``at_value`` its value) replaced by spaces, line breaks kept, so later positions stay the same;
    None where the entry's extent is not clear (the parse then stops at this error)."""
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    if not 0 < line <= len(starts):
        return None
    offset = starts[line - 1] + col - 1
    toks = _tokens(text)
    i = next((k for k, (_, start) in enumerate(toks) if start == offset), None)
    if i is None:
        return None
    if at_value:  # name : VALUE
        if i < 2 or toks[i - 1][0] != ":":
            return None
        first, last = i - 2, i
    else:
        first, j = i, i + 1
        if j < len(toks) and toks[j][0] == ":":
            j += 1
        if j >= len(toks):
            return None
        last = _value_end(toks, j)
        if last is None:
            return None
    begin, end = toks[first][1], toks[last][1] + len(toks[last][0])
    return text[:begin] + re.sub(r"[^\n]", " ", text[begin:end]) + text[end:]


def _value_end(toks: list[tuple[str, int]], j: int) -> int | None:
    """Index of the last token of the value starting at token ``j`` (a block, a list, a run of
    adjacent strings or one scalar)."""
    tok = toks[j][0]
    closing = {"{": "}", "<": ">", "[": "]"}
    if tok in closing:
        depth = 0
        for k in range(j, len(toks)):
            t = toks[k][0]
            if t in closing:
                depth += 1
            elif t in ("}", ">", "]"):
                depth -= 1
                if depth == 0:
                    return k
        return None
    if tok[0] in "\"'":
        while j + 1 < len(toks) and toks[j + 1][0][0] in "\"'":
            j += 1
    return j


def read_prototxt(source: Source, message_type: type[M]) -> M:
    """Parse a prototxt path or text as ``message_type`` (no upgrades)."""
    text, filename = _load(source)
    return parse_text(text, message_type(), filename)


# ---------------------------------------------------------------- where layers start

_TOKEN = re.compile(r"""\s+|\#[^\n]*|"(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?|[A-Za-z_][\w.]*|[-+]?[\w.]+|.""",
                    re.S)


def _top_level_fields(text: str) -> list[tuple[str, int, int]]:
    """(field name, 1-based line, 1-based column) of every field set at the top level of ``text``."""
    out: list[tuple[str, int, int]] = []
    depth = brackets = 0
    line = 1
    line_start = 0
    prev = ""
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok[0].isspace() or tok[0] == "#":
            if "\n" in tok:
                line += tok.count("\n")
                line_start = m.start() + tok.rindex("\n") + 1
            continue
        if tok in "{<":
            depth += 1
        elif tok in "}>":
            depth -= 1
        elif tok == "[":
            brackets += 1
        elif tok == "]":
            brackets -= 1
        elif depth == 0 and brackets == 0 and prev != ":" and (tok[0].isalpha() or tok[0] == "_"):
            out.append((tok, line, m.start() - line_start + 1))
        prev = tok
    return out


def layer_locations(text: str) -> dict[int, int]:
    """{index: line} where each top-level ``layer`` entry starts (``layers`` entries for V0/V1 nets)."""
    fields = _top_level_fields(text)
    lines = [ln for name, ln, _ in fields if name == "layer"]
    if not lines:
        lines = [ln for name, ln, _ in fields if name == "layers"]
    return dict(enumerate(lines))


def _upgraded_positions(raw: Message, text: str, upgrade: bool) -> list[tuple[int, int] | None]:
    """(line, column) of each layer after `upgrade_net`, following its rules (V0 padding layers
    vanish, V1 entries map one to one, an Input layer made from ``input`` fields comes first)."""
    fields = _top_level_fields(text)
    if len(raw.layers) > 0:
        pos: list[tuple[int, int] | None] = [(ln, col) for name, ln, col in fields if name == "layers"]
        if upgrade and any(layer.HasField("layer") for layer in raw.layers):
            pos = [p for p, layer in zip(pos, raw.layers) if layer.layer.type != "padding"]
    else:
        pos = [(ln, col) for name, ln, col in fields if name == "layer"]
    if upgrade and len(raw.input) > 0 and (len(raw.input_shape) > 0 or len(raw.input_dim) > 0):
        first_input = next(((ln, col) for name, ln, col in fields if name == "input"), None)
        pos = [first_input] + pos
    return pos


def read_net_with_source(source: Source, upgrade: bool = True) -> tuple[Any, NetSource]:
    """(NetParameter, NetSource): read a net prototxt, upgraded like ReadNetParamsFromTextFileOrDie."""
    from neocaffe.proto.caffe_pb2 import NetParameter

    from .upgrade import UpgradeError, upgrade_net

    text, filename = _load(source)
    net = parse_text(text, NetParameter(), filename)
    pos = _upgraded_positions(net, text, upgrade)
    if upgrade:
        try:
            net, _ = upgrade_net(net, source=filename)
        except UpgradeError as exc:
            raise PrototxtError(filename, None, None, str(exc)) from None
    return net, NetSource(filename, [p[0] if p else None for p in pos], [p[1] if p else None for p in pos])


def read_net(source: Source, upgrade: bool = True) -> Any:
    """A NetParameter from a prototxt path or text; old formats upgraded unless ``upgrade=False``
    (`read_net_with_source` also gives where each layer starts)."""
    return read_net_with_source(source, upgrade)[0]


def read_solver(source: Source, upgrade: bool = True) -> Any:
    """A SolverParameter from a prototxt path or text (ReadSolverParamsFromTextFileOrDie)."""
    from neocaffe.proto.caffe_pb2 import SolverParameter

    from .upgrade import UpgradeError, upgrade_solver

    text, filename = _load(source)
    solver = parse_text(text, SolverParameter(), filename)
    if upgrade:
        try:
            solver, _ = upgrade_solver(solver, source=filename)
        except UpgradeError as exc:
            raise PrototxtError(filename, None, None, str(exc)) from None
    return solver


def _float_text(value: float, digits: int, exact: int, width: str) -> str:
    """protobuf's SimpleFtoa/SimpleDtoa: %.{digits}g unless it does not round-trip, then %.{exact}g."""
    if value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    text = f"{value:.{digits}g}"
    if np.array(float(text), dtype=width) != np.array(value, dtype=width):
        text = f"{value:.{exact}g}"
    return text


def _value_text(fd: Any, value: Any) -> str:
    kind = fd.type
    if kind == fd.TYPE_MESSAGE:
        raise TypeError("message value")
    if kind == fd.TYPE_ENUM:
        ev = fd.enum_type.values_by_number.get(value)
        return ev.name if ev is not None else str(value)
    if kind in (fd.TYPE_STRING, fd.TYPE_BYTES):
        raw = value.encode("utf-8") if isinstance(value, str) else value
        return '"' + text_encoding.CEscape(raw, as_utf8=False) + '"'
    if kind == fd.TYPE_BOOL:
        return "true" if value else "false"
    if kind == fd.TYPE_FLOAT:
        return _float_text(value, 6, 9, "float32")
    if kind == fd.TYPE_DOUBLE:
        return _float_text(value, 15, 17, "float64")
    return str(value)


def _print(message: Message, indent: int, out: list[str]) -> None:
    pad = " " * indent
    for fd, value in message.ListFields():
        values = value if fd.is_repeated else [value]
        for v in values:
            if fd.type == fd.TYPE_MESSAGE:
                out.append(f"{pad}{fd.name} {{\n")
                _print(v, indent + 2, out)
                out.append(f"{pad}}}\n")
            else:
                out.append(f"{pad}{fd.name}: {_value_text(fd, v)}\n")


def to_text(message: Message) -> str:
    """Text that Caffe reads, printed as C++ TextFormat::Print prints it (field-number order, two-space
    indents, floats by SimpleFtoa: ``1`` not ``1.0``), so upgraded files equal Caffe's byte for byte."""
    out: list[str] = []
    _print(message, 0, out)
    return "".join(out)


def write_prototxt(message: Message, path: str | os.PathLike[str]) -> None:
    """Write ``to_text(message)`` atomically (temporary name + os.replace)."""
    data = to_text(message).encode("utf-8")
    with atomic_output(path) as f:
        f.write(data)
