"""SSD's scripts/create_annoset.py at its path: checks, --redo, the printed convert_annoset line, the same
database a direct convert_annoset run writes, and the examples link."""
from __future__ import annotations

import os
import subprocess
import sys

from neocaffe.tools import convert_annoset
from tests.conftest import REPO
from tests.layers.test_ssd_training import _dataset
from tests.records import db_records


def _script(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "create_annoset.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=180)


def test_detection_database_and_link(tmp_path):
    _dataset(tmp_path, n=5)
    flags = ["--anno-type=detection", f"--label-map-file={tmp_path / 'labelmap.prototxt'}", "--check-label",
             "--encode-type=png", "--encoded"]
    out, examples = tmp_path / "VOC" / "lmdb" / "VOC_test_lmdb", tmp_path / "examples" / "VOC"
    run = _script(*flags, str(tmp_path), str(tmp_path / "list.txt"), str(out), str(examples), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    printed = run.stdout.splitlines()[0]
    assert printed.startswith(f"{REPO}/build/tools/convert_annoset --anno_type=detection --label_type=xml ")
    assert "--check_label=True" in printed and "--encoded=True --gray=False" in printed
    assert printed.endswith(f"{tmp_path}/ {tmp_path / 'list.txt'} {out}")
    link = examples / "VOC_test_lmdb"
    assert link.is_symlink() and os.readlink(link) == str(out)
    direct = tmp_path / "direct"
    assert convert_annoset.main(printed.split()[1:-1] + [str(direct)]) == 0
    assert db_records(out) == db_records(direct) and len(db_records(out)) == 5
    # an existing database without --redo is refused; with it, rebuilt
    again = _script(*flags, str(tmp_path), str(tmp_path / "list.txt"), str(out), str(examples), cwd=tmp_path)
    assert again.returncode == 1 and f"{out} already exists and I do not hear redo" in again.stdout
    redo = _script(*flags, "--redo", str(tmp_path), str(tmp_path / "list.txt"), str(out), str(examples), cwd=tmp_path)
    assert redo.returncode == 0, redo.stderr
    assert db_records(out) == db_records(direct)


def test_checks(tmp_path):
    _dataset(tmp_path, n=2)
    base = [str(tmp_path), str(tmp_path / "list.txt"), str(tmp_path / "db"), str(tmp_path / "ex")]
    run = _script("--anno-type=detection", "--label-map-file=missing.prototxt", *base, cwd=tmp_path)
    assert run.returncode == 1 and "label map file: missing.prototxt does not exist" in run.stdout
    run = _script(str(tmp_path / "nowhere"), *base[1:], cwd=tmp_path)
    assert run.returncode == 1 and "root directory:" in run.stdout and "does not exist" in run.stdout
    (tmp_path / "bad_map.prototxt").write_text("item { name: 'x' label: }")
    run = _script("--anno-type=detection", f"--label-map-file={tmp_path / 'bad_map.prototxt'}", *base, cwd=tmp_path)
    assert run.returncode == 1 and "Cannot parse label map file" in run.stdout
    assert not (tmp_path / "db").exists() and not (tmp_path / "ex").exists()
