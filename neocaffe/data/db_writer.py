"""Writing a new LMDB or LevelDB of records (the converters' output; Caffe's ``db::NEW`` transactions)."""
from __future__ import annotations

import logging
import os
from typing import Any

from neocaffe.data.sources import DataSourceError, backend_name

log = logging.getLogger("neocaffe.data")


class DBWriter:
    """A new LMDB or LevelDB (Caffe's ``db::NEW``: the path must not exist yet). ``put`` buffers
    records; ``commit`` writes them in one transaction, growing the LMDB map as needed; ``close`` (the
    end of a ``with``, an error's too) commits what is pending. ``commit_every``: commit after every
    that many records, as Caffe's converters commit every 1000; ``report``: log Caffe's ``Processed N
    files.`` at each such commit and at the last. ``written``: the records put so far."""

    def __init__(self, path: str, backend: str = "lmdb", map_size: int = 1 << 28, commit_every: int = 0,
                 report: bool = False) -> None:
        self.path = path
        self.commit_every, self.report, self.written = max(0, int(commit_every)), bool(report), 0
        self.backend = backend_name(backend)
        if os.path.exists(path):
            raise DataSourceError(f"'{path}' already exists; {self.backend} output must be a new database")
        self._pending: list[tuple[bytes, bytes]] = []
        if self.backend == "lmdb":
            import lmdb

            self._env = lmdb.open(path, map_size=int(map_size), subdir=True, meminit=False, max_dbs=0)
        else:
            try:
                import plyvel
            except ImportError:  # pragma: no cover - optional dependency
                raise DataSourceError("writing LevelDB needs the 'plyvel' package (pip install plyvel)") from None
            self._env = plyvel.DB(path, create_if_missing=True, error_if_exists=True, block_size=65536,
                                  write_buffer_size=268435456, max_open_files=100)
        log.info("Opened %s %s", self.backend, path)

    def put(self, key: bytes | str, value: bytes) -> None:
        self._pending.append((key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key, value))
        self.written += 1
        if self.commit_every and self.written % self.commit_every == 0:
            self._commit_counted()

    def _commit_counted(self) -> None:
        self.commit()
        if self.report:
            log.info("Processed %d files.", self.written)

    def commit(self) -> None:
        if not self._pending:
            return
        if self.backend == "lmdb":
            import lmdb

            while True:
                try:
                    with self._env.begin(write=True) as txn:
                        for k, v in self._pending:
                            txn.put(k, v)
                    break
                except lmdb.MapFullError:
                    size = self._env.info()["map_size"]
                    self._env.set_mapsize(size * 2)
        else:
            with self._env.write_batch() as wb:
                for k, v in self._pending:
                    wb.put(k, v)
        self._pending = []

    def close(self) -> None:
        if self._pending:
            self._commit_counted()
        self._env.close()

    def __enter__(self) -> "DBWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["DBWriter"]
