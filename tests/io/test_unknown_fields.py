"""A prototxt with several unknown fields or enum values reports all of them in one error, each as
``file:line:col`` (issue 14: a fork's prototxt names many fields we may not know)."""
from __future__ import annotations

import pytest

from neocaffe.io import PrototxtError, parse_text
from neocaffe.io.prototxt import read_net
from neocaffe.proto import caffe_pb2

TEXT = """name: "forky"
layer {
  name: "a" type: "Convolution"
  foo_param { x: 1 y { z: 2 } }
  convolution_param { num_output: 3 bogus: "a" 'b' kernel_size: 3 }
  pooling_param { pool: MAXIMUM }
  top: "a"
}
layer { name: "b" wrong: [1, 2] type: "ReLU" bottom: "a" top: "a" }
layer { name: "c" also_wrong: -inf }
"""


def test_every_unknown_field_and_value_in_one_error(tmp_path):
    path = tmp_path / "forky.prototxt"
    path.write_text(TEXT)
    with pytest.raises(PrototxtError) as info:
        read_net(str(path))
    err = info.value
    assert [(ln, col) for ln, col, _ in err.problems] == [(4, 3), (5, 37), (6, 25), (9, 19), (10, 19)]
    names = ["foo_param", "bogus", "MAXIMUM", "wrong", "also_wrong"]
    for (ln, col, msg), name in zip(err.problems, names):
        assert name in msg
        assert f"{path}:{ln}:{col}: {msg}" in str(err)
    assert str(err).startswith(f"{path}: 5 errors:")
    assert (err.line, err.column) == (4, 3)          # the first, as for a single error


def test_single_unknown_field_keeps_the_one_line_form():
    with pytest.raises(PrototxtError, match=r'^<string>:1:19: Message type "caffe.LayerParameter" has no '
                                            r'field named "nope".$'):
        parse_text('layer { name: "a" nope: 1 }', caffe_pb2.NetParameter())


def test_other_errors_end_the_list():
    text = 'layer { name: "a" nope: 1 }\nlayer { name: "b" top: }\nlayer { zz: 1 }\n'
    with pytest.raises(PrototxtError) as info:
        parse_text(text, caffe_pb2.NetParameter(), "x.prototxt")
    problems = info.value.problems
    assert len(problems) == 2 and "nope" in problems[0][2]
    assert problems[1][:2] == (2, 24) and "nope" not in problems[1][2]


def test_known_text_still_parses_exactly():
    net = parse_text(TEXT.replace("foo_param { x: 1 y { z: 2 } }", "").replace("bogus: \"a\" 'b'", "")
                     .replace("MAXIMUM", "AVE").replace("wrong: [1, 2]", "").replace("also_wrong: -inf", ""),
                     caffe_pb2.NetParameter())
    assert net.layer[0].pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert net.layer[0].convolution_param.kernel_size == [3]
