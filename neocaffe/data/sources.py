"""Where records come from: LMDB (``lmdb``), LevelDB (``plyvel``), image list files, HDF5 list files.

``DBReader`` walks a database in key order and wraps to the first key at the end (Caffe's
"Restarting data prefetching from start."); it opens read-only without the lock file, as Caffe falls
back to when ``lock.mdb`` is not writable. Paths are taken as given (relative to the working
directory, as Caffe resolves them). Every error names the file and, where there is one, the record.
The list files' readers live in ``neocaffe.data.list_sources``; this module re-exports them.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

from .errors import DataSourceError
from .hdf5_source import load_hdf5
from .integrity import (MappedSpan, check_lmdb_entries, check_lmdb_pages, check_lmdb_size, lmdb_data_file,
                        read_lmdb_metas)
from .list_sources import ListEntry, read_hdf5_list, read_image_list

__all__ = [
    "DataSourceError", "DBReader", "DBRecords", "detect_backend", "ListEntry", "read_image_list", "read_hdf5_list",
    "load_hdf5", "BACKENDS", "backend_name",
]

log = logging.getLogger("neocaffe.data")

BACKENDS = {"leveldb": 0, "lmdb": 1}  # DataParameter.DB


# py-lmdb allows one Environment per database and process, LevelDB one handle (its LOCK file), so
# readers share one: (backend, real path) -> [handle, users, pid]. A forked worker reuses the LMDB
# it inherits (read-only and lock-free, so nothing is shared but the read-only map) and never closes
# it; py-lmdb itself refuses to reopen it there. LevelDB is read in the main process only.
_HANDLES: dict[tuple[str, str], list] = {}


def detect_backend(path: str) -> str | None:
    """'lmdb' or 'leveldb' from the folder's files (None if neither)."""
    if os.path.isdir(path):
        names = set(os.listdir(path))
        if "data.mdb" in names:
            return "lmdb"
        if "CURRENT" in names:
            return "leveldb"
    elif os.path.isfile(path):
        with open(path, "rb") as f:
            head = f.read(32)
        if len(head) >= 20 and head[16:20] in (b"\xde\xc0\xef\xbe", b"\xbe\xef\xc0\xde"):
            return "lmdb"
    return None


def backend_name(value: Any) -> str:
    """'lmdb' / 'leveldb' from a DataParameter.DB value or a name."""
    if isinstance(value, str):
        name = value.lower()
        if name not in BACKENDS:
            raise DataSourceError(f"unknown backend '{value}'; known backends: {', '.join(sorted(BACKENDS))}")
        return name
    for k, v in BACKENDS.items():
        if v == int(value):
            return k
    raise DataSourceError(f"unknown backend {value}; known backends: {', '.join(sorted(BACKENDS))}")


