"""Small C kernels, compiled once per machine with the system's C compiler and called through ctypes.

Some Caffe layer chains are one pass over memory in Caffe's own CPU code and several in PyTorch's
(BatchNorm -> Scale -> ReLU is five: subtract, divide, multiply, add, clamp). A kernel here does such a
chain in one pass with the same float32 operations in the same order, so its results are bit for bit
those of the layers run one by one: it is compiled with ``-ffp-contract=off`` (no fused multiply-add)
and without fast-math.

``load(name, source)`` compiles ``source`` into the cache folder (``$NEOCAFFE_CACHE``, else
``$XDG_CACHE_HOME/neocaffe`` or ``~/.cache/neocaffe``; a temporary folder where none is writable) under
a name that hashes the source, the flags, the compiler and this CPU's feature flags (it is built for
this CPU: ``-march=native``), writing to a temporary name and renaming, so processes building at the
same time never load a half-written file. Where no compiler works, or ``NEOCAFFE_NATIVE=0`` is set, it
returns None, logged once: callers then run the layers one by one (the same numbers, slower).

Kernels run on the calling thread. Threads of their own competed with PyTorch's OpenMP workers for the
cores: MTCNN det2 at batch 16 on 2 cores took 2.36-2.59 ms with the kernels on two threads, 2.04-2.35 ms
on one, and MobileNet v2 at batch 16 gained nothing from them.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("neocaffe.layers")

#: the compiler flags: IEEE float32 arithmetic as written (no contraction into fused multiply-add,
#: no fast-math), vectorized for this CPU
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared")
#: seconds a compile may take
COMPILE_TIMEOUT_S = 120

def traceable_only(x: object) -> bool:
    """True where a kernel must be PyTorch operations: inside a TorchScript trace, ``torch.compile``
    or ``torch.export`` (a C call would be recorded as a constant), or for a tensor subclass (fake,
    functional) whose memory cannot be read."""
    return (torch.jit.is_tracing() or torch.compiler.is_compiling()
            or type(x) not in (torch.Tensor, torch.nn.Parameter))


_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}


def enabled() -> bool:
    """False where ``NEOCAFFE_NATIVE`` is 0/false/no/off; true where it is unset, empty or 1/true/yes/on."""
    v = os.environ.get("NEOCAFFE_NATIVE", "").strip().lower()
    if v in ("", "1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"NEOCAFFE_NATIVE must be one of 1/0/true/false/yes/no/on/off; received '{v}'")


def cache_dir() -> Path:
    """Where compiled kernels are kept (see the module docstring)."""
    if os.environ.get("NEOCAFFE_CACHE"):
        return Path(os.environ["NEOCAFFE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "neocaffe"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc) or shutil.which("gcc") or shutil.which("clang")


def _build(name: str, source: str, extra: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    cc = _compiler()
    if cc is None:
        log.warning("native kernel %s: no C compiler (cc, gcc or clang) found; running the layers one by one", name)
        return None
    key = hashlib.sha256("\0".join((source, " ".join(FLAGS + extra), cc, platform.machine(), _cpu_flags())).encode())
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"neocaffe-{os.getuid()}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        target = folder / f"{name}-{key.hexdigest()[:16]}.so"
        if not target.exists():
            try:
                _compile(cc, source, target, extra)
            except (OSError, subprocess.SubprocessError) as e:
                detail = getattr(e, "stderr", "") or str(e)
                log.warning("native kernel %s: compiling with %s failed (%s); running the layers one by one",
                            name, cc, str(detail).strip().splitlines()[-1:] or detail)
                return None
        try:
            return ctypes.CDLL(str(target))
        except OSError as e:
            log.warning("native kernel %s: loading %s failed (%s); running the layers one by one", name, target, e)
            return None
    log.warning("native kernel %s: no writable cache folder; running the layers one by one", name)
    return None


def _compile(cc: str, source: str, target: Path, extra: tuple[str, ...] = ()) -> None:
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=target.parent)
    os.close(fd)
    src = tmp[: -len(".so")] + ".c"
    try:
        Path(src).write_text(source)
        subprocess.run([cc, *FLAGS, *extra, src, "-o", tmp, "-lm"], check=True, capture_output=True, text=True,
                       timeout=COMPILE_TIMEOUT_S)
        os.replace(tmp, target)
    finally:
        for leftover in (src, tmp):
            if os.path.exists(leftover):
                os.remove(leftover)


def load(name: str, source: str, extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The library built from ``source`` (compiled at the first call in this process or found in the
    cache), or None where native kernels are off or cannot be built. ``extra_flags`` follow ``FLAGS``
    (a later ``-ffp-contract=fast`` allows fused multiply-add, for kernels not bound to Caffe's bits)."""
    if not enabled():
        return None
    key = " ".join((name,) + tuple(extra_flags))
    with _lock:
        if key not in _loaded:
            _loaded[key] = _build(name, source, tuple(extra_flags))
        return _loaded[key]


_typed: dict[tuple[int, str], Any] = {}  # (id(library), symbol) -> the function with its argument types set


def function(name: str, source: str, symbol: str, argtypes: list[Any], extra_flags: tuple[str, ...] = ()) -> Any:
    """``symbol`` of the library ``load(name, source, extra_flags)`` gives, its argument types set once
    (returns nothing), or None where native kernels are off or cannot be built."""
    lib = load(name, source, extra_flags)
    if lib is None:
        return None
    key = (id(lib), symbol)
    fn = _typed.get(key)
    if fn is None:
        fn = getattr(lib, symbol)
        fn.argtypes = argtypes
        fn.restype = None
        _typed[key] = fn
    return fn


__all__ = ["load", "function", "enabled", "cache_dir", "traceable_only", "FLAGS"]
