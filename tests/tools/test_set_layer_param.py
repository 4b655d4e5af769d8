"""set_layer_param: the fork's generated.prototxt, written atomically."""
from __future__ import annotations

import errno
import os

from neocaffe.io.prototxt import read_net, to_text
from neocaffe.tools.set_layer_param import main

NET = """name: "n"
layer { name: "s1" type: "Sparsify" bottom: "x" top: "x" sparsify_param { coef: 0 } }
layer { name: "d" type: "Dropout" bottom: "x" top: "x" }
layer { name: "s2" type: "Sparsify" bottom: "x" top: "x" }
"""


def test_sets_every_layer_of_the_type(tmp_path):
    template = tmp_path / "template.prototxt"
    template.write_text(NET)
    assert main(["--net_template", str(template), "--layer_type", "Sparsify", "--param_value", "1e-3"]) == 0
    out = tmp_path / "generated.prototxt"
    net = read_net(str(out), upgrade=False)
    assert [round(l.sparsify_param.coef, 9) for l in net.layer if l.type == "Sparsify"] == [0.001, 0.001]
    assert out.read_text() == to_text(net)


def test_a_failed_write_keeps_the_previous_output(tmp_path, monkeypatch, capsys):
    template = tmp_path / "template.prototxt"
    template.write_text(NET)
    out = tmp_path / "net.prototxt"
    out.write_text("previous run\n")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    assert main(["--net_template", str(template), "--layer_type", "Sparsify", "--param_value", "1",
                 "--output", str(out)]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert out.read_text() == "previous run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.prototxt", "template.prototxt"]  # no temp file left
