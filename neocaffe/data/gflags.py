"""gflags-style command lines for the data tools (convert_imageset, ...); their glog lines come from
``neocaffe.cli.log``.

Accepted like Caffe's tools: ``--name=value``, ``-name=value``, ``--name value``, booleans as ``--gray``,
``--nogray`` or ``--gray=false``; flags and positional arguments in any order; ``--`` ends the flags.
An unknown flag or a bad value is one ``ERROR:`` line and exit status 1, as in gflags.
"""
from __future__ import annotations

from dataclasses import dataclass
import logging
import sys
from typing import Any, Callable, Sequence

__all__ = ["Flag", "FlagError", "parse_flags", "usage", "run_tool"]

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


class FlagError(ValueError):
    """A command line gflags would reject."""


@dataclass(frozen=True)
class Flag:
    """One flag: its type (bool, int, float or str), default and help text."""

    type: type
    default: Any
    help: str = ""


def _convert(name: str, flag: Flag, text: str) -> Any:
    if flag.type is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise FlagError(f"ERROR: illegal value '{text}' specified for bool flag '{name}'")
    try:
        return flag.type(text)
    except ValueError:
        kind = {int: "int32", float: "double", str: "string"}.get(flag.type, flag.type.__name__)
        raise FlagError(f"ERROR: illegal value '{text}' specified for {kind} flag '{name}'") from None


def parse_flags(argv: Sequence[str], flags: dict[str, Flag]) -> tuple[dict[str, Any], list[str], set[str]]:
    """(flag values, positional arguments, names of the flags given) for ``argv`` (without the program
    name). ``--help`` raises FlagError('help')."""
    values = {k: f.default for k, f in flags.items()}
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
        if name in ("help", "helpfull", "helpshort"):
            raise FlagError("help")
        if name not in flags:
            if name.startswith("no") and name[2:] in flags and flags[name[2:]].type is bool and not eq:
                values[name[2:]] = False
                given.add(name[2:])
                continue
            raise FlagError(f"ERROR: unknown command line flag '{name}'")
        flag = flags[name]
        if not eq:
            if flag.type is bool:
                values[name] = True
                given.add(name)
                continue
            if i >= len(args):
                raise FlagError(f"ERROR: flag '{a}' is missing its argument")
            text = args[i]
            i += 1
        values[name] = _convert(name, flag, text)
        given.add(name)
    return values, positional, given


def usage(prog: str, text: str, flags: dict[str, Flag]) -> str:
    """The usage message with every flag, its type and default."""
    lines = [f"{prog}: {text.rstrip()}", "", "  Flags:"]
    for name, f in flags.items():
        kind = {bool: "bool", int: "int32", float: "double", str: "string"}[f.type]
        default = str(f.default).lower() if f.type is bool else (f'"{f.default}"' if f.type is str else f.default)
        lines.append(f"    -{name} ({f.help}) type: {kind} default: {default}")
    return "\n".join(lines) + "\n"


def run_tool(prog: str, text: str, flags: dict[str, Flag], argv: list[str], n_positional: int,
             call: Callable[..., Any], errors: tuple[type[BaseException], ...], log: logging.Logger) -> int:
    """A tool's command line: parse ``argv``, print the usage (``--help``, too few positional arguments)
    or the flag error, run ``call(*positional, **flags)``; an exception of ``errors`` is one logged
    ERROR. Returns the exit status."""
    try:
        values, positional, _ = parse_flags(argv, flags)
    except FlagError as e:
        sys.stderr.write(usage(prog, text, flags) if str(e) == "help" else f"{e}\n")
        return 1
    if len(positional) < n_positional:
        sys.stderr.write(usage(prog, text, flags))
        return 1
    try:
        call(*positional[:n_positional], **values)
    except errors as e:
        log.error("%s", e)
        return 1
    return 0
