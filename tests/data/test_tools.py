"""convert_imageset / compute_image_mean against the real tools' outputs, and make_imagenet_list."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

from neocaffe.data.datum import decode_datum
from neocaffe.data.db_writer import DBWriter
from neocaffe.io.binaryproto import read_blobproto
from neocaffe.tools import compute_image_mean, convert_imageset, make_imagenet_list
from tests.conftest import REPO, shared_path
from tests.records import db_records

# glog's line prefix, as the caffe command writes it (neocaffe.cli.log) and Caffe's parse_log.py reads it
GLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] ")

RUNS = {  # the fixture's commands (tool_logs/), our spellings vary the flag syntax
    "lmdb_raw": ["--resize_height=40", "--resize_width=48", "images/", "list_png.txt"],
    "lmdb_encoded_png": ["--resize_height=40", "-resize_width", "48", "--encoded", "--encode_type=png", "images/",
                         "list_png.txt"],
    "lmdb_gray": ["-resize_height=40", "--resize_width", "48", "--gray", "images/", "list_png.txt"],
    "lmdb_raw_from_jpeg": ["images/", "list_jpeg.txt", "--resize_height=40", "--resize_width=48"],
}


@pytest.mark.parametrize("name", list(RUNS))
def test_convert_imageset_reproduces_caffe(name, tmp_path, monkeypatch):
    folder = shared_path("fixtures", "data")
    monkeypatch.chdir(folder)
    out = tmp_path / name
    assert convert_imageset.main(RUNS[name] + [str(out)]) == 0
    mine, ref = db_records(out), db_records(folder / name)
    assert [k for k, _ in mine] == [k for k, _ in ref]  # keys %08d_<file> in list order
    meta = json.loads((folder / "lmdb_dump.json").read_text())[name]
    for (key, a), (_, b) in zip(mine, ref):
        da, db = decode_datum(a), decode_datum(b)
        assert da.label == db.label and da.encoded == db.encoded == meta["encoded"][0]
        np.testing.assert_array_equal(da.array, db.array, err_msg=f"{name} {key!r}")
        if not da.encoded:
            assert a == b  # raw records are byte-identical to Caffe's


@pytest.mark.parametrize("db,mean", [("lmdb_raw", "mean.binaryproto"), ("lmdb_encoded_png", "mean_from_encoded.binaryproto")])
def test_compute_image_mean_reproduces_caffe(db, mean, tmp_path, monkeypatch, caplog):
    folder = shared_path("fixtures", "data")
    monkeypatch.chdir(folder)
    out = tmp_path / "mean.binaryproto"
    with caplog.at_level(logging.INFO):
        assert compute_image_mean.main([db, str(out)]) == 0
    np.testing.assert_array_equal(read_blobproto(out).data, read_blobproto(folder / mean).data)
    assert out.read_bytes() == (folder / mean).read_bytes()
    for line in ("mean_value channel [0]:119.042", "mean_value channel [1]:131.99", "mean_value channel [2]:116.471"):
        assert line in caplog.text
    assert ("Decoding Datum" in caplog.text) == ("encoded" in db)


def test_tools_end_to_end_feed_the_data_layer(tmp_path, monkeypatch):
    """convert + mean made here give the Data layer Caffe's batches."""
    folder = shared_path("fixtures", "data")
    monkeypatch.chdir(folder)
    assert convert_imageset.main(RUNS["lmdb_raw"] + [str(tmp_path / "db")]) == 0
    assert compute_image_mean.main([str(tmp_path / "db"), str(tmp_path / "m.binaryproto")]) == 0
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    text = (folder / "data_lmdb_meanfile.prototxt").read_text()
    text = text.replace('"lmdb_raw"', f'"{tmp_path / "db"}"').replace('"mean.binaryproto"', f'"{tmp_path / "m.binaryproto"}"')
    net = Net(read_net(text), 1)
    z = np.load(folder / "data_lmdb_meanfile.npz")
    for k in range(3):
        net.forward()
        np.testing.assert_array_equal(net.blob_data["data"].numpy(), z[f"batch{k}/data"])


def _images(tmp_path, sizes):
    g = np.random.default_rng(0)
    (tmp_path / "im").mkdir()
    names = []
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(tmp_path / "im" / f"p{i}.png"), g.integers(0, 255, (h, w, 3), dtype=np.uint8))
        names.append(f"p{i}.png")
    return names


