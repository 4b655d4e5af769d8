"""``neocaffe.progress``: a tqdm bar only when stderr is an interactive terminal (a pseudo-terminal here),
log lines never drawn inside it, and off a terminal no control characters, only plain periodic lines."""
from __future__ import annotations

import io
import logging
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pty = pytest.importorskip("pty", reason="pseudo-terminals need a POSIX system")
tqdm = pytest.importorskip("tqdm")

REPO = Path(__file__).resolve().parents[1]
GLOG = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] ")


def _env(**extra: str) -> dict:
    env = dict(os.environ, TERM="xterm", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    env.pop("NEOCAFFE_PROGRESS", None)
    return env


def _on_pty(argv: list[str], cwd: Path, env: dict) -> tuple[int, str]:
    """Run ``argv`` with stdin/stdout/stderr on a 100-column pseudo-terminal; its exit status and output."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 120
    while True:
        left = deadline - time.monotonic()
        if left <= 0:  # bounded: a hung child fails the test instead of stalling the run
            proc.kill()
            os.close(master)
            raise AssertionError(f"{argv} still running after 120 s; its output so far: {out[-2000:]!r}")
        if not select.select([master], [], [], min(left, 1.0))[0]:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(timeout=120), out.decode("utf-8", "replace").replace("\r\n", "\n")


def _in_pipe(argv: list[str], cwd: Path, env: dict) -> tuple[int, str]:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stderr


def _messages(text: str) -> list[str]:
    """The glog records of ``text``, without their prefixes (time, thread), bars removed."""
    return [GLOG.sub("", m) for m in re.findall(r"[IWEF]\d{4} [^\r\n]*", text) if GLOG.match(m)]


def _assert_clean_lines(text: str) -> None:
    """Every log record starts a line of its own: at the start, after a newline, or after the bar was
    erased (tqdm's carriage return, blanks, carriage return)."""
    for m in GLOG.finditer(text):
        before = text[:m.start()]
        assert before == "" or before.endswith("\n") or re.search(r"\r *\r$", before), repr(text[m.start() - 120:m.end()])


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    cv2 = pytest.importorskip("cv2")
    (tmp_path / "img").mkdir()
    rs = np.random.RandomState(0)
    for i in range(6):
        cv2.imwrite(str(tmp_path / "img" / f"{i}.png"), (rs.rand(8, 8, 3) * 255).astype(np.uint8))
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i % 2}\n" for i in range(6)))
    return tmp_path


def test_bar_on_a_terminal_only(images):
    argv = [sys.executable, "-m", "neocaffe.tools.convert_imageset", "img/", "list.txt", "db"]
    code, tty = _on_pty(argv, images, _env())
    assert code == 0, tty
    assert re.search(r"\rconvert_imageset: +\d+%\|.*\| \d/6 \[", tty), repr(tty)  # tqdm's bar
    _assert_clean_lines(tty)
    shutil.rmtree(images / "db")
    code, piped = _in_pipe(argv, images, _env())
    assert code == 0, piped
    assert "\r" not in piped and "%|" not in piped and "\x1b" not in piped
    # the same log either way, line for line
    assert _messages(tty) == _messages(piped) and "Processed 6 files." in _messages(piped)[-1]


def test_caffe_test_bar_on_a_terminal_only(tmp_path):
    (tmp_path / "net.prototxt").write_text("""name: "t"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 }
    shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
""")
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net
    from neocaffe.io.weights import save_weights

    save_weights(tmp_path / "w.caffemodel", Net(read_net(str(tmp_path / "net.prototxt")), 1).to_weights(), hdf5=False)
    argv = [sys.executable, "-m", "neocaffe.cli.caffe", "test", "-model", "net.prototxt", "-weights", "w.caffemodel",
            "-iterations", "4"]
    code, tty = _on_pty(argv, tmp_path, _env())
    assert code == 0, tty
    assert re.search(r"\rcaffe test: +\d+%\|.*\| \d/4 \[", tty), repr(tty)
    _assert_clean_lines(tty)
    code, piped = _in_pipe(argv, tmp_path, _env())
    assert code == 0 and "\r" not in piped and "caffe test:" not in piped, piped
    assert _messages(tty) == _messages(piped) and any(m.startswith("Batch 3, loss = ") for m in _messages(piped))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_go_above_the_bar_and_handlers_come_back(monkeypatch):
    from neocaffe.cli.log import GlogHandler
    from neocaffe.progress import Progress

    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("NEOCAFFE_PROGRESS", raising=False)
    term = _Terminal()
    logger = logging.getLogger("neocaffe")
    handler = GlogHandler(term)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with Progress(3, "work", "items", stream=term) as bar:
            assert handler not in logger.handlers  # written through tqdm.write while the bar is up
            bar.update()
            logging.getLogger("neocaffe.tools.x").info("halfway")
            bar.update(2)
        assert logger.handlers[-1] is handler
        logging.getLogger("neocaffe.tools.x").info("after")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    text = term.getvalue()
    assert "work:" in text and "%|" in text
    _assert_clean_lines(text)
    assert _messages(text) == ["halfway", "after"]
    monkeypatch.setenv("NEOCAFFE_PROGRESS", "0")  # off: nothing drawn
    quiet = _Terminal()
    with Progress(3, "work", stream=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def test_plain_periodic_lines_off_a_terminal(monkeypatch, caplog):
    from neocaffe.progress import Progress

    monkeypatch.delenv("NEOCAFFE_PROGRESS", raising=False)
    pipe = io.StringIO()
    log = logging.getLogger("neocaffe.tools.x")
    with caplog.at_level(logging.INFO, logger="neocaffe"):
        with Progress(4, "work", "images", log, stream=pipe) as bar:  # the default: a line every 30 s at most
            bar.update(4)
        assert not caplog.messages
        monkeypatch.setenv("NEOCAFFE_PROGRESS_SECONDS", "0")
        with Progress(4, "work", "images", log, stream=pipe) as bar:
            for _ in range(4):
                bar.update()
        with Progress(None, "walk", "records", log, stream=pipe) as bar:
            bar.update(2)
    assert pipe.getvalue() == ""  # nothing but log records
    assert [re.sub(r", [\d.]+ images/s$", "", m) for m in caplog.messages[:4]] == [
        "work: 1/4 images (25%)", "work: 2/4 images (50%)", "work: 3/4 images (75%)", "work: 4/4 images (100%)"]
    assert re.fullmatch(r"walk: 2 records, [\d.]+ records/s", caplog.messages[4])
    monkeypatch.setenv("NEOCAFFE_PROGRESS_SECONDS", "soon")
    with pytest.raises(ValueError, match="NEOCAFFE_PROGRESS_SECONDS must be a number"):
        Progress(1, "work")


def test_prune_stages_on_a_terminal_only(tmp_path):
    (tmp_path / "net.prototxt").write_text("""name: "t"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
""")
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net
    from neocaffe.io.weights import save_weights

    net = Net(read_net(str(tmp_path / "net.prototxt")), 1)
    net.learnable[0].param.data[1] = 0  # one zero filter to prune
    save_weights(tmp_path / "w.caffemodel", net.to_weights(), hdf5=False)
    argv = [sys.executable, "-m", "neocaffe.tools.prune", "--prototxt", "net.prototxt", "--caffemodel", "w.caffemodel"]
    code, tty = _on_pty(argv, tmp_path, _env())
    assert code == 0, tty
    assert re.search(r"\rprune: +\d+%\|.*\| \d/3 \[.*pruning\]", tty), repr(tty)  # the stage beside the bar
    code, piped = _in_pipe(argv, tmp_path, _env())
    assert code == 0 and piped == "", piped  # nothing on stderr off a terminal
    assert "conv\t3/4 filters" in tty
