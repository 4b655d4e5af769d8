"""gflags-style command lines: the one parser behind the ``caffe`` command (``neocaffe.cli.common``) and
the data tools (convert_imageset, compute_image_mean, ...).

Accepted as gflags accepts them: ``--name=value``, ``-name=value``, ``--name value``, ``-name value``;
booleans as ``--gray``, ``--nogray`` or ``--gray=false``; flags and positional arguments in any order;
``--`` ends the flags. Beyond gflags' scalar types, a flag may collect a list (``-stage a,b -stage c``:
comma-separated values appended; or each value whole, for values that hold commas) or take a value
when given alone (``-compile`` = ``-compile=default``). The error texts are gflags' own.
"""
from __future__ import annotations

from dataclasses import dataclass
import logging
import sys
from typing import Any, Callable, Sequence

__all__ = ["Flag", "FlagError", "FlagHelp", "parse_flags", "usage", "run_tool"]

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
_KIND = {bool: "bool", int: "int32", float: "double", str: "string", list: "string"}
HELP = ("help", "helpfull", "helpshort")


class FlagError(ValueError):
    """A command line gflags would reject; the message is gflags' text without its ``ERROR: `` prefix."""


class FlagHelp(FlagError):
    """``--help`` (or ``--helpfull``, ``--helpshort``) was given."""

    def __init__(self) -> None:
        super().__init__("help")


@dataclass(frozen=True)
class Flag:
    """One flag: ``type`` (bool, int, float, str, or list: values appended), ``default``, ``help``.

    ``split``: for a list flag, each value is split at commas (``-stage a,b``); False keeps it whole.
    ``alone``: not None, the flag may be given without a value and then takes this one.
    """

    type: type
    default: Any
    help: str = ""
    split: bool = True
    alone: Any = None


def _convert(name: str, flag: Flag, text: str) -> Any:
    if flag.type is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise FlagError(f"illegal value '{text}' specified for bool flag '{name}'")
    try:
        return flag.type(text)
    except ValueError:
        kind = _KIND.get(flag.type, flag.type.__name__)
        raise FlagError(f"illegal value '{text}' specified for {kind} flag '{name}'") from None


def _default(flag: Flag) -> Any:
    return list(flag.default) if isinstance(flag.default, list) else flag.default


def parse_flags(argv: Sequence[str], flags: dict[str, Flag],
                help_names: Sequence[str] = HELP) -> tuple[dict[str, Any], list[str], set[str]]:
    """(flag values, positional arguments, names of the flags given) for ``argv`` (without the program
    name). A name of ``help_names`` raises FlagHelp; anything gflags rejects raises FlagError."""
    values = {k: _default(f) for k, f in flags.items()}
    given: set[str] = set()
    positional: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            positional.extend(args[i:])
            break
        if not a.startswith("-") or a == "-":
            positional.append(a)
            continue
        body = a[2:] if a.startswith("--") else a[1:]
        name, eq, text = body.partition("=")
        if name in help_names and name not in flags:
            raise FlagHelp()
        if name not in flags:
            if name.startswith("no") and name[2:] in flags and flags[name[2:]].type is bool and not eq:
                values[name[2:]] = False
                given.add(name[2:])
                continue
            raise FlagError(f"unknown command line flag '{name}'")
        flag = flags[name]
        given.add(name)
        if not eq:
            if flag.type is bool:
                values[name] = True
                continue
            if flag.alone is not None:
                values[name] = flag.alone
                continue
            if i >= len(args):
                raise FlagError(f"flag '{a}' is missing its argument")
            text = args[i]
            i += 1
        if flag.type is list:
            values[name].extend(text.split(",") if flag.split else [text])
        else:
            values[name] = _convert(name, flag, text)
    return values, positional, given


def usage(prog: str, text: str, flags: dict[str, Flag]) -> str:
    """The usage message with every flag, its type and default."""
    lines = [f"{prog}: {text.rstrip()}", "", "  Flags:"]
    for name, f in flags.items():
        kind = _KIND.get(f.type, f.type.__name__)
        if f.type is bool:
            default = str(f.default).lower()
        elif f.type is list:
            default = '"' + ",".join(f.default) + '"'
        else:
            default = f'"{f.default}"' if f.type is str else f.default
        lines.append(f"    -{name} ({f.help}) type: {kind} default: {default}")
    return "\n".join(lines) + "\n"


def parse_command(prog: str, text: str, flags: dict[str, Flag], argv: Sequence[str], least: int,
                  most: int | None = None) -> tuple[dict[str, Any], list[str], set[str]] | None:
    """``parse_flags`` for a tool's command line that takes ``least`` to ``most`` (None: any number
    of) positional arguments. None after printing the usage (``--help``, a wrong count) or the flag
    error: the tool exits with status 1."""
    try:
        values, positional, given = parse_flags(argv, flags)
    except FlagError as e:
        sys.stderr.write(usage(prog, text, flags) if isinstance(e, FlagHelp) else f"ERROR: {e}\n")
        return None
    if len(positional) < least or (most is not None and len(positional) > most):
        sys.stderr.write(usage(prog, text, flags))
        return None
    return values, positional, given


def run_tool(prog: str, text: str, flags: dict[str, Flag], argv: list[str], n_positional: int,
             call: Callable[..., Any], errors: tuple[type[BaseException], ...], log: logging.Logger,
             most: int | None = None) -> int:
    """A tool's command line: parse ``argv``, print the usage (``--help``, a wrong number of positional
    arguments: fewer than ``n_positional`` or more than ``most``, default ``n_positional``) or the flag
    error, run ``call(*positional, **flags)``; an exception of ``errors`` is one logged ERROR. Returns the
    exit status."""
    parsed = parse_command(prog, text, flags, argv, n_positional, n_positional if most is None else most)
    if parsed is None:
        return 1
    values, positional, _ = parsed
    try:
        call(*positional, **values)
    except errors as e:
        log.error("%s", e)
        return 1
    return 0
