"""Strict text parsing (file:line:col errors), path-or-text sources, layer lines, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from neocaffe.io import (CaffeFileNotFoundError, PrototxtError, layer_locations, parse_text,
                         read_net, read_net_with_source, read_prototxt, read_solver, to_text, write_prototxt)
from neocaffe.proto import caffe_pb2

from .conftest import shared_params

BAD = [
    # (text, line, col, words in the message)
    ('name: "a"\nname: "b"\n', 2, 7, 'multiple "name"'),                       # repeated singular field
    ('layer {\n  name: "x"\n  foo: 1\n}\n', 3, 3, 'no field named "foo"'),     # unknown field
    ('layer {\n  name: "x"\n  bottom: 3\n}\n', 3, 11, "Expected string"),      # wrong type
    ('layer {\n  convolution_param { num_output: "a" }\n}\n', 2, 35, "integer"),
    ('layer {\n  name: "x"\n', 2, 9, 'Expected "}"'),                         # syntax error
    ('layer { phase: 7 }', 1, 16, "no value with number 7"),                   # bad enum number
    ('layer { phase: TRAINING }', 1, 16, "TRAINING"),                          # bad enum name
    ('layer { type: "A" type: "B" }', 1, 25, 'multiple "type"'),
    ('layer { convolution_param { num_output: 3 num_output: 4 } }', 1, 55, 'multiple "num_output"'),
    ('force_backward: maybe', 1, 17, "true"),
]


@pytest.mark.parametrize("text,line,col,words", BAD)
def test_strict_errors_name_string_line_col(text, line, col, words):
    with pytest.raises(PrototxtError) as info:
        read_net(text, upgrade=False)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.filename, err.line, err.column) == ("<string>", line, col)
    assert str(err).startswith(f"<string>:{line}:{col}: ")
    assert words in str(err)
    assert "\n" not in str(err)


def test_errors_name_the_file(tmp_path: Path):
    path = tmp_path / "train_val.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "a"\n  bottom: 3\n}\n')
    with pytest.raises(PrototxtError, match=rf"^{path}:4:11: Expected string but found: '3'$"):
        read_net(path)
    with pytest.raises(PrototxtError, match=rf"^{path}:4:11: "):
        read_net(str(path))


def test_missing_and_binary_files(tmp_path: Path):
    missing = tmp_path / "nope.prototxt"
    with pytest.raises(FileNotFoundError, match="nope.prototxt: no such file") as info:
        read_net(str(missing))
    assert isinstance(info.value, CaffeFileNotFoundError) and isinstance(info.value, ValueError)
    binary = tmp_path / "weights.prototxt"
    binary.write_bytes(b"\n\x05hello\x12\x00\xff\xfe")
    with pytest.raises(PrototxtError, match=r"weights.prototxt:2:\d+: invalid UTF-8 byte 0xff"):
        read_net(binary)


def test_accepts_what_caffe_accepts():
    text = """# a comment
name: 'single quoted'   # trailing comment
layer < name: "c" type: "Convolution" phase: 1
  convolution_param: { num_output: 0x10 weight_filler { std: 1e-3 } bias_filler { value: .5 } }
  param { lr_mult: 1 } param { lr_mult: 2.0e0 } ;
  include: { phase: TEST }
>
"""
    net = read_net(text)
    layer = net.layer[0]
    assert net.name == "single quoted"
    assert layer.phase == caffe_pb2.TEST and layer.include[0].phase == caffe_pb2.TEST
    assert layer.convolution_param.num_output == 16
    assert layer.convolution_param.weight_filler.std == pytest.approx(1e-3)
    assert layer.convolution_param.bias_filler.value == 0.5
    assert [p.lr_mult for p in layer.param] == [1.0, 2.0]


def test_path_or_text(tmp_path: Path):
    path = tmp_path / "solver.prototxt"
    path.write_text('base_lr: 0.01\nlr_policy: "fixed"\n')
    assert read_solver(str(path)).base_lr == pytest.approx(0.01)
    assert read_solver(path).lr_policy == "fixed"
    assert read_solver("base_lr: 0.5").base_lr == 0.5        # ':' -> text
    assert read_net("layer {}").layer[0].name == ""         # '{' -> text
    assert read_net(b'name: "x"').name == "x"               # bytes -> text
    with pytest.raises(FileNotFoundError):
        read_solver("no_such_solver.prototxt")


def test_parse_text_clears_like_cpp_parse():
    net = caffe_pb2.NetParameter(name="old")
    parse_text('layer { name: "a" }', net, filename="x.prototxt")
    assert net.name == "" and len(net.layer) == 1
    with pytest.raises(PrototxtError, match=r"^x.prototxt:1:"):
        parse_text("layer { bogus: 1 }", net, filename="x.prototxt")


def test_layer_locations_and_source():
    text = """name: "n"  # layer { in a comment }
input: "data"
input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4
layer {
  name: "layer"  type: "ReLU" bottom: "data" top: "data"
}
layer { name: "b" type: "ReLU"
  bottom: "data" top: "data" }
"""
    assert layer_locations(text) == {0: 4, 1: 7}
    net, src = read_net_with_source(text)
    assert [layer.name for layer in net.layer] == ["input", "layer", "b"]
    assert src.layer_lines == [2, 4, 7] and src.layer_cols == [1, 1, 1] and src.filename == "<string>"
    assert src.where(2) == "<string>:7:1" and src.where(None) == "<string>"


def test_v1_layer_lines_follow_upgrade(shared):
    path = shared / "realdata" / "lenet_v1_2014" / "lenet_train_test.prototxt"
    net, src = read_net_with_source(path)
    text = path.read_text().splitlines()
    assert src.filename == str(path) and len(src.layer_lines) == len(net.layer)
    for layer, line in zip(net.layer, src.layer_lines):
        block = "\n".join(text[line - 1:line + 3])
        assert block.lstrip().startswith("layers") and f'"{layer.name}"' in block


@pytest.mark.parametrize("path", shared_params("realdata/*/*.prototxt", "fixtures/**/*.prototxt"))
def test_round_trip_every_prototxt(path: Path, tmp_path: Path):
    kind = caffe_pb2.SolverParameter if "solver" in path.name else caffe_pb2.NetParameter
    first = read_prototxt(path, kind)
    out = tmp_path / "copy.prototxt"
    write_prototxt(first, out)
    assert read_prototxt(out, kind) == first
    assert read_prototxt(to_text(first), kind) == first
    assert [p.name for p in tmp_path.iterdir()] == ["copy.prototxt"]   # no temporary left behind


def test_atomic_output_keeps_old_file_on_crash(tmp_path: Path):
    from neocaffe.io.files import atomic_output

    out = tmp_path / "net.prototxt"
    out.write_text('name: "old"\n')
    with pytest.raises(RuntimeError):
        with atomic_output(out) as f:
            f.write(b'name: "ne')
            raise RuntimeError("crash while writing")
    assert out.read_text() == 'name: "old"\n'
    assert [p.name for p in tmp_path.iterdir()] == ["net.prototxt"]
    write_prototxt(caffe_pb2.NetParameter(name="new"), out)
    assert out.read_text() == 'name: "new"\n'
    assert [p.name for p in tmp_path.iterdir()] == ["net.prototxt"]
