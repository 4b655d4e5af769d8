"""Cut-short and damaged data sources raise one clear error naming the file, never SIGBUS: every
read runs in a child process (tests/damage.py), so a crash is a failed test, not a dead pytest."""
from __future__ import annotations

import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.damage import make_datum_lmdb, run_cases

PAGE = 4096


def _copies(src: Path, folder: Path, edits: list) -> list[Path]:
    """One copy of the database folder ``src`` per edit (a function of the data file's bytes)."""
    out = []
    data_name = "data.mdb" if (src / "data.mdb").exists() else None
    for i, edit in enumerate(edits):
        dst = folder / f"c{i}"
        shutil.copytree(src, dst)
        target = dst / (data_name or edit[0])
        raw = target.read_bytes()
        target.write_bytes(edit(raw) if data_name else edit[1](raw))
        out.append(dst)
    return out


def _assert_named_rejections(outcomes: list[dict], allow_ok: bool = False) -> None:
    for o in outcomes:
        if o["ok"]:
            assert allow_ok, o
            continue
        assert o["neocaffe"] and o["names_file"], o


def test_lmdb_cut_short_at_many_offsets(tmp_path):
    """Truncations at page boundaries, one byte either side and random offsets: each a clear error
    naming data.mdb (before the check, 37 of 40 such tries died of SIGBUS)."""
    src = make_datum_lmdb(tmp_path / "src")
    size = (src / "data.mdb").stat().st_size
    rng = random.Random(0)
    cuts = sorted({0, 1, 100, PAGE - 1, PAGE, 2 * PAGE, 2 * PAGE + 1, size - PAGE, size - 1}
                  | {rng.randrange(size) for _ in range(31)})
    dbs = _copies(src, tmp_path, [lambda raw, c=c: raw[:c] for c in cuts])
    outcomes = run_cases([("lmdb", str(d)) for d in dbs], tmp_path)
    assert len(outcomes) == len(cuts) >= 35
    for o, cut, db in zip(outcomes, cuts, dbs):
        assert not o["ok"], (cut, o)
        assert o["neocaffe"] and str(db / "data.mdb") in o["msg"] or (cut == 0 and str(db) in o["msg"]), (cut, o)
    assert any("truncated" in o["msg"] and f"{size} bytes" not in o["msg"] for o in outcomes)


def _leaf_nodes(raw: bytes) -> list[int]:
    """Offsets of the nodes of the leaf page 2 (the only leaf of the small test database)."""
    flags, lower = struct.unpack_from("<HH", raw, 2 * PAGE + 10)
    assert flags & 0x02, "page 2 is a leaf"
    return [2 * PAGE + p for p in struct.unpack_from(f"<{(lower - 16) // 2}H", raw, 2 * PAGE + 16)]


