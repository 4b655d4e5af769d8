"""Bounded fuzzing of every file kind neocaffe reads (issue 13, item 7): seeded mutations of small
valid files (``tests/fuzz``), each loaded as a run loads it, in child processes with a per-case
timeout and a memory limit. No case may crash the reader or hang, and every rejection must be a
neocaffe error naming the file. The larger run is ``benchmarks/fuzz_inputs.py``."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.fuzz.runner import make_cases, run_cases, seed_cases, summarize
from tests.fuzz.seeds import KINDS, make_seeds

PER_KIND = 50  # 650 inputs: about 12 s on two shared cores


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_seeds(tmp_path_factory.mktemp("fuzz") / "seeds")


def test_runner_survives_a_crash_a_hang_and_names_foreign_errors(tmp_path: Path) -> None:
    """The harness itself: a child killed by SIGSEGV and one that never answers are reported on
    their own case, and the cases after them still run."""
    cases = [{"kind": k, "path": str(tmp_path / k), "mutated": str(tmp_path / k), "seed": "-", "op": "-"}
             for k in ("selftest_crash", "selftest_raise", "selftest_hang", "selftest_raise")]
    start = time.monotonic()
    results = run_cases(cases, tmp_path, case_timeout=2.0)
    assert time.monotonic() - start < 30
    s = summarize(cases, results)
    assert [f["verdict"] for f in s["findings"]] == ["crash", "foreign", "hang", "foreign"]
    stopped = run_cases(cases, tmp_path, case_timeout=2.0, max_failures=1)  # fails fast
    assert [r.get("not_run", False) for r in stopped] == [False, True, True, True]
    assert results[0]["status"] == -11  # SIGSEGV
    assert s["total"]["inputs"] == 4


def test_every_seed_loads(seeds: dict, tmp_path: Path) -> None:
    """Unmutated, every seed loads: a rejection below is the mutation's doing, not the harness's."""
    cases = seed_cases(seeds, tmp_path)
    assert {c["kind"] for c in cases} == set(KINDS)
    s = summarize(cases, run_cases(cases, tmp_path))
    assert s["total"]["accepted"] == len(cases), s["findings"]


def test_mutated_inputs_are_refused_cleanly(seeds: dict, tmp_path: Path) -> None:
    cases = make_cases(seeds, tmp_path, PER_KIND, seed=13)
    s = summarize(cases, run_cases(cases, tmp_path, case_timeout=15.0, max_failures=3))
    total = s["total"]
    assert total["inputs"] == PER_KIND * len(KINDS)
    bad = {k: total[k] for k in ("crash", "hang", "not_run", "foreign", "unnamed")}
    assert bad == dict.fromkeys(bad, 0), json.dumps(s["findings"][:12], indent=1)
    for kind, counts in s["per_kind"].items():  # the mutations reach the readers' refusals
        assert counts["rejected"] > 0, (kind, counts)


def test_net_wiring_errors_name_the_line(tmp_path: Path) -> None:
    """Found by the fuzzer: an unknown bottom or a top written twice named neither file nor line."""
    from neocaffe.graph.net import Net, NetError
    from neocaffe.io import read_net_with_source
    from tests.fuzz.seeds import NET_BRANCHES

    p = tmp_path / "branches.prototxt"
    for edit, expected in [(('bottom: "s1" top: "up"', 'bottom: "s9" top: "up"'), ":8:1: Unknown bottom blob 's9'"),
                           (('top: "pw"', 'top: "sum"'), ":12:1: Top blob 'sum' produced by multiple sources")]:
        p.write_text(NET_BRANCHES.replace(*edit))
        param, source = read_net_with_source(str(p))
        with pytest.raises(NetError) as e:
            Net(param, source=source)
        assert str(e.value).startswith(f"{p}{expected}")


@pytest.mark.parametrize("body, expected", [
    ('lr_policy: "bogus"', "Unknown learning rate policy: 'bogus'"),
    ('lr_policy: "fixed" type: "Foo"', "Unknown solver type: 'Foo'"),
    ('lr_policy: "fixed" type: "AdaGrad" momentum: 0.9', "Momentum cannot be used with AdaGrad"),
])
def test_solver_parameter_errors_name_the_solver_file(tmp_path: Path, body: str, expected: str) -> None:
    """Found by the fuzzer: the solver's own parameter errors did not say which file was wrong."""
    from neocaffe.solver.solver import Solver
    from tests.fuzz.seeds import NET

    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net}" base_lr: 0.1 solver_mode: CPU {body}')
    with pytest.raises(ValueError) as e:
        Solver(str(solver))
    assert str(e.value).startswith(f"{solver}: {expected}")


@pytest.mark.parametrize("field", ["net", "train_net"])
def test_missing_net_file_names_the_solver(tmp_path: Path, field: str) -> None:
    from neocaffe.io import CaffeFileNotFoundError
    from neocaffe.solver.solver import Solver

    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'{field}: "{tmp_path}/absent.prototxt" base_lr: 0.1 lr_policy: "fixed" solver_mode: CPU')
    with pytest.raises(CaffeFileNotFoundError) as e:
        Solver(str(solver))
    assert str(e.value) == f"{tmp_path}/absent.prototxt: no such file (the {field} of {solver})"


