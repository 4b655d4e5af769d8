"""Checks a database must pass before a library maps it: a cut-short LMDB kills the process with
SIGBUS on its first read past the end, so its size is compared with the page count its own meta
pages record (LMDB's ``mdb_env_read_header``/``mdb_env_pick_meta``) before ``lmdb.open``.

LMDB meta page (64-bit little-endian build, the one Caffe's tools write on x86/ARM): a 16-byte page
header, then ``mm_magic`` (0xBEEFC0DE) at 16, ``mm_version`` at 20, ``mm_dbs[FREE_DBI].md_pad``
(the page size) at 40, ``mm_last_pg`` at 136 and ``mm_txnid`` at 144; meta 0 lies at byte 0, meta 1
at one page size. A file with another magic (32-bit or big-endian builds) is left to LMDB.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from .errors import DataSourceError

__all__ = ["LmdbMeta", "read_lmdb_metas", "check_lmdb_size", "check_lmdb_entries", "check_lmdb_pages",
           "lmdb_data_file", "MappedSpan"]

LMDB_MAGIC = 0xBEEFC0DE
LMDB_VERSION = 1
P_META = 0x08
_META_BYTES = 152


@dataclass(frozen=True)
class LmdbMeta:
    """What one LMDB meta page records."""

    page_size: int
    last_page: int
    txnid: int
    entries: int
    root: int = -1  # the main database's root page (P_INVALID, all ones, when it is empty)
    flags: int = 0  # the main database's flags (MDB_DUPSORT, MDB_INTEGERKEY, ...)


def lmdb_data_file(path: str) -> str:
    """The data file of an LMDB given as its folder (``data.mdb``) or as the file itself."""
    return os.path.join(path, "data.mdb") if os.path.isdir(path) else path


def _meta_at(head: bytes, offset: int) -> tuple[int, ...] | None:
    """(flags, magic, version, psize, entries, last_pg, txnid, root, main db flags) of the meta page at
    ``offset`` (the main database's MDB_db sits at 88: md_flags at 92, md_entries at 120, md_root at 128)."""
    if len(head) < offset + _META_BYTES:
        return None
    (flags,) = struct.unpack_from("<H", head, offset + 10)
    magic, version = struct.unpack_from("<II", head, offset + 16)
    (psize,) = struct.unpack_from("<I", head, offset + 40)
    (db_flags,) = struct.unpack_from("<H", head, offset + 92)
    entries, root, last_pg, txnid = struct.unpack_from("<QQQQ", head, offset + 120)
    return flags, magic, version, psize, entries, last_pg, txnid, root, db_flags


def read_lmdb_metas(data_file: str, where: str, error: type = DataSourceError) -> list[LmdbMeta] | None:
    """Both meta pages of ``data_file``; None when the file is not a little-endian 64-bit LMDB (its
    first magic differs): LMDB itself then decides. A damaged meta raises ``error`` naming the file."""
    size = os.path.getsize(data_file)
    if size < _META_BYTES:
        raise error(f"{where}: LMDB file '{data_file}' is truncated: {size} bytes, expected at least two "
                    "meta pages (an LMDB data file is never shorter than 1024 bytes)")
    with open(data_file, "rb") as f:
        head = f.read(_META_BYTES)
        first = _meta_at(head, 0)
        if first is None or first[1] != LMDB_MAGIC:
            return None
        psize = first[3]
        if psize < 512 or psize > (1 << 16) or psize & (psize - 1):
            raise error(f"{where}: LMDB file '{data_file}' has a damaged meta page: page size {psize} "
                        "(expected a power of two from 512 to 65536)")
        if size < 2 * psize:
            raise error(f"{where}: LMDB file '{data_file}' is truncated: {size} bytes, expected at least "
                        f"{2 * psize} (its two meta pages of {psize} bytes)")
        f.seek(psize)
        second = _meta_at(f.read(_META_BYTES), 0)
    metas = []
    for number, meta in enumerate((first, second)):
        assert meta is not None  # the size check above guarantees both pages are there
        flags, magic, version, page_size, entries, last_pg, txnid, root, db_flags = meta
        if not flags & P_META or magic != LMDB_MAGIC or version != LMDB_VERSION or page_size != psize:
            raise error(f"{where}: LMDB file '{data_file}' has a damaged meta page {number}: flags {flags:#x}, "
                        f"magic {magic:#x}, version {version}, page size {page_size} (expected flags with "
                        f"{P_META:#x}, magic {LMDB_MAGIC:#x}, version {LMDB_VERSION}, page size {psize})")
        metas.append(LmdbMeta(page_size, last_pg, txnid, entries, root, db_flags))
    return metas


def check_lmdb_size(path: str, where: str, error: type = DataSourceError) -> None:
    """Raise ``error`` naming the data file when it is shorter than the pages its newest meta page
    (the larger txnid, the one LMDB reads) says the database uses; nothing when it is whole."""
    data_file = lmdb_data_file(path)
    metas = read_lmdb_metas(data_file, where, error)
    if metas is None:
        return
    meta = max(metas, key=lambda m: m.txnid)
    needed = (meta.last_page + 1) * meta.page_size
    size = os.path.getsize(data_file)
    if size < needed:
        raise error(f"{where}: LMDB file '{data_file}' is truncated (or its meta page damaged): {size} bytes, "
                    f"expected at least {needed} ({meta.last_page + 1} pages of {meta.page_size} bytes, as its "
                    "meta page records)")


P_BRANCH, P_LEAF = 0x01, 0x02
PAGE_KIND = 0x6F  # branch, leaf, overflow, meta, LEAF2, SUBP: a tree page is exactly a branch or a leaf
MDB_INTEGERKEY = 0x08
P_INVALID = (1 << 64) - 1
F_BIGDATA = 0x01


def check_lmdb_pages(path: str, where: str, error: type = DataSourceError) -> None:
    """Walk the main database's B-tree from the newest meta page's root, reading pages with plain
    reads (no mapping), and raise ``error`` naming the file at the first page LMDB would read past
    the end of the file or of a page (SIGBUS or garbage): a child page number beyond the last page,
    a page whose header is not the branch/leaf page it should be, a node whose key or inline value
    runs past its page, an overflow value past the end of the file, a cycle. LMDB trusts every
    such field (mdb_page_get, NODEDATA); a byte shifted inside a page reaches them all."""
    data_file = lmdb_data_file(path)
    metas = read_lmdb_metas(data_file, where, error)
    if metas is None:
        return
    meta = max(metas, key=lambda m: m.txnid)
    if meta.root == P_INVALID:
        return
    if meta.flags & ~MDB_INTEGERKEY & 0xFFFF:  # Caffe's writers make plain databases
        raise error(f"{where}: LMDB file '{data_file}' has a main database with flags {meta.flags:#x}; "
                    "expected a plain one (no duplicate keys), as Caffe writes")
    psize, pages, size = meta.page_size, meta.last_page + 1, os.path.getsize(data_file)

    def damaged(detail: str) -> Exception:
        return error(f"{where}: LMDB file '{data_file}' is damaged: {detail} ({size} bytes, {pages} pages "
                     f"of {psize} bytes)")

    seen: set[int] = set()
    todo = [meta.root]
    with open(data_file, "rb") as f:
        while todo:
            pg = todo.pop()
            if not 2 <= pg < pages or pg in seen:
                raise damaged(f"a branch points to page {pg}" + (" twice" if pg in seen else ""))
            seen.add(pg)
            page = os.pread(f.fileno(), psize, pg * psize)
            if len(page) < psize:
                raise damaged(f"page {pg} lies past the end of the file")
            pgno, _, flags, lower, upper = struct.unpack_from("<QHHHH", page, 0)
            kind = flags & PAGE_KIND
            if pgno != pg or kind not in (P_BRANCH, P_LEAF) or not 16 <= lower <= upper <= psize or lower & 1:
                raise damaged(f"page {pg} has a bad header: number {pgno}, flags {flags:#x}, lower {lower}, "
                              f"upper {upper}")
            for k in range((lower - 16) // 2):
                (ptr,) = struct.unpack_from("<H", page, 16 + 2 * k)
                if not upper <= ptr <= psize - 8:
                    raise damaged(f"node {k} of page {pg} lies at offset {ptr}, outside its page")
                lo, hi, nflags, ksize = struct.unpack_from("<HHHH", page, ptr)
                data = ptr + 8 + ksize
                if kind == P_BRANCH:
                    if data > psize:
                        raise damaged(f"node {k} of branch page {pg} runs past its page")
                    todo.append(lo | hi << 16 | nflags << 32)
                    continue
                value = lo | hi << 16
                if not nflags & F_BIGDATA:
                    if data + value > psize:
                        raise damaged(f"record {k} of page {pg} has a value of {value} bytes running past its page")
                    continue
                if data + 8 > psize:
                    raise damaged(f"record {k} of page {pg} has its overflow page number past its page")
                (ov,) = struct.unpack_from("<Q", page, data)
                if not 2 <= ov < pages or ov * psize + 16 + value > size:
                    raise damaged(f"record {k} of page {pg} has a value of {value} bytes on overflow page {ov}, "
                                  "past the end of the file")


def check_lmdb_entries(path: str, entries: int, where: str, error: type = DataSourceError) -> None:
    """Raise when the record count LMDB reports is more than the file's pages can hold (a damaged
    meta page: each record takes at least a 2-byte pointer and an 8-byte node in a leaf page)."""
    data_file = lmdb_data_file(path)
    most = os.path.getsize(data_file) // 10
    if entries > most:
        raise error(f"{where}: LMDB file '{data_file}' has a damaged meta page: it records {entries} "
                    f"entries, more than its {os.path.getsize(data_file)} bytes can hold (at most {most})")


class MappedSpan:
    """Where LMDB mapped ``data_file`` (from /proc/self/maps, Linux), so a record whose node header
    is damaged is refused before py-lmdb touches its value (it pre-faults every page of a value, and
    a page past the end of the file is SIGBUS). Node layout (LMDB's MDB_node): ``mn_lo``, ``mn_hi``
    (the value size), ``mn_flags`` (F_BIGDATA 0x01: the value lives on overflow pages whose number
    follows the key), ``mn_ksize``, then the key; the 8 header bytes sit just before the key."""

    F_BIGDATA = 0x01

    def __init__(self, data_file: str, page_size: int) -> None:
        self.data_file = data_file
        self.size = os.path.getsize(data_file)
        self.page_size = page_size
        self.start: int | None = None
        st = os.stat(data_file)
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and int(parts[4]) == st.st_ino and int(parts[2], 16) == 0:
                        self.start = int(parts[0].split("-")[0], 16)
                        break
        except (OSError, ValueError):  # not Linux: LMDB's own checks only
            self.start = None

    def check_record(self, key: memoryview, where: str, error: type = DataSourceError) -> None:
        """Raise when the record whose key buffer is ``key`` has a value reaching past its page
        (inline) or past the end of the file (overflow pages)."""
        if self.start is None or len(key) == 0:
            return
        import ctypes

        import numpy as np

        address = int(np.frombuffer(key, dtype=np.uint8).ctypes.data)
        offset = address - self.start
        page_end = (offset // self.page_size + 1) * self.page_size
        if not 8 <= offset < self.size or offset + len(key) > page_end:
            raise self._damaged(where, error, f"a key of {len(key)} bytes at offset {offset} lies outside its page")
        lo, hi, flags, _ = struct.unpack("<HHHH", ctypes.string_at(address - 8, 8))
        size = lo | hi << 16
        data = offset + len(key)
        if not flags & self.F_BIGDATA:
            if data + size > page_end:
                raise self._damaged(where, error, f"a value of {size} bytes at offset {data} runs past its page")
            return
        if data + 8 > page_end:
            raise self._damaged(where, error, f"an overflow page number at offset {data} runs past its page")
        (page,) = struct.unpack("<Q", ctypes.string_at(address + len(key), 8))
        value_at = page * self.page_size + 16
        if page < 2 or value_at + size > self.size:
            raise self._damaged(where, error, f"a value of {size} bytes on overflow page {page} runs past "
                                f"the end of the file")

    def _damaged(self, where: str, error: type, detail: str) -> Exception:
        return error(f"{where}: LMDB file '{self.data_file}' is damaged: {detail} ({self.size} bytes)")
