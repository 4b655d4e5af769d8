"""summarize (Caffe's tools/extra/summarize.py on Python 3): rows, colours and column widths."""
from __future__ import annotations

import re
import subprocess
import sys

from neocaffe.tools import summarize
from tests.conftest import REPO

NET = """name: "s"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { name: "w" lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { kernel_size: 2 stride: 2 } }
layer { name: "py" type: "Python" bottom: "pool1" bottom: "ghost" top: "out" python_param { module: "m" layer: "L" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "pool1" top: "loss" loss_weight: 0.1 }
"""
PLAIN = re.compile(r"\033\[[\d;]+m")


def test_rows_and_colours(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    from neocaffe.io.prototxt import read_net

    rows = summarize.summarize_net(read_net(str(path), upgrade=False))
    plain = [[PLAIN.sub("", c) for c in row] for row in rows]
    assert plain[1] == ["conv1", "Convolution", "(w, x2.0 Dx0.0)", "data", "->", "conv1", "3/2+1 4/2"]
    assert plain[2][-1] == "2/2" and plain[3][1] == "m.L" and plain[3][3] == "pool1, ghost"
    assert plain[4][5] == "0.10000000149 * loss"                          # float32 0.1 as Python 2's str() prints it
    assert rows[0][5] == "\033[92mdata\033[0m" and rows[1][3] == "\033[92mdata\033[0m"   # a blob keeps its colour
    assert "\033[41mghost\033[0m" in rows[3][3]                           # never produced: on red
    assert rows[4][5] == "\033[97m0.10000000149 * \033[1;4mloss\033[0m"   # never read: bold, underlined


def test_table_widths_and_script_path(tmp_path):
    text = summarize.format_table([["a", "bb"], ["ccc", "d"]], max_width=30)
    assert text == "a   bb \nccc d  \n"
    capped = summarize.format_table([["a" * 10, "b"], ["c", "d"]], max_width=4)
    assert capped.splitlines() == ["a" * 10 + " b ", "c   d "]
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    run = subprocess.run([sys.executable, "tools/extra/summarize.py", str(path), "-w", "12"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 5 and "conv1" in run.stdout
    bad = subprocess.run([sys.executable, "tools/extra/summarize.py", str(tmp_path / "none.prototxt")], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "none.prototxt" in bad.stderr