def test_hdf5_list_entry_naming_a_parent_folder_keeps_the_list_name(tmp_path: Path) -> None:
    """Found by the fuzzer: an HDF5Data list cut inside its second line (the entry became the
    folder the list lives under, with a trailing slash) gave an error whose list path read
    ``tmp//sub/list.txt`` (the absolute entry name replaced by its listed form everywhere)."""
    from neocaffe.data.batches import HDF5Batches
    from neocaffe.data.sources import DataSourceError

    sub = tmp_path / "sub"
    sub.mkdir()
    listing = sub / "list.txt"
    entry = f"{tmp_path}/"
    with pytest.raises(DataSourceError) as e:
        HDF5Batches([(str(Path(entry).resolve()), f"{listing}:2", entry)], ["data"], 2, False, 0)
    assert f"{listing}:2: " in str(e.value) and f"'{entry}'" in str(e.value), str(e.value)


@pytest.mark.parametrize("damage", ["rng", "missing_iter", "missing_size"])
def test_damaged_resume_companion_is_a_restore_error_naming_it(tmp_path: Path, damage: str) -> None:
    """Found by the fuzzer: a .resume.pt whose random state torch refuses ('Invalid mt19937 state')
    or that lacks an entry raised torch's RuntimeError or a KeyError, naming no file."""
    import torch

    from neocaffe.solver.snapshot import RestoreError
    from neocaffe.solver.solver import Solver
    from tests.fuzz.seeds import NET, SOLVERS

    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    (tmp_path / "snap").mkdir()
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(SOLVERS["sgd"].format(net=net, snap=tmp_path / "snap"))
    s = Solver(str(solver_file))
    s.step(1)
    _, state = s.snapshot()
    s.close()
    companion = f"{state}.resume.pt"
    payload = torch.load(companion, weights_only=True)
    if damage == "rng":
        payload["rng"]["cpu"] = torch.zeros(7, dtype=torch.uint8)
    elif damage == "missing_iter":
        del payload["iter"]
    else:
        del payload["solverstate_bytes"]
    torch.save(payload, companion)
    s = Solver(str(solver_file))
    with pytest.raises(RestoreError, match=f"^{companion}: (cannot restore this resume companion|a resume companion) "
                                           f"of {state}"):
        s.restore(state)
    s.close()


