"""caffe-jacinto-models' CIFAR-10 pipeline (mathmanu/caffe-jacinto-models @ 3aadc16, ``caffe-0.17``) on neocaffe.

``scripts/train_cifar10_classification.sh`` calls ``python ./models/image_classification.py`` once per stage
(initial, l1reg, sparse, test, test_quantize); that generator writes each stage's train/test/deploy prototxts, solver
and ``run.sh`` through ``caffe.net_spec``. The files are copies (tests/data/jacinto_models/README.md); the
generator runs from a temporary copy with the two Python-3 edits that README lists. The full five-stage run on tiny
data (64 iterations a training stage: about 70 s on 2 CPU cores) stays out of the suite; the initial stage runs here.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
from google.protobuf import text_format

from neocaffe.data.datum import array_to_datum
from neocaffe.proto import caffe_pb2
from tests.conftest import REPO

DATA = REPO / "tests" / "data" / "jacinto_models"
RELEASED = DATA / "trained" / "cifar10_jacintonet11v2"
STAGES = ("initial", "l1reg", "sparse", "test", "test_quantize")
STAMP = "2017-08-14_18-39-46"  # the released run's DATE_TIME: its paths appear in every prototxt


def _scripts(tmp_path: Path) -> Path:
    """A copy of the fork's scripts/ with model_libs.py made Python 3 (the README's two edits)."""
    dst = tmp_path / "scripts"
    shutil.copytree(DATA / "scripts", dst)
    libs = dst / "models" / "model_libs.py"
    text = libs.read_text()
    assert "  assert len > 0\n" in text and "from caffe.proto import caffe_pb2\n" in text
    text = text.replace("  assert len > 0\n", "  assert num > 0\n", 1).replace(
        "from caffe.proto import caffe_pb2\n",
        "from caffe.proto import caffe_pb2\ntry:\n  xrange\nexcept NameError:\n  xrange = range\n", 1)
    libs.write_text(text)
    (dst / "training").mkdir()
    return dst


def _env(tmp_path: Path, caffe_root: Path) -> dict[str, str]:
    """As the fork's README sets it up: CAFFE_ROOT, PYTHONPATH=.:$CAFFE_ROOT/python; ``python`` is this interpreter
    and ``date`` prints the released run's stamp."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "date").write_text(f"#!/bin/sh\necho {STAMP}\n")
    (bin_dir / "date").chmod(0o755)
    return {**os.environ, "CAFFE_ROOT": str(caffe_root), "PYTHONPATH": f".:{REPO / 'python'}", "PYTHON": sys.executable,
            "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _lmdb(path: Path, n: int) -> None:
    rng = np.random.default_rng(n)
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(n):
            img = (rng.integers(0, 60, (3, 32, 32)) + (i % 10) * 19).astype(np.uint8)
            txn.put(b"%08d" % i, array_to_datum(img, i % 10).SerializeToString())
    env.close()


def _parsed(path: Path, message: type) -> str:
    msg = message()
    text_format.Merge(path.read_text(), msg)
    return text_format.MessageToString(msg)


def test_the_unchanged_script_writes_the_released_prototxts(tmp_path):
    # The shell script as released (gpus "0,1,2", 64000 iterations); its final loop runs every stage's run.sh, here
    # against a CAFFE_ROOT whose build/tools/caffe only prints its arguments.
    scripts = _scripts(tmp_path)
    root = tmp_path / "root"
    (root / "build" / "tools").mkdir(parents=True)
    (root / "build" / "tools" / "caffe").write_text('#!/bin/sh\necho "caffe-args: $*"\n')
    (root / "build" / "tools" / "caffe").chmod(0o755)
    run = subprocess.run(["bash", "train_cifar10_classification.sh"], cwd=scripts, env=_env(tmp_path, root),
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0 and "Traceback" not in run.stdout + run.stderr, run.stdout + run.stderr
    out = scripts / "training" / f"cifar10_jacintonet11v2_{STAMP}"
    for stage in STAGES:
        for name in ("train", "test", "deploy", "solver"):
            message = caffe_pb2.SolverParameter if name == "solver" else caffe_pb2.NetParameter
            assert _parsed(out / stage / f"{name}.prototxt", message) == \
                _parsed(RELEASED / stage / f"{name}.prototxt", message), (stage, name)
    calls = [line for line in run.stdout.splitlines() if line.startswith("caffe-args:")]
    assert len(calls) == 5 and calls[0].startswith("caffe-args: train") and calls[3].startswith("caffe-args: test")
    assert f"--weights={out.relative_to(scripts)}/sparse/cifar10_jacintonet11v2_iter_64000.caffemodel" in calls[4]


def test_initial_stage_runs_on_neocaffe_and_its_nets_build(tmp_path, monkeypatch):
    import caffe

    scripts = _scripts(tmp_path)
    (scripts / "data").mkdir(exist_ok=True)
    _lmdb(scripts / "data" / "cifar10_train_lmdb", 16)
    _lmdb(scripts / "data" / "cifar10_test_lmdb", 8)
    env = _env(tmp_path, REPO)
    stage = scripts / "training" / "tiny" / "initial"
    stage.mkdir(parents=True)
    # the script's initial stage, with the knobs a user sets for a CPU try: gpus "", iterations, batch, test images
    config = ("{'config_name':'training/tiny/initial','model_name':'jacintonet11v2','dataset':'cifar10','gpus':'',"
              "'stride_list':[1,1,2,1,2],'pretrain_model':None,'num_output':10,'image_width':32,'image_height':32,"
              "'crop_size':32,'accum_batch_size':4,'batch_size':4,'train_data':'./data/cifar10_train_lmdb',"
              "'test_data':'./data/cifar10_test_lmdb','num_test_image':8,'test_batch_size':4}")
    solver = "{'type':'SGD','base_lr':0.1,'max_iter':2,'test_interval':2}"
    gen = subprocess.run([sys.executable, "./models/image_classification.py", f"--config_param={config}",
                          f"--solver_param={solver}"], cwd=scripts, env=env, capture_output=True, text=True,
                         timeout=120)
    assert gen.returncode == 0, gen.stdout + gen.stderr
    run_sh = (stage / "run.sh").read_text()
    assert run_sh.startswith(f"{REPO}/build/tools/caffe train") and "--gpu" not in run_sh
    assert "solver_mode: CPU" in (stage / "solver.prototxt").read_text()
    train = subprocess.run(["bash", "training/tiny/initial/run.sh"], cwd=scripts, env=env, capture_output=True,
                           text=True, timeout=180)
    log = (stage / "run.log").read_text()
    assert train.returncode == 0 and "Optimization Done." in log, train.stdout + train.stderr + log
    assert "Test net output #0: accuracy/top1 = " in log
    weights = stage / "cifar10_jacintonet11v2_iter_2.caffemodel"
    assert weights.exists()

    monkeypatch.chdir(scripts)  # the data sources are relative to scripts/
    deploy = caffe.Net(str(stage / "deploy.prototxt"), str(weights), caffe.TEST)
    deploy.blobs["data"].data[...] = np.random.default_rng(0).uniform(0, 255, (1, 3, 32, 32))
    assert deploy.forward()["prob"].shape == (1, 10)
    # the released test_quantize net (``quantize: true`` prepended by the script) with these weights
    quant = caffe.Net(str(RELEASED / "test_quantize" / "test.prototxt"), str(weights), caffe.TEST)
    for _ in range(2):
        out = quant.forward()
    assert 0.0 <= float(out["accuracy/top1"]) <= 1.0 and np.isfinite(float(out["loss"]))
