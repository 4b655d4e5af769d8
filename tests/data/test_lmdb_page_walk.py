"""An LMDB whose pages are damaged inside (bytes shifted, a node pointer or a child page number
wrong) is refused before LMDB follows a field off its page: found by tests/fuzz (a 155-byte run
repeated inside the leaf page killed the reader with SIGBUS in LMDB's first cursor move). Reads run
in a child process (tests/damage.py), so a crash is a failed test."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from neocaffe.data.integrity import check_lmdb_pages, read_lmdb_metas
from neocaffe.data.sources import DataSourceError
from tests.damage import make_datum_lmdb, run_cases
from tests.fuzz.seeds import datum_db


def _copy_with(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    f = dst / "data.mdb"
    f.write_bytes(edit(f.read_bytes()))
    return dst


def _repeat(at: int, start: int, n: int):
    return lambda raw: raw[:at] + raw[start:start + n] + raw[at:]


def test_bytes_shifted_inside_a_leaf_page_are_refused(tmp_path: Path) -> None:
    db = datum_db(tmp_path / "db", "lmdb", encoded=False)  # 10 raw 3x8x8 Datums in one leaf page (page 2)
    cases = [_copy_with(db, tmp_path / f"c{k}", _repeat(at, 4440, n))
             for k, (at, n) in enumerate([(11803, 189), (11184, 155), (8192 + 3000, 7), (8192 + 3700, 64)])]
    outcomes = run_cases([("lmdb", str(c)) for c in cases], tmp_path)
    for o in outcomes:
        assert not o["ok"] and o["neocaffe"] and o["names_file"], o
        assert "is damaged" in o["msg"] or "truncated" in o["msg"], o


def _root_and_last(data_file: Path) -> tuple[int, int, int]:
    meta = max(read_lmdb_metas(str(data_file), "test"), key=lambda m: m.txnid)
    return meta.root, meta.last_page, meta.page_size


def test_a_branch_pointing_past_the_last_page_is_refused(tmp_path: Path) -> None:
    db = make_datum_lmdb(tmp_path / "db", n=400)  # several leaf pages under a branch root
    root, last, psize = _root_and_last(db / "data.mdb")
    raw = (db / "data.mdb").read_bytes()
    flags = struct.unpack_from("<H", raw, root * psize + 10)[0]
    assert flags & 0x01, "the root of 400 records is a branch page"
    (ptr,) = struct.unpack_from("<H", raw, root * psize + 16 + 2 * 1)  # the second child

    def bad_child(b: bytes) -> bytes:
        out = bytearray(b)
        struct.pack_into("<HHH", out, root * psize + ptr, (last + 5) & 0xFFFF, 0, 0)
        return bytes(out)

    case = _copy_with(db, tmp_path / "c", bad_child)
    with pytest.raises(DataSourceError, match=f"{case / 'data.mdb'}' is damaged: a branch points to page {last + 5}"):
        check_lmdb_pages(str(case), "source")
    (o,) = run_cases([("lmdb", str(case))], tmp_path)
    assert not o["ok"] and o["neocaffe"] and o["names_file"], o


def test_whole_databases_pass_the_walk_and_read_as_before(tmp_path: Path) -> None:
    from tests.conftest import SHARED

    dbs = [make_datum_lmdb(tmp_path / "small", n=3), make_datum_lmdb(tmp_path / "many", n=400)]
    real = SHARED / "fixtures" / "data" / "lmdb_raw"  # convert_imageset's output (real Caffe build)
    if (real / "data.mdb").exists():
        dbs.append(real)
    for db in dbs:
        check_lmdb_pages(str(db), "source")
    outcomes = run_cases([("lmdb", str(db)) for db in dbs], tmp_path)
    assert all(o["ok"] for o in outcomes), outcomes
