"""neocaffe.flags: the one gflags-style parser of the caffe command and the data tools."""
from __future__ import annotations

import pytest

from neocaffe.flags import Flag, FlagError, FlagHelp, parse_flags, usage


def test_scalar_flags_positionals_and_booleans():
    flags = {"gray": Flag(bool, False), "n": Flag(int, 0), "s": Flag(str, "x"), "r": Flag(float, 1.0)}
    v, pos, given = parse_flags(["a", "--gray", "-n", "3", "--s=y", "b", "-r", "0.5", "--", "-c"], flags)
    assert v == {"gray": True, "n": 3, "s": "y", "r": 0.5} and pos == ["a", "b", "-c"]
    assert given == {"gray", "n", "s", "r"}
    assert parse_flags([], flags)[2] == set()
    assert parse_flags(["--nogray"], flags)[0]["gray"] is False
    assert parse_flags(["-gray=false"], flags)[0]["gray"] is False
    assert parse_flags(["-gray=T"], flags)[0]["gray"] is True
    assert parse_flags(["-"], flags)[1] == ["-"]


@pytest.mark.parametrize("argv, message", [
    (["--bogus"], "unknown command line flag 'bogus'"),
    (["--nobogus"], "unknown command line flag 'nobogus'"),
    (["--non"], "unknown command line flag 'non'"),  # 'no' + a non-bool flag
    (["--n=x"], "illegal value 'x' specified for int32 flag 'n'"),
    (["--r=x"], "illegal value 'x' specified for double flag 'r'"),
    (["--gray=maybe"], "illegal value 'maybe' specified for bool flag 'gray'"),
    (["-n"], "flag '-n' is missing its argument"),
])
def test_errors_are_gflags_texts(argv, message):
    flags = {"gray": Flag(bool, False), "n": Flag(int, 0), "r": Flag(float, 1.0)}
    with pytest.raises(FlagError) as e:
        parse_flags(argv, flags)
    assert str(e.value) == message and not isinstance(e.value, FlagHelp)


def test_help_names():
    flags = {"n": Flag(int, 0)}
    for name in ("--help", "-helpfull", "--helpshort"):
        with pytest.raises(FlagHelp):
            parse_flags([name], flags)
    with pytest.raises(FlagError, match="unknown command line flag 'h'"):
        parse_flags(["-h"], flags)
    with pytest.raises(FlagHelp):
        parse_flags(["-h"], flags, help_names=("h", "help"))


def test_list_flags_split_or_whole_and_fresh_defaults():
    flags = {"stage": Flag(list, []), "shape": Flag(list, [], split=False)}
    v, _, given = parse_flags(["-stage", "a,b", "--stage=c", "-shape", "data=1,3", "-shape=im=2,3"], flags)
    assert v == {"stage": ["a", "b", "c"], "shape": ["data=1,3", "im=2,3"]} and given == {"stage", "shape"}
    again, _, _ = parse_flags([], flags)
    assert again == {"stage": [], "shape": []} and flags["stage"].default == []  # the default list is not shared


def test_flag_taking_a_value_when_given_alone():
    flags = {"compile": Flag(str, None, alone="default"), "n": Flag(int, 0)}
    assert parse_flags(["-compile", "x"], flags)[:2] == ({"compile": "default", "n": 0}, ["x"])
    assert parse_flags(["-compile=max"], flags)[0]["compile"] == "max"
    assert parse_flags([], flags)[0]["compile"] is None


def test_usage_lists_every_flag():
    text = usage("tool", "does things", {"gray": Flag(bool, False, "grey"), "n": Flag(int, 3, "count"),
                                         "s": Flag(str, "x", "name"), "l": Flag(list, ["a", "b"], "list")})
    assert text.startswith("tool: does things\n")
    for line in ("-gray (grey) type: bool default: false", "-n (count) type: int32 default: 3",
                 '-s (name) type: string default: "x"', '-l (list) type: string default: "a,b"'):
        assert line in text
