"""What the ``caffe`` command's subcommands share: its gflags (``FLAGS``/``DEFAULTS``) and their parsing,
the usage and command errors, ``-gpu`` ids, weight lists, file checks, the speed-mode flags and Caffe's
SIGINT/SIGHUP actions. ``neocaffe.cli.caffe`` (the dispatcher) and ``neocaffe.cli.train`` both import
this module and never each other.
"""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Callable

from neocaffe.cli.export import FLAGS as EXPORT_FLAGS
from neocaffe.flags import HELP, Flag, FlagError, FlagHelp, parse_flags

log = logging.getLogger("neocaffe.cli")

FLAGS: dict[str, Flag] = {
    "solver": Flag(str, ""), "model": Flag(str, ""), "weights": Flag(str, ""), "snapshot": Flag(str, ""),
    "gpu": Flag(str, ""), "iterations": Flag(int, 50), "phase": Flag(str, ""), "level": Flag(int, 0),
    "stage": Flag(list, []), "sigint_effect": Flag(str, "stop"), "sighup_effect": Flag(str, "snapshot"),
    "precision": Flag(str, "fp32"), "cpu_procs": Flag(int, 0),
    # None: not given (the NEOCAFFE_* environment decides); -compile alone = -compile=default
    "channels_last": Flag(bool, None), "cudnn_benchmark": Flag(bool, None), "compile": Flag(str, None, alone="default"),
    "fused": Flag(bool, None), "tensorboard": Flag(str, None), "tensorboard_histograms": Flag(bool, None),
    **EXPORT_FLAGS,
}
DEFAULTS: dict[str, Any] = {k: f.default for k, f in FLAGS.items()}
EFFECTS = ("stop", "snapshot", "none")


class UsageError(Exception):
    """Bad command line (unknown flag, missing value, unknown command)."""


class CommandError(Exception):
    """A command cannot run as asked; the message says why (file names included)."""


class HelpRequested(Exception):
    """``-help`` was given; ``export`` says whether ``caffe export``'s own usage is wanted."""

    def __init__(self, export: bool) -> None:
        super().__init__("help requested")
        self.export = export


@dataclass
class Args:
    command: str = ""
    flags: dict[str, Any] = field(default_factory=lambda: {k: (list(v) if isinstance(v, list) else v)
                                                            for k, v in DEFAULTS.items()})
    given: set[str] = field(default_factory=set)
    argv: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["flags"][name]
        except KeyError:
            raise AttributeError(name) from None


def parse_args(argv: list[str]) -> Args:
    """gflags-style parsing (``neocaffe.flags``): ``-f v``, ``--f=v``, ``-f=v``, ``--f v``; flags anywhere,
    one command. ``-help`` raises ``HelpRequested``; anything else wrong raises ``UsageError``."""
    try:
        values, rest, given = parse_flags(argv, FLAGS, help_names=("h", *HELP))
    except FlagHelp:
        raise HelpRequested("export" in argv) from None
    except FlagError as e:
        raise UsageError(str(e)) from None
    if len(rest) != 1:
        raise UsageError("expected exactly one command" + (f"; received {' '.join(rest)}" if rest else ""))
    return Args(command=rest[0], flags=values, given=given, argv=list(argv))


# -- devices ----------------------------------------------------------------------------------------
def gpu_ids(flag: str) -> list[int]:
    """``-gpu`` as device ids ('all' = every CUDA device); an error when CUDA is absent."""
    import torch

    if not flag:
        return []
    if not torch.cuda.is_available():
        raise CommandError(f"-gpu {flag} given but CUDA is not available on this machine "
                           "(drop -gpu to run on the CPU)")
    count = torch.cuda.device_count()
    if flag == "all":
        return list(range(count))
    try:
        ids = [int(s) for s in flag.split(",") if s.strip()]
    except ValueError:
        raise CommandError(f"-gpu {flag}: expected device ids separated by ',' or 'all'") from None
    bad = [g for g in ids if g < 0 or g >= count]
    if bad:
        raise CommandError(f"-gpu {flag}: no CUDA device {bad[0]} (this machine has {count})")
    return ids


def stages(args: Args) -> list[str]:
    """``-stage`` values, empty ones dropped."""
    return [s for s in args.stage if s]


def speed_modes(args: Args) -> Any:
    """The speed modes the flags ask for (flags not given fall back to the NEOCAFFE_* environment)."""
    from neocaffe.solver.speed import SpeedModeError, SpeedModes

    try:
        precision = args.precision if "precision" in args.given else None  # not given: $NEOCAFFE_PRECISION
        return SpeedModes.resolve(precision, args.channels_last, args.cudnn_benchmark, args.compile, args.fused)
    except SpeedModeError as e:
        raise CommandError(f"{e} (flags -precision/-compile/-fused or the NEOCAFFE_* environment)") from None


# -- files ------------------------------------------------------------------------------------------
def weight_list(flag: str) -> list[str]:
    """``-weights a,b`` as a list of paths."""
    return [w for w in flag.split(",") if w] if flag else []


def check_files(path: str, flag: str, kind: str) -> None:
    """An error naming ``-flag path`` when ``path`` is given but is not a file."""
    if path and not os.path.exists(path):
        raise CommandError(f"-{flag} {path}: no such file (expected a {kind} file)")
    if path and os.path.isdir(path):
        raise CommandError(f"-{flag} {path}: is a directory (expected a {kind} file)")


def with_file(path: str, flag: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, its OSError/ValueError turned into a CommandError naming ``-flag path``."""
    try:
        return fn()
    except (OSError, ValueError) as e:
        msg = str(e)
        raise CommandError(msg if path in msg else f"-{flag} {path}: {msg}") from e


# -- signals ----------------------------------------------------------------------------------------
class SignalActions:
    """Caffe's SignalHandler: SIGINT/SIGHUP set a request the solver reads once per iteration."""

    def __init__(self, sigint_effect: str, sighup_effect: str) -> None:
        for flag, v in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect)):
            if v not in EFFECTS:
                raise CommandError(f'Invalid signal effect "{v}" was specified for -{flag}; valid: {", ".join(EFFECTS)}')
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        self.pending: list[str] = []
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        effect = self.effects.get(signum, "none")
        if effect != "none":
            self.pending.append(effect)

    def install(self) -> "SignalActions":
        for sig in self.effects:
            self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def uninstall(self) -> None:
        for sig, prev in self.previous.items():
            signal.signal(sig, prev)
        self.previous.clear()

    def __call__(self) -> str:
        if not self.pending:
            return "none"
        effect = self.pending.pop(0)
        log.info("Requested action: %s (from a signal)", effect)
        return effect