def test_missing_image_is_reported_and_skipped(tmp_path, caplog):
    names = _images(tmp_path, [(8, 9), (8, 9)])
    (tmp_path / "l.txt").write_text(f"{names[0]} 0\nghost.png 1\n{names[1]} 2\n")
    with caplog.at_level(logging.ERROR):
        assert convert_imageset.main([f"{tmp_path}/im/", str(tmp_path / "l.txt"), str(tmp_path / "db")]) == 0
    assert "Could not open or find file" in caplog.text and "ghost.png" in caplog.text and "l.txt line 2" in caplog.text
    assert [k for k, _ in db_records(tmp_path / "db")] == [b"00000000_p0.png", b"00000002_p1.png"]


def test_check_size_and_existing_output(tmp_path, caplog):
    names = _images(tmp_path, [(8, 9), (7, 9)])
    (tmp_path / "l.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    with caplog.at_level(logging.ERROR):
        assert convert_imageset.main(["--check_size", f"{tmp_path}/im/", str(tmp_path / "l.txt"), str(tmp_path / "a")]) == 1
    assert "l.txt:2" in caplog.text and "check_size" in caplog.text
    assert convert_imageset.main([f"{tmp_path}/im/", str(tmp_path / "l.txt"), str(tmp_path / "b")]) == 0
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert convert_imageset.main([f"{tmp_path}/im/", str(tmp_path / "l.txt"), str(tmp_path / "b")]) == 1
    assert "already exists" in caplog.text


def test_encoded_without_resize_stores_the_file(tmp_path):
    names = _images(tmp_path, [(8, 9)])
    (tmp_path / "l.txt").write_text(f"{names[0]} 3\n")
    assert convert_imageset.main(["--encoded", f"{tmp_path}/im/", str(tmp_path / "l.txt"), str(tmp_path / "db")]) == 0
    (_, value), = db_records(tmp_path / "db")
    from neocaffe.data.datum import parse_datum

    d = parse_datum(value)
    assert d.encoded and d.label == 3 and d.data == (tmp_path / "im" / names[0]).read_bytes()


def test_shuffle_leveldb_and_workers(tmp_path):
    names = _images(tmp_path, [(6, 7)] * 9)
    (tmp_path / "l.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    args = [f"{tmp_path}/im/", str(tmp_path / "l.txt")]
    assert convert_imageset.main(["--shuffle", "--backend", "leveldb", *args, str(tmp_path / "s")]) == 0
    recs = db_records(tmp_path / "s")
    labels = [decode_datum(v).label for _, v in recs]
    assert sorted(labels) == list(range(9))
    assert [k[:8] for k, _ in recs] == [f"{i:08d}".encode() for i in range(9)]
    assert [k.decode()[9:] for k, _ in recs] == [f"p{lab}.png" for lab in labels]
    # decoding in worker processes changes nothing
    assert convert_imageset.main(["--num_workers=2", *args, str(tmp_path / "w")]) == 0
    assert convert_imageset.main(["--num_workers=0", *args, str(tmp_path / "n")]) == 0
    assert db_records(tmp_path / "w") == db_records(tmp_path / "n")
    # compute_image_mean detects LevelDB; --backend spells it out
    for argv in ([str(tmp_path / "s")], ["--backend=leveldb", str(tmp_path / "s")]):
        assert compute_image_mean.main(argv) == 0


def test_lmdb_map_grows(tmp_path):
    with DBWriter(str(tmp_path / "db"), "lmdb", map_size=1 << 16) as db:
        for i in range(64):
            db.put(f"{i:04d}", bytes(8192))
    assert len(db_records(tmp_path / "db")) == 64


def test_usage_and_bad_flags_exit_1(capsys):
    assert convert_imageset.main(["only_one_arg"]) == 1
    assert "convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME" in capsys.readouterr().err
    assert convert_imageset.main(["--resize_height=big", "a", "b", "c"]) == 1
    assert "ERROR: illegal value 'big' specified for int32 flag 'resize_height'" in capsys.readouterr().err
    assert compute_image_mean.main([]) == 1
    assert compute_image_mean.main(["--help"]) == 1
    assert "INPUT_DB [OUTPUT_FILE]" in capsys.readouterr().err


def test_compute_image_mean_errors(tmp_path, caplog):
    DBWriter(str(tmp_path / "empty"), "lmdb").close()
    with caplog.at_level(logging.ERROR):
        assert compute_image_mean.main([str(tmp_path / "empty")]) == 1
        assert compute_image_mean.main([str(tmp_path / "nowhere")]) == 1
    assert "holds no records" in caplog.text and "nowhere" in caplog.text


def test_make_imagenet_list(tmp_path):
    root = tmp_path / "train"
    for wnid, files in {"n02": ["b.JPEG", "a.JPEG", "notes.txt"], "n01": ["x.jpeg"]}.items():
        (root / wnid).mkdir(parents=True)
        for f in files:
            (root / wnid / f).write_bytes(b"")
    out = tmp_path / "train.txt"
    assert make_imagenet_list.main([f"{root}/", str(out)]) == 0
    assert out.read_text() == "n01/x.jpeg 0\nn02/a.JPEG 1\nn02/b.JPEG 1\n"
    assert (tmp_path / "synset_words.txt").read_text() == "n01 n01\nn02 n02\n"
    words = tmp_path / "words.txt"
    words.write_text("n02 goldfish, Carassius auratus\nn01 tench, Tinca tinca\nn03 great white shark\n")
    assert make_imagenet_list.main([f"--synset_words={words}", "--label_file", str(tmp_path / "l.txt"),
                                    f"{root}/", str(out)]) == 0
    assert out.read_text() == "n01/x.jpeg 1\nn02/a.JPEG 0\nn02/b.JPEG 0\n"
    assert (tmp_path / "l.txt").read_text().splitlines()[0] == "n02 goldfish, Carassius auratus"
    words.write_text("n01 tench\n")
    assert make_imagenet_list.main([f"--synset_words={words}", f"{root}/", str(out)]) == 1


def _tool(name, args, cwd, **env):
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", f"neocaffe.tools.{name}", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONPATH=path, **env))


def test_tools_write_glog_lines_and_honour_glog_minloglevel(tmp_path):
    folder = shared_path("fixtures", "data")
    env = {"GLOG_minloglevel": "0"}
    for name, args, expect in (
        ("compute_image_mean", ["lmdb_raw"], "compute_image_mean.py:"),
        ("convert_imageset", ["--resize_height=40", "--resize_width=48", "images/", "list_png.txt", str(tmp_path / "db")],
         "convert_imageset.py:"),
        ("make_imagenet_list", [f"{folder}/", str(tmp_path / "list.txt")], "make_imagenet_list.py:"),
    ):
        proc = _tool(name, args, folder, **env)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 0 and lines, proc.stderr
        assert all(GLOG_LINE.match(line) for line in lines), proc.stderr
        assert any(expect in line for line in lines), proc.stderr
    quiet = _tool("compute_image_mean", ["lmdb_raw"], folder, GLOG_minloglevel="1")
    assert quiet.returncode == 0 and quiet.stderr == ""
    failed = _tool("compute_image_mean", [str(tmp_path / "nowhere")], folder, GLOG_minloglevel="1")
    assert failed.returncode == 1 and failed.stderr.startswith("E") and GLOG_LINE.match(failed.stderr), failed.stderr


def test_tool_lines_carry_the_thread_id(monkeypatch, capsys):
    """glog writes the id of the thread that logs (not the process id)."""
    monkeypatch.chdir(shared_path("fixtures", "data"))
    monkeypatch.delenv("GLOG_minloglevel", raising=False)
    seen = {}

    def work():
        seen["tid"] = threading.get_native_id()
        seen["rc"] = compute_image_mean.main(["lmdb_raw"])

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    lines = capsys.readouterr().err.splitlines()
    assert seen["rc"] == 0 and lines
    assert all(GLOG_LINE.match(line) and int(line.split()[2]) == seen["tid"] for line in lines), lines


@pytest.mark.parametrize("tool", ["convert_imageset", "convert_annoset"])
def test_list_names_that_are_not_utf8_keep_their_bytes(tool, tmp_path):
    """Caffe's list files name images by bytes: a Latin-1 name is read, and its key holds those bytes
    (convert_imageset failed in the key's encoding; convert_annoset stopped at the list's decoding)."""
    from neocaffe.tools import convert_annoset

    folder = tmp_path / "im"
    folder.mkdir()
    img = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    assert cv2.imwrite(str(folder / "ok.png"), img)
    os.link(folder / "ok.png", os.fsencode(folder) + b"/caf\xe9.png")
    (tmp_path / "l.txt").write_bytes(b"caf\xe9.png 1\nok.png 2\n")
    main = convert_imageset.main if tool == "convert_imageset" else convert_annoset.main
    assert main([f"{folder}/", str(tmp_path / "l.txt"), str(tmp_path / "db")]) == 0
    records = db_records(tmp_path / "db")
    assert [k for k, _ in records] == [b"00000000_caf\xe9.png", b"00000001_ok.png"]
    if tool == "convert_annoset":
        from neocaffe.proto import caffe_pb2

        values = [caffe_pb2.AnnotatedDatum.FromString(v).datum.SerializeToString() for _, v in records]
    else:
        values = [v for _, v in records]
    arrays = [decode_datum(v).array for v in values]
    assert all(np.array_equal(a, img.transpose(2, 0, 1)) for a in arrays)
