"""Seeded mutations of valid files: truncation, bit flips, byte runs, chunk deletion/duplication
and little-endian "interesting" integers for binary files; the same plus token edits (a number
made extreme, a field name or a string swapped, a token or line deleted or repeated, a brace
added) for text files. Each function takes a ``random.Random`` and returns (new bytes, what it did)."""
from __future__ import annotations

import random
import re
import struct

INTERESTING_INTS = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
INTERESTING_NUMBERS = ["0", "-1", "-7", "1", "3.5", "1e9", "2147483647", "2147483648", "4294967297",
                       "99999999999999999999", "1e40", "-1e-40", "nan", "inf", "-inf", "0x10", "1e-45"]
TOKEN = re.compile(rb'"(?:[^"\\\n]|\\.)*"|[A-Za-z_][A-Za-z0-9_]*|[-+]?[0-9][0-9eE.+-]*|[{}:\[\],<>#]|\S')


def truncate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    if not data:
        return data, "truncate(empty)"
    cut = rng.choice([0, rng.randrange(len(data)), max(0, len(data) - rng.randint(1, 16))])
    return data[:cut], f"truncate({cut}/{len(data)})"


def flip_bits(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    if not data:
        return data, "flip(empty)"
    out = bytearray(data)
    where = []
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
        where.append(i)
    return bytes(out), f"flip_bits({where})"


def set_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    if not data:
        return bytes([rng.randrange(256)]), "set_bytes(empty)"
    out = bytearray(data)
    i = rng.randrange(len(out))
    n = min(rng.randint(1, 16), len(out) - i)
    fill = rng.choice([None, 0x00, 0xFF, 0x7F, 0x80])
    out[i:i + n] = bytes(rng.randrange(256) if fill is None else fill for _ in range(n))
    return bytes(out), f"set_bytes({i},{n},{fill})"


def put_int(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """An extreme 2/4/8-byte little-endian integer over a length, count or offset field."""
    size = rng.choice([2, 4, 8])
    if len(data) < size:
        return truncate(rng, data)
    value = rng.choice(INTERESTING_INTS + [rng.randrange(1 << 32)]) & ((1 << (8 * size)) - 1)
    i = rng.randrange(len(data) - size + 1)
    packed = struct.pack({2: "<H", 4: "<I", 8: "<Q"}[size], value)
    return data[:i] + packed + data[i + size:], f"put_int({i},{size},{value:#x})"


def cut_chunk(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    if len(data) < 2:
        return truncate(rng, data)
    i = rng.randrange(len(data) - 1)
    n = rng.randint(1, min(256, len(data) - i))
    return data[:i] + data[i + n:], f"cut_chunk({i},{n})"


def repeat_chunk(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    if not data:
        return data, "repeat(empty)"
    i = rng.randrange(len(data))
    n = rng.randint(1, min(256, len(data) - i))
    j = rng.randrange(len(data) + 1)
    return data[:j] + data[i:i + n] + data[j:], f"repeat_chunk({i},{n}->{j})"


def varint_run(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A run of 0xFF bytes inserted: an endless or overlong protobuf varint, a huge length."""
    i = rng.randrange(len(data) + 1)
    n = rng.randint(1, 11)
    return data[:i] + b"\xff" * n + data[i:], f"varint_run({i},{n})"


BINARY_OPS = [truncate, flip_bits, flip_bits, set_bytes, put_int, put_int, cut_chunk, repeat_chunk, varint_run]


def _tokens(data: bytes) -> list[re.Match]:
    return list(TOKEN.finditer(data))


def token_edit(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One edit of a prototxt (or list file) token: what a typo, a bad merge or a bad script does."""
    toks = _tokens(data)
    if not toks:
        return varint_run(rng, data)
    t = rng.choice(toks)
    a, b, text = t.start(), t.end(), t.group()
    kind = rng.choice(["number", "swap_name", "string", "delete", "repeat", "brace", "move", "line"])
    if kind == "number":
        nums = [m for m in toks if re.fullmatch(rb"[-+]?[0-9][0-9eE.+-]*", m.group())]
        if nums:
            t = rng.choice(nums)
            a, b = t.start(), t.end()
        new = rng.choice(INTERESTING_NUMBERS).encode()
    elif kind == "swap_name":
        names = sorted({m.group() for m in toks if re.fullmatch(rb"[A-Za-z_]\w*", m.group())})
        new = rng.choice(names) if names else b"x"
    elif kind == "string":
        strs = [m for m in toks if m.group().startswith(b'"')]
        if strs:
            t = rng.choice(strs)
            a, b = t.start(), t.end()
        others = sorted({m.group() for m in strs}) or [b'""']
        new = rng.choice([b'""', b'"no/such/file"', b'"\\xff\\x00"', b'"unterminated', rng.choice(others)])
    elif kind == "delete":
        new = b""
    elif kind == "repeat":
        new = text + b" " + text
    elif kind == "brace":
        new = text + rng.choice([b" {", b" }", b" :", b" ]", b" #"])
    elif kind == "move":
        u = rng.choice(toks)
        if u.start() < a:
            return (data[:u.start()] + text + b" " + data[u.start():a] + data[b:],
                    f"token_move({text[:24]!r}->{u.start()})")
        return data[:a] + data[b:u.end()] + b" " + text + data[u.end():], f"token_move({text[:24]!r}->{u.end()})"
    else:
        lines = data.split(b"\n")
        k = rng.randrange(len(lines))
        if rng.random() < 0.5:
            del lines[k]
            return b"\n".join(lines), f"delete_line({k + 1})"
        lines.insert(rng.randrange(len(lines) + 1), lines[k])
        return b"\n".join(lines), f"repeat_line({k + 1})"
    return data[:a] + new + data[b:], f"token_{kind}({data[a:b][:24]!r}->{new[:24]!r})"


TEXT_OPS = [token_edit] * 6 + [truncate, flip_bits, set_bytes]


def mutate(rng: random.Random, data: bytes, text: bool, message_type: type | None = None) -> tuple[bytes, str]:
    """One to three mutations of ``data`` (token edits weigh most for text files); for a file of a
    protobuf ``message_type`` a third of the cases start with a schema-aware edit (``proto_edit``)."""
    ops = TEXT_OPS if text else BINARY_OPS
    done = []
    if message_type is not None and rng.random() < 1 / 3:
        data, what = proto_edit(rng, data, message_type, text)
        done.append(what)
        if rng.random() < 0.5:
            return data, what
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        data, what = rng.choice(ops)(rng, data)
        done.append(what)
    return data, " + ".join(done)


_INT_VALUES = {"int32": [0, -1, 1, 7, 2**31 - 1, -2**31], "int64": [0, -1, 1, 2**31, 2**40, 2**62, -2**62],
               "uint32": [0, 1, 2**32 - 1, 2**31], "uint64": [0, 1, 2**63, 2**64 - 1]}
_FLOAT_VALUES = [0.0, -1.0, 1.0, 1e30, -1e30, float("nan"), float("inf"), 1e-45]


def _numeric_kind(fd) -> str | None:
    from google.protobuf.descriptor import FieldDescriptor as F

    return {F.CPPTYPE_INT32: "int32", F.CPPTYPE_INT64: "int64", F.CPPTYPE_UINT32: "uint32",
            F.CPPTYPE_UINT64: "uint64", F.CPPTYPE_FLOAT: "float", F.CPPTYPE_DOUBLE: "float",
            F.CPPTYPE_BOOL: "bool", F.CPPTYPE_ENUM: "enum"}.get(fd.cpp_type)


def _places(msg, out: list) -> list:
    """Every set field of ``msg`` and its sub-messages: (message, field descriptor)."""
    for fd, value in msg.ListFields():
        out.append((msg, fd))
        if fd.message_type is not None:
            for sub in (value if fd.is_repeated else [value]):
                _places(sub, out)
    return out


def _value(rng: random.Random, fd):
    kind = _numeric_kind(fd)
    if kind in _INT_VALUES:
        return rng.choice(_INT_VALUES[kind])
    if kind == "float":
        return rng.choice(_FLOAT_VALUES)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "enum":
        return rng.choice([v.number for v in fd.enum_type.values])
    return rng.choice(["", "no/such/file", "x" * 300])


def proto_edit(rng: random.Random, data: bytes, message_type: type, text: bool) -> tuple[bytes, str]:
    """A schema-aware edit: the file parsed as ``message_type``, one field set to an extreme value,
    or one repeated element removed, repeated or emptied, written back (text or binary). What a
    buggy writer or a hand edit does: well-formed, with values the reader must check."""
    from google.protobuf import text_format

    msg = message_type()
    try:
        if text:
            text_format.Parse(data.decode(), msg)
        else:
            msg.ParseFromString(data)
    except Exception:  # already damaged: a byte-level edit instead
        return mutate(rng, data, text)
    places = _places(msg, [])
    if not places:
        return mutate(rng, data, text)
    parent, fd = rng.choice(places)
    field = getattr(parent, fd.name)
    if fd.is_repeated:
        op = rng.choice(["drop", "repeat", "clear", "set"] if len(field) else ["clear"])
        k = rng.randrange(len(field)) if len(field) else 0
        if op == "drop":
            del field[k]
        elif op == "repeat":
            field.add().CopyFrom(field[k]) if fd.message_type is not None else field.append(field[k])
        elif op == "clear":
            parent.ClearField(fd.name)
        elif fd.message_type is None:
            field[k] = _value(rng, fd)
            op = f"set={field[k]!r:.40}"
        else:
            parent.ClearField(fd.name)
            op = "clear"
        what = f"proto_{op}({fd.full_name}[{k}])"
    elif fd.message_type is not None:
        parent.ClearField(fd.name)
        what = f"proto_clear({fd.full_name})"
    else:
        new = _value(rng, fd)
        setattr(parent, fd.name, new)
        what = f"proto_set({fd.full_name}={new!r:.40})"
    out = text_format.MessageToString(msg).encode() if text else msg.SerializeToString()
    return out, what