class DBReader:
    """Sequential, wrapping reader of a Caffe database (``backend`` None: detected from the files).
    ``open()`` before use, in the process that reads."""

    def __init__(self, path: str, backend: str | None = None, where: str = "") -> None:
        self.path = path
        self.backend = backend_name(backend if backend is not None else (detect_backend(path) or "lmdb"))
        self.where = where or f"{self.backend} '{path}'"
        self._env: Any = None
        self._txn: Any = None
        self._cur: Any = None
        self._nonempty = False
        self._env_key: tuple[str, str] | None = None
        self._span: MappedSpan | None = None
        self._rcur: Any = None  # LMDB: the cursor of get() (keyed access) and the transaction it belongs to
        self._rcur_txn: Any = None

    # -- opening ------------------------------------------------------------------------------
    def open(self) -> "DBReader":
        path = self.path
        if not os.path.exists(path):
            raise DataSourceError(f"{self.where}: no such {self.backend} database: '{path}' (cwd {os.getcwd()})")
        found = detect_backend(path)
        if found is not None and found != self.backend:
            raise DataSourceError(
                f"{self.where}: '{path}' is a {found} database but the backend says {self.backend}"
            )
        if self.backend == "lmdb":
            self._open_lmdb()
        else:
            self._open_leveldb()
        if not self._valid():
            self.close()
            raise DataSourceError(f"{self.where}: database '{path}' holds no records")
        log.info("Opened %s %s", self.backend, path)
        return self

    def _open_lmdb(self) -> None:
        import lmdb

        subdir = os.path.isdir(self.path)
        if subdir and not os.path.exists(os.path.join(self.path, "data.mdb")):
            raise DataSourceError(f"{self.where}: '{self.path}' is not an LMDB (no data.mdb in it)")

        check_lmdb_size(self.path, self.where, DataSourceError)  # before mapping: a short file is SIGBUS

        def opener() -> Any:
            check_lmdb_pages(self.path, self.where, DataSourceError)  # a node LMDB would follow off its page
            try:
                return lmdb.open(self.path, readonly=True, lock=False, subdir=subdir, readahead=False,
                                 max_readers=126, meminit=False)
            except lmdb.Error as e:
                raise DataSourceError(f"{self.where}: cannot open LMDB '{lmdb_data_file(self.path)}': {e}") from None

        self._env = self._acquire(opener)
        with self._backend_errors():
            check_lmdb_entries(self.path, int(self._env.stat()["entries"]), self.where, DataSourceError)
            metas = read_lmdb_metas(lmdb_data_file(self.path), self.where, DataSourceError)
            if metas is not None:  # a record's node is checked before its value is touched (peek)
                self._span = MappedSpan(lmdb_data_file(self.path), metas[0].page_size)
            self._txn = self._env.begin(buffers=True)
            self._cur = self._txn.cursor()
            self._nonempty = bool(self._cur.first())

    def _open_leveldb(self) -> None:
        try:
            import plyvel
        except ImportError:  # pragma: no cover - optional dependency
            raise DataSourceError(f"{self.where}: reading LevelDB needs the 'plyvel' package (pip install plyvel)") from None

        def opener() -> Any:
            try:
                return plyvel.DB(self.path, create_if_missing=False, paranoid_checks=True)
            except Exception as e:
                raise DataSourceError(f"{self.where}: cannot open LevelDB '{self.path}': {_text(e)}") from None

        self._env = self._acquire(opener)
        with self._backend_errors():
            self._cur = self._env.raw_iterator(verify_checksums=True)
            self._cur.seek_to_first()

    @contextlib.contextmanager
    def _backend_errors(self) -> Iterator[None]:
        """LMDB's and LevelDB's own errors while reading (a damaged page, a bad checksum, a cut
        table file) become one DataSourceError naming the database."""
        try:
            yield
        except DataSourceError:
            raise
        except Exception as e:
            if type(e).__module__.split(".")[0] not in ("lmdb", "plyvel") and not isinstance(e, OSError):
                raise
            name = lmdb_data_file(self.path) if self.backend == "lmdb" else self.path
            raise DataSourceError(f"{self.where}: {self.backend} database '{name}' is damaged or "
                                  f"unreadable: {_text(e)}") from None

    def _acquire(self, opener: Any) -> Any:
        key = (self.backend, os.path.realpath(self.path))
        entry = _HANDLES.get(key)
        if entry is None:
            entry = _HANDLES[key] = [opener(), 0, os.getpid()]
        entry[1] += 1
        self._env_key = key
        return entry[0]

    def close(self) -> None:
        if self._txn is not None:
            self._txn.abort()
        elif self._cur is not None and hasattr(self._cur, "close"):
            self._cur.close()
        if self._env is not None:
            entry = _HANDLES.get(self._env_key)  # type: ignore[arg-type]
            if entry is not None and entry[0] is self._env:
                entry[1] -= 1
                if entry[1] <= 0 and entry[2] == os.getpid():
                    del _HANDLES[self._env_key]  # type: ignore[arg-type]
                    self._env.close()
        self._env = self._txn = self._cur = self._rcur = self._rcur_txn = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __enter__(self) -> "DBReader":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------
    def _valid(self) -> bool:
        if self.backend == "lmdb":
            return self._nonempty
        with self._backend_errors():
            return bool(self._cur.valid())

    def _record(self, cursor: Any) -> tuple[bytes, bytes]:
        """The (key, value) at an LMDB cursor, its node checked first (see MappedSpan)."""
        key = cursor.key()
        if self._span is not None:
            self._span.check_record(key, self.where, DataSourceError)
        return bytes(key), bytes(cursor.value())

    def _advance(self, log_wrap: bool) -> None:
        with self._backend_errors():
            self._advance_raw(log_wrap)

    def _advance_raw(self, log_wrap: bool) -> None:
        if self.backend == "lmdb":
            more = self._cur.next()
            if not more:
                if log_wrap:
                    log.info("Restarting data prefetching from start.")
                self._cur.first()
        else:
            self._cur.next()
            if not self._cur.valid():
                if log_wrap:
                    log.info("Restarting data prefetching from start.")
                self._cur.seek_to_first()

    def peek(self) -> tuple[bytes, bytes]:
        """The current (key, value) without moving."""
        if self._cur is None:
            self.open()
        with self._backend_errors():
            if self.backend == "lmdb":
                return self._record(self._cur)
            return bytes(self._cur.key()), bytes(self._cur.value())

    def next(self) -> tuple[bytes, bytes]:
        """The current (key, value); then move on, wrapping to the first key after the last."""
        item = self.peek()
        self._advance(True)
        return item

    def skip(self, n: int) -> None:
        """Move ``n`` records forward (wrapping) without reading values. LMDB: whole passes are not
        walked (a resumed run skips to its batch in one pass at most)."""
        if self._cur is None:
            self.open()
        n = int(n)
        if self.backend == "lmdb" and n > 0:
            n %= max(1, self.count())
        for _ in range(n):
            self._advance(False)

    def count(self) -> int:
        """Number of records (LMDB: from its statistics; LevelDB: by walking the keys)."""
        if self._cur is None:
            self.open()
        if self.backend == "lmdb":
            return int(self._env.stat()["entries"])
        n = 0
        with self._backend_errors():
            for _ in self._env.iterator(include_value=False, verify_checksums=True):
                n += 1
        return n

    def keys(self) -> Iterator[bytes]:
        """Every key once, in key order (no wrap), without reading values."""
        if self._cur is None:
            self.open()
        with self._backend_errors():
            if self.backend == "lmdb":
                with self._env.begin(buffers=True) as txn:
                    for key in txn.cursor().iternext(keys=True, values=False):
                        yield bytes(key)
            else:
                for key in self._env.iterator(include_value=False, verify_checksums=True):
                    yield bytes(key)

    def get(self, key: bytes) -> tuple[bytes, bytes]:
        """The record stored under ``key`` (random access; the sequential position does not move). A key
        the database no longer holds is a DataSourceError naming it."""
        if self._cur is None:
            self.open()
        with self._backend_errors():
            if self.backend == "lmdb":
                if self._rcur is None or self._rcur_txn is not self._txn:
                    self._rcur, self._rcur_txn = self._txn.cursor(), self._txn
                found = self._rcur.set_key(key)
                if found:
                    return self._record(self._rcur)
            else:
                value = self._env.get(key, verify_checksums=True)
                if value is not None:
                    return bytes(key), bytes(value)
        raise DataSourceError(f"{self.where}: record '{key.decode('utf-8', 'replace')}' is no longer in "
                              f"database '{self.path}' (changed while it was read?)")

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) once, in key order (no wrap)."""
        if self._cur is None:
            self.open()
        with self._backend_errors():
            if self.backend == "lmdb":
                with self._env.begin(buffers=True) as txn:
                    cursor = txn.cursor()
                    more = cursor.first()
                    while more:
                        yield self._record(cursor)
                        more = cursor.next()
            else:
                for k, v in self._env.iterator(verify_checksums=True):
                    yield bytes(k), bytes(v)


class DBRecords:
    """What a batch maker reading one LMDB/LevelDB in key order holds: ``path``, ``backend``, ``where`` (the
    name its errors give), ``start`` (records skipped at open: a resumed run's position) and the open
    `DBReader`, opened lazily in the process that reads (a prefetch worker) and closed there."""

    path: str
    backend: str
    where: str
    start: int = 0
    reader: DBReader | None = None
    pos: int = 0

    def open(self) -> None:
        self.reader = DBReader(self.path, self.backend, self.where).open()
        self.reader.skip(self.start)
        self.pos = 0

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def seek(self, record: int) -> DBReader:
        """The reader at ``record`` (counted from ``start``), opened if it is not; a record behind the
        position starts over. The caller reads on from there and sets ``pos`` past what it read."""
        if self.reader is None:
            self.open()
        if record < self.pos:  # asked to go back: start over
            self.close()
            self.open()
        assert self.reader is not None
        self.reader.skip(record - self.pos)
        return self.reader


# -- writing --------------------------------------------------------------------------------------
def _text(error: Exception) -> str:
    """A backend's message as text (plyvel gives bytes)."""
    arg = error.args[0] if len(error.args) == 1 else error
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