def test_caffe_train_names_the_solver_file_in_its_errors(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """``caffe train -solver`` passes the SolverParameter it read (with its command-line overrides):
    its errors name the solver file as ``Solver(path)``'s do."""
    from neocaffe.cli.caffe import main
    from tests.fuzz.seeds import NET

    (tmp_path / "net.prototxt").write_text(NET)
    solver = tmp_path / "s.prototxt"
    for body, expected in [('net: "{d}/net.prototxt" lr_policy: "step"', "{s}: lr_policy 'step' needs stepsize > 0"),
                           ('net: "{d}/absent.prototxt" lr_policy: "fixed"',
                            "{d}/absent.prototxt: no such file (the net of {s})")]:
        solver.write_text(body.format(d=tmp_path) + " base_lr: 0.1 max_iter: 1 solver_mode: CPU")
        capfd.readouterr()
        assert main(["train", "-solver", str(solver)]) != 0
        assert expected.format(d=tmp_path, s=solver) in capfd.readouterr().err


def test_solver_net_path_with_a_colon_is_a_file_name(tmp_path: Path) -> None:
    """Found by the fuzzer (a bit flip turned a '.' of the net path into ':'): the solver's ``net``
    field went through the str sniffing that takes any text with ':' for prototxt text, so the
    error was '<string>:1:1: Expected identifier'; a real file name with ':' could not be trained."""
    from neocaffe.solver.solver import Solver
    from tests.fuzz.seeds import NET

    folder = tmp_path / "run:1"
    folder.mkdir()
    (folder / "net.prototxt").write_text(NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{folder}/net.prototxt" base_lr: 0.1 lr_policy: "fixed" solver_mode: CPU')
    s = Solver(str(solver))
    assert s.net.source == f"{folder}/net.prototxt"
    s.close()


@pytest.mark.parametrize("filler, expected", [
    ('type: "uniform" min: 2 max: 1', "uniform filler needs finite min <= max; received min = 2.0, max = 1.0"),
    ('type: "gaussian" std: -1', "gaussian filler needs a finite mean and std >= 0; received mean = 0.0, std = -1.0"),
    ('type: "gaussian" std: inf', "std = inf"),
])
def test_bad_filler_parameters_name_the_layer_line(tmp_path: Path, filler: str, expected: str) -> None:
    """Found by the fuzzer: torch's 'uniform_ expects to return a [from, to) range' and 'normal
    expects std >= 0.0' named neither file nor layer (Caffe CHECKs both)."""
    from neocaffe.graph.net import Net, NetError
    from neocaffe.io import read_net_with_source
    from tests.fuzz.seeds import NET

    p = tmp_path / "net.prototxt"
    p.write_text(NET.replace('weight_filler { type: "gaussian" std: 0.1 }', f"weight_filler {{ {filler} }}"))
    param, source = read_net_with_source(str(p))
    with pytest.raises(NetError) as e:
        Net(param, source=source)
    assert str(e.value).startswith(f"{p}:14:1: layer 'ip1' (InnerProduct): ") and expected in str(e.value)


def test_a_file_name_with_a_colon_is_read_as_a_file_everywhere(tmp_path: Path) -> None:
    """The root of the solver finding above: every reader given a str took one with ':' or '{' for
    prototxt text (``caffe.Net('run:1/net.prototxt')``, ``caffe test -model``, the tools). A str
    naming an existing file is now a path; text still parses."""
    import caffe
    from neocaffe.io import read_net, read_net_with_source, read_solver
    from tests.fuzz.seeds import NET

    folder = tmp_path / "run:1 {a}"
    folder.mkdir()
    net_file = folder / "net.prototxt"
    net_file.write_text(NET)
    param, source = read_net_with_source(str(net_file))
    assert source.filename == str(net_file) and param.name == "fuzz"
    assert caffe.Net(str(net_file), caffe.TEST).blobs["data"].data.shape == (2, 3, 8, 8)
    assert read_net('name: "text"').name == "text"
    assert read_solver("base_lr: 0.5").base_lr == 0.5


def test_image_list_names_that_are_not_utf8(tmp_path: Path) -> None:
    """Found by the fuzzer: an ImageData list line with bytes that are not UTF-8 (read with
    surrogateescape) made cv2.imread die with SIGSEGV. Such a file now loads (Python opens it,
    OpenCV decodes it) and a missing one is the usual error naming the list line. Read in a child."""
    import os
    import shutil

    from tests.fuzz.runner import judge
    from tests.fuzz.seeds import image_list

    listing = image_list(tmp_path / "images")
    odd = os.fsencode(listing.parent) + b"/caf\xe9.png"
    shutil.copy(listing.parent / "img0.png", odd)
    raw = listing.read_bytes() + odd + b" 1\n"
    cases = []  # the loadable list, then three with a bad line 6, read in one child
    for i, bad in enumerate((b"", b"/no/such/\xff\xfe.png 2\n", odd + b"\x00\xff 2\n", odd + b"\x00x 2\n")):  # NUL: no file
        path = listing.with_name(f"list{i}.txt")
        path.write_bytes(raw + bad)
        cases.append({"kind": "imagedata", "path": str(path), "mutated": str(path), "seed": "-", "op": "-"})
    loaded, *refused = run_cases(cases, tmp_path)
    assert loaded.get("ok"), loaded
    for case, result in zip(cases[1:], refused):
        assert judge(case, result) == "rejected" and ":6: could not load image" in result["msg"], result


@pytest.mark.parametrize("edit, expected", [
    (("pool: MAX kernel_size: 3 stride: 2", "pool: MAX kernel_size: 3 stride: 2147483648"),
     ":11:1: layer 'pool1' (Pooling): stride must be positive and at most 2147483647"),
    (("kernel_size: 3 pad: 1 stride: 1", "kernel_size: 3 pad: 1 stride: 4294967295"),
     ":4:1: layer 'conv1' (Convolution): stride must be at most 2147483647"),
])
def test_strides_past_int_range_name_the_layer_line(tmp_path: Path, edit: tuple, expected: str) -> None:
    """Found by the fuzzer: a pooling stride of 2^31 (uint32 in the schema, an int in Caffe and in
    torch) built, then failed in forward with torch's 'cannot be converted to type int'."""
    from neocaffe.graph.net import Net, NetError
    from neocaffe.io import read_net_with_source
    from tests.fuzz.seeds import NET

    p = tmp_path / "net.prototxt"
    p.write_text(NET.replace(*edit))
    param, source = read_net_with_source(str(p))
    with pytest.raises(NetError) as e:
        Net(param, source=source)
    assert str(e.value).startswith(f"{p}{expected}"), str(e.value)


def test_a_mean_file_with_an_empty_axis_names_the_file(tmp_path: Path) -> None:
    """Found by the fuzzer: a mean .binaryproto whose blob had a zero height (1 x 40 x 0 x 48) went
    on to torch, whose 'negative strides' error named no file."""
    import numpy as np

    from neocaffe.data.datum import DatumError
    from neocaffe.data.transformer import load_mean_file
    from neocaffe.io import write_blobproto

    p = tmp_path / "mean.binaryproto"
    write_blobproto(p, np.zeros((1, 40, 0, 48), np.float32), legacy=True)
    with pytest.raises(DatumError, match=f"^{p}: mean file holds a blob of shape \\(1, 40, 0, 48\\)"):
        load_mean_file(str(p))
