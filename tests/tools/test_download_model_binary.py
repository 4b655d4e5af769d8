"""download_model_binary (BVLC's scripts/download_model_binary.py): the readme's front matter, the SHA-1
check, and a bad download that never replaces a file (file:// URLs stand in for the model server)."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from neocaffe.tools import download_model_binary as dl
from tests.conftest import REPO


def _model_dir(tmp_path: Path, payload: bytes, sha1: str | None = None) -> Path:
    source = tmp_path / "server" / "m.caffemodel"
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(payload)
    folder = tmp_path / "models" / "m"
    folder.mkdir(parents=True, exist_ok=True)
    sha1 = sha1 or hashlib.sha1(payload).hexdigest()
    (folder / "readme.md").write_text(f"---\nname: a model\ncaffemodel: m.caffemodel\n"
                                      f"caffemodel_url: {source.as_uri()}\nlicense: unrestricted\nsha1: '{sha1}'\n---\n\n# m\n")
    return folder


def test_downloads_checks_and_skips(tmp_path, capsys):
    folder = _model_dir(tmp_path, b"weights" * 100)
    assert dl.main([str(folder)]) == 0
    assert (folder / "m.caffemodel").read_bytes() == b"weights" * 100
    assert dl.main([str(folder)]) == 0
    assert "Model already exists." in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["m.caffemodel", "readme.md"]


def test_bad_download_keeps_the_file_there(tmp_path, capsys):
    folder = _model_dir(tmp_path, b"new weights", sha1="0" * 40)
    (folder / "m.caffemodel").write_bytes(b"previous")
    assert dl.main([str(folder)]) == 1
    assert "ERROR: model did not download correctly! Run this again." in capsys.readouterr().out
    assert (folder / "m.caffemodel").read_bytes() == b"previous"
    assert sorted(p.name for p in folder.iterdir()) == ["m.caffemodel", "readme.md"]     # no temporary left
    (tmp_path / "server" / "m.caffemodel").unlink()
    assert dl.main([str(folder)]) == 1
    assert "failed" in capsys.readouterr().out and (folder / "m.caffemodel").read_bytes() == b"previous"


def test_readme_errors_name_the_file(tmp_path, capsys):
    folder = tmp_path / "x"
    folder.mkdir()
    assert dl.main([str(folder)]) == 2
    assert f"{folder / 'readme.md'}" in capsys.readouterr().err
    (folder / "readme.md").write_text("---\nname: x\ncaffemodel: x.caffemodel\n---\n")
    assert dl.main([str(folder)]) == 2
    assert "lacks caffemodel_url, sha1" in capsys.readouterr().err


def test_script_path_and_the_alexnet_readme(tmp_path):
    meta = dl.front_matter(str(REPO / "models" / "bvlc_alexnet"))
    assert meta["caffemodel"] == "bvlc_alexnet.caffemodel" and meta["sha1"] == "9116a64c0fbe4459d18f4bb6b56d647b63920377"
    folder = _model_dir(tmp_path, b"abc")
    run = subprocess.run([sys.executable, "scripts/download_model_binary.py", str(folder)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert (folder / "m.caffemodel").read_bytes() == b"abc"
