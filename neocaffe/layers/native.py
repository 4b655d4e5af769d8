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
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared", "-pthread")
#: seconds a compile may take
COMPILE_TIMEOUT_S = 120

#: elements per thread below which a kernel runs on one thread (starting a thread costs ~20 us)
MIN_PER_THREAD = 1 << 16

#: C prelude for kernels over independent planes: ``for_planes(run, planes, threads, args)`` calls
#: ``run`` on spans ``{lo, hi, args}`` covering ``0..planes``, the first on the calling thread and the
#: others on new threads (inline where a thread cannot start); a span is ``span_t``
PARALLEL = r"""
#include <pthread.h>
typedef struct { long lo, hi; const void *args; } span_t;
#define NEOCAFFE_MAX_THREADS 64
static void for_planes(void *(*run)(void *), long planes, int threads, const void *args) {
    if (threads > NEOCAFFE_MAX_THREADS) threads = NEOCAFFE_MAX_THREADS;
    if (threads > planes) threads = (int)planes;
    if (threads < 1) threads = 1;
    span_t spans[NEOCAFFE_MAX_THREADS];
    pthread_t tid[NEOCAFFE_MAX_THREADS];
    int started[NEOCAFFE_MAX_THREADS];
    for (int t = 0; t < threads; ++t) {
        spans[t].lo = planes * t / threads;
        spans[t].hi = planes * (t + 1) / threads;
        spans[t].args = args;
    }
    for (int t = 1; t < threads; ++t)
        started[t] = pthread_create(&tid[t], 0, run, &spans[t]) == 0;
    run(&spans[0]);
    for (int t = 1; t < threads; ++t) {
        if (started[t]) pthread_join(tid[t], 0);
        else run(&spans[t]);
    }
}
"""


def traceable_only(x: object) -> bool:
    """True where a kernel must be PyTorch operations: inside a TorchScript trace, ``torch.compile``
    or ``torch.export`` (a C call would be recorded as a constant), or for a tensor subclass (fake,
    functional) whose memory cannot be read."""
    return (torch.jit.is_tracing() or torch.compiler.is_compiling()
            or type(x) not in (torch.Tensor, torch.nn.Parameter))


def threads_for(numel: int) -> int:
    """Threads for a kernel over ``numel`` elements: torch's thread count, at most one per
    ``MIN_PER_THREAD`` elements."""
    return min(torch.get_num_threads(), max(1, numel // MIN_PER_THREAD))


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


def _build(name: str, source: str) -> ctypes.CDLL | None:
    cc = _compiler()
    if cc is None:
        log.warning("native kernel %s: no C compiler (cc, gcc or clang) found; running the layers one by one", name)
        return None
    key = hashlib.sha256("\0".join((source, " ".join(FLAGS), cc, platform.machine(), _cpu_flags())).encode())
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"neocaffe-{os.getuid()}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        target = folder / f"{name}-{key.hexdigest()[:16]}.so"
        if not target.exists():
            try:
                _compile(cc, source, target)
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


def _compile(cc: str, source: str, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=target.parent)
    os.close(fd)
    src = tmp[: -len(".so")] + ".c"
    try:
        Path(src).write_text(source)
        subprocess.run([cc, *FLAGS, src, "-o", tmp, "-lm"], check=True, capture_output=True, text=True,
                       timeout=COMPILE_TIMEOUT_S)
        os.replace(tmp, target)
    finally:
        for leftover in (src, tmp):
            if os.path.exists(leftover):
                os.remove(leftover)


def load(name: str, source: str) -> ctypes.CDLL | None:
    """The library built from ``source`` (compiled at the first call in this process or found in the
    cache), or None where native kernels are off or cannot be built."""
    if not enabled():
        return None
    with _lock:
        if name not in _loaded:
            _loaded[name] = _build(name, source)
        return _loaded[name]


_typed: dict[tuple[int, str], Any] = {}  # (id(library), symbol) -> the function with its argument types set


def function(name: str, source: str, symbol: str, argtypes: list[Any]) -> Any:
    """``symbol`` of the library ``load(name, source)`` gives, its argument types set once (returns
    nothing), or None where native kernels are off or cannot be built."""
    lib = load(name, source)
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


__all__ = ["load", "function", "enabled", "cache_dir", "threads_for", "traceable_only", "FLAGS", "PARALLEL", "MIN_PER_THREAD"]