def _set(raw: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(raw)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def test_lmdb_damaged_node_and_meta_fields(tmp_path):
    """A value size pointing past the file (SIGBUS in py-lmdb's pre-fault), an overflow page beyond
    the end, a record count or last page no file could hold: each one error naming data.mdb."""
    src = make_datum_lmdb(tmp_path / "src")
    raw = (src / "data.mdb").read_bytes()
    nodes = _leaf_nodes(raw)
    big = [n for n in nodes if struct.unpack_from("<H", raw, n + 4)[0] & 0x01]
    small = [n for n in nodes if n not in big]
    assert big and small
    newest = PAGE if struct.unpack_from("<Q", raw, PAGE + 144)[0] > struct.unpack_from("<Q", raw, 144)[0] else 0
    edits = [
        lambda r: _set(r, big[0] + 2, "<H", 0x52),  # value size + 0x520000
        lambda r: _set(r, big[-1], "<H", 0xFFFF),  # value size of the last overflow record
        lambda r: _set(r, big[0] + 8 + 8, "<Q", 10 ** 6),  # its overflow page number (key is 8 bytes)
        lambda r: _set(r, small[0] + 2, "<H", 1),  # an inline value past its page
        lambda r: _set(r, newest + 120, "<Q", 1 << 50),  # entries
        lambda r: _set(r, newest + 136, "<Q", 5000),  # last page
        lambda r: _set(r, newest + 40, "<I", 3000),  # page size
    ]
    dbs = _copies(src, tmp_path, edits)
    outcomes = run_cases([("lmdb", str(d)) for d in dbs], tmp_path)
    for o, db in zip(outcomes, dbs):
        assert not o["ok"] and o["neocaffe"] and str(db / "data.mdb") in o["msg"], o


def test_lmdb_random_byte_flips_never_crash(tmp_path):
    """Flips in the live pages: a decoded record, or a clear error naming the database."""
    src = make_datum_lmdb(tmp_path / "src")
    raw_len = (src / "data.mdb").stat().st_size
    rng = random.Random(3)
    edits = []
    for _ in range(40):
        spots = [(rng.randrange(min(raw_len, 3 * PAGE)), rng.randrange(1, 256)) for _ in range(rng.choice([1, 4, 16]))]

        def edit(r, spots=spots):
            out = bytearray(r)
            for at, x in spots:
                out[at] ^= x
            return bytes(out)
        edits.append(edit)
    dbs = _copies(src, tmp_path, edits)
    outcomes = run_cases([("lmdb", str(d)) for d in dbs], tmp_path)
    for o, db in zip(outcomes, dbs):
        assert o["ok"] or (o["neocaffe"] and str(db) in o["msg"]), o


def test_leveldb_cut_and_flipped_tables(tmp_path):
    """A cut or flipped table file, manifest or CURRENT: DataSourceError naming the database
    (plyvel's own IOError/CorruptionError escaped from the reads before)."""
    pytest.importorskip("plyvel")
    import plyvel

    src = make_datum_lmdb(tmp_path / "src", backend="leveldb", n=40)
    db = plyvel.DB(str(src))
    db.compact_range()
    db.close()
    files = sorted(p.name for p in src.iterdir() if p.suffix == ".ldb")
    assert files
    table = files[0]
    size = (src / table).stat().st_size
    rng = random.Random(5)
    edits = [(table, lambda r, c=c: r[:c]) for c in sorted({0, 1, size // 2, size - 1} | {rng.randrange(size) for _ in range(6)})]
    for _ in range(10):
        at = rng.randrange(size)
        edits.append((table, lambda r, at=at: r[:at] + bytes([r[at] ^ 0xFF]) + r[at + 1:]))
    manifest = next(p.name for p in src.iterdir() if p.name.startswith("MANIFEST"))
    edits += [(manifest, lambda r: r[: len(r) // 2]), ("CURRENT", lambda r: r[:3])]
    dbs = _copies(src, tmp_path, edits)
    outcomes = run_cases([("leveldb", str(d)) for d in dbs], tmp_path)
    bad = [o for o in outcomes if not o["ok"]]
    assert len(bad) >= 12
    for o, db in zip(outcomes, dbs):
        assert o["ok"] or (o["neocaffe"] and str(db) in o["msg"]), o


def _h5_files(folder: Path) -> dict[str, Path]:
    """An HDF5Data file, a .caffemodel.h5 and a .solverstate.h5 written by neocaffe."""
    import h5py

    from neocaffe.io import LayerWeights, save_caffemodel_h5
    from neocaffe.io.solverstate import SolverState, write_solverstate_h5

    g = np.random.default_rng(0)
    data = folder / "train.h5"
    with h5py.File(data, "w") as f:
        f["data"] = g.standard_normal((20, 3, 4, 4)).astype(np.float32)
        f["label"] = np.arange(20, dtype=np.float32)
    weights = folder / "w.caffemodel.h5"
    save_caffemodel_h5(weights, [LayerWeights("ip", "InnerProduct", [g.standard_normal((5, 8)).astype(np.float32),
                                                                     np.zeros(5, np.float32)])])
    state = folder / "s.solverstate.h5"
    write_solverstate_h5(state, SolverState(iter=10, current_step=0, learned_net="w.caffemodel.h5",
                                            history=[np.ones((5, 8), np.float32), np.ones(5, np.float32)]))
    return {"hdf5data": data, "weights": weights, "solverstate": state}


@pytest.mark.parametrize("kind", ["hdf5data", "weights", "solverstate"])
def test_hdf5_cut_and_flipped(tmp_path, kind):
    """HDF5Data sources, weights and solver states cut at many offsets or flipped in their headers:
    a neocaffe error naming the file, never h5py's bare message or a crash."""
    src = _h5_files(tmp_path)[kind]
    raw = src.read_bytes()
    rng = random.Random(7)
    cases = []
    cuts = sorted({0, 8, 100, len(raw) // 2, len(raw) - 1} | {rng.randrange(len(raw)) for _ in range(15)})
    for i, cut in enumerate(cuts):
        p = tmp_path / f"cut{i}_{src.name}"
        p.write_bytes(raw[:cut])
        cases.append((kind, str(p)))
    for i in range(40):
        out = bytearray(raw)
        for _ in range(rng.choice([1, 2, 8])):
            at = rng.randrange(min(len(raw), 2048))
            out[at] ^= rng.randrange(1, 256)
        p = tmp_path / f"flip{i}_{src.name}"
        p.write_bytes(bytes(out))
        cases.append((kind, str(p)))
    outcomes = run_cases(cases, tmp_path)
    for o, (_, path) in zip(outcomes, cases):
        if o["ok"]:
            assert "flip" in path, (path, o)
            continue
        assert o["neocaffe"] and o["names_file"], (path, o)
