"""Reading damaged files in a child process, so a crash (SIGBUS, SIGSEGV, abort) is a failed test,
not a dead pytest. ``run_cases`` writes the cases, runs ``python -m tests.damage cases.json`` and
returns one outcome per case: ``ok``, or the error's type, message and whether it is a neocaffe
error that names the file. A child that dies reports the case it died on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def make_datum_lmdb(path: Path, backend: str = "lmdb", n: int = 12, seed: int = 0) -> Path:
    """A database of ``n`` raw Datums, alternately small (stored in the leaf page) and 3x32x32
    (stored on LMDB overflow pages)."""
    import numpy as np

    from neocaffe.data.datum import array_to_datum
    from neocaffe.data.db_writer import DBWriter

    g = np.random.default_rng(seed)
    with DBWriter(str(path), backend) as db:
        for i in range(n):
            shape = (3, 32, 32) if i % 2 else (1, 4, 4)
            db.put(f"{i:08d}", array_to_datum(g.integers(0, 256, shape, dtype=np.uint8), i).SerializeToString())
    return path


def read_all(kind: str, path: str) -> Any:
    """Read ``path`` completely as a file of ``kind`` (what neocaffe does with it when training)."""
    if kind in ("lmdb", "leveldb"):
        from neocaffe.data.datum import decode_datum
        from neocaffe.data.sources import DBReader

        with DBReader(path, kind) as reader:
            n = reader.count()
            for _ in range(min(n, 10000) + 2):
                reader.next()
            return [decode_datum(v, where=f"{path} record {k!r}") for k, v in reader.items()]
    if kind == "hdf5data":
        from neocaffe.data.sources import load_hdf5

        return load_hdf5(path, ["data", "label"], "hdf5_data_param.source")
    if kind == "weights":
        from neocaffe.io import load_weights

        return load_weights(path)
    if kind == "solverstate":
        from neocaffe.io import read_solverstate

        return read_solverstate(path)
    if kind == "binaryproto":
        from neocaffe.io import read_blobproto

        return read_blobproto(path)
    if kind in ("net_prototxt", "solver_prototxt"):
        from neocaffe.io import read_net, read_solver

        return (read_net if kind == "net_prototxt" else read_solver)(path)
    raise ValueError(f"unknown kind {kind}")


def _neocaffe_error(err: BaseException) -> bool:
    from neocaffe.data.datum import DatumError
    from neocaffe.data.sources import DataSourceError
    from neocaffe.io.errors import CaffeFileError, PrototxtError

    return isinstance(err, (DataSourceError, DatumError, CaffeFileError, PrototxtError))


def _main(cases_file: str) -> None:
    cases = json.loads(Path(cases_file).read_text())
    for i, (kind, path) in enumerate(cases):
        print(json.dumps({"i": i, "start": True}), flush=True)
        try:
            read_all(kind, path)
            out = {"i": i, "ok": True}
        except Exception as err:  # every failure is recorded; the parent judges it
            text = str(err)
            out = {"i": i, "ok": False, "type": type(err).__name__, "msg": text[:500],
                   "neocaffe": _neocaffe_error(err), "names_file": os.fspath(path) in text}
        print(json.dumps(out), flush=True)


def run_cases(cases: list[tuple[str, str]], folder: Path, timeout: float = 120) -> list[dict]:
    """Outcomes of reading each (kind, path) in one child; a crash or hang raises AssertionError."""
    cases_file = folder / "cases.json"
    cases_file.write_text(json.dumps([[k, os.fspath(p)] for k, p in cases]))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.damage", str(cases_file)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        lines = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise AssertionError(f"hang: the reader ran past {timeout}s; last: {lines.splitlines()[-1:]}") from None
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    done = [r for r in records if "start" not in r]
    if proc.returncode != 0:
        last = [r for r in records if "start" in r][-1:] or [{"i": None}]
        case = cases[last[0]["i"]] if last[0]["i"] is not None else None
        raise AssertionError(f"the reader crashed (exit status {proc.returncode}) on {case}: {proc.stderr[-800:]}")
    assert len(done) == len(cases), proc.stderr[-800:]
    return done


if __name__ == "__main__":
    _main(sys.argv[1])
