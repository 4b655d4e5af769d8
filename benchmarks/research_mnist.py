"""The fork's research claims, measured on real MNIST with Caffe's own LeNet recipe.

One command runs the whole harness (``python benchmarks/research_mnist.py``):

1. data: Caffe's flow, our ``convert_mnist_data`` on the MNIST IDX files (../shared/realdata/mnist_idx_pypi)
   into the train/test LMDBs;
2. baseline: BVLC's ``examples/mnist/lenet_train_test.prototxt`` + ``lenet_solver.prototxt`` (SGD, lr 0.01
   ``inv``, momentum 0.9, weight decay 5e-4, batch 64) with only the LMDB paths, ``max_iter``, snapshots,
   ``solver_mode: CPU`` and ``random_seed`` changed, trained by our ``caffe train`` in its own process;
3. each arm starts from the baseline weights:
   (a) SSL (the ``scnn`` branch's group lasso: ``breadth_decay`` on filters, ``kernel_shape_decay`` on
       filter shapes) -> ``prune`` (zero filters/channels/shapes removed) -> fine-tune;
   (b) force regularization (``force_type``/``force_decay``, ``force_mult`` on conv1/conv2) -> ``lowrank``
       -> fine-tune (``caffe train --weights``);
4. measures each resulting net against the baseline: accuracy on the 10,000 test images, per-layer filters /
   channels / ranks kept, convolution multiply-accumulates, and the CPU forward time at batch 1 and 64
   (interleaved rounds, median; one torch thread);
5. writes ``benchmarks/results/research_mnist.json``, ``docs/research_mnist.md`` and ``docs/research_mnist.png``.

Every stage is cached in ``--work`` under a key of its settings, so a rerun continues where one stopped.
``--smoke`` runs the same code on a slice of MNIST with a handful of iterations, writing into ``--work`` only
(the CI test runs it in seconds).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "pycaffe_compat"), str(REPO / "benchmarks")]
from research_mnist_configs import FORCE_CONFIGS, SSL_CONFIGS, configs  # noqa: E402,F401
MNIST = REPO / ".." / "shared" / "realdata" / "mnist_idx_pypi"
EXAMPLE = REPO / "examples" / "mnist"
CONV_LAYERS = ("conv1", "conv2")


# -- processes and caching -----------------------------------------------------------------------------
def _key(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def caffe_train(run: Path, solver: Path, weights: str | None, threads: int) -> str:
    """``caffe train --solver [--weights]`` (our CLI's main, in this process, from ``run``); returns its log
    (also run/train.log). In process: a new Python per training costs ~10-20 s on a loaded machine."""
    import contextlib

    import torch

    from neocaffe.cli import caffe as caffe_cli

    argv = ["train", f"--solver={solver.name}"] + ([f"--weights={weights}"] if weights else [])
    torch.set_num_threads(threads)
    cwd = os.getcwd()
    with open(run / "train.log", "w") as logf, contextlib.redirect_stderr(logf), contextlib.redirect_stdout(logf):
        os.chdir(run)
        try:
            rc = caffe_cli.main(argv)
        finally:
            os.chdir(cwd)
    text = (run / "train.log").read_text()
    if rc != 0:
        tail = [ln for ln in text.splitlines() if ln.strip()][-3:]
        raise RuntimeError(f"caffe train failed ({rc}) in {run}: " + " / ".join(tail))
    return text


def parse_log(text: str) -> dict[str, list]:
    """Training losses and test accuracies (iteration, value) from Caffe's log lines."""
    losses = [(int(i), float(v)) for i, v in re.findall(r"Iteration (\d+)(?: \([^)]*\))?, loss = ([-\d.eE+naif]+)", text)]
    tests, it = [], None
    for line in text.splitlines():
        m = re.search(r"Iteration (\d+), Testing net", line)
        if m:
            it = int(m.group(1))
        m = re.search(r"Test net output #\d+: accuracy = ([\d.eE+-]+)", line)
        if m and it is not None:
            tests.append((it, float(m.group(1))))
    return {"loss": losses, "accuracy": tests}


# -- nets and solvers ------------------------------------------------------------------------------------
def read_net(path: Path | str) -> Any:
    from neocaffe.io.prototxt import read_net as _read

    return _read(str(path))


def write_text(msg: Any, path: Path) -> Path:
    from neocaffe.io.prototxt import write_prototxt

    write_prototxt(msg, path)
    return path


def lenet(data: Path) -> Any:
    """BVLC's LeNet train/test net reading the LMDBs in ``data``."""
    net = read_net(EXAMPLE / "lenet_train_test.prototxt")
    for lp in net.layer:
        if lp.type == "Data":
            split = "train" if "train" in lp.data_param.source else "test"
            lp.data_param.source = str(data / f"mnist_{split}_lmdb")
    return net


def solver_param(net_path: Path, iters: int, seed: int, test_interval: int, test_iter: int, **extra: Any) -> Any:
    """BVLC's lenet_solver.prototxt with the run's net, length, seed and CPU mode (+ regularizer fields)."""
    from neocaffe.io.prototxt import read_solver

    p = read_solver(str(EXAMPLE / "lenet_solver.prototxt"))
    p.net = str(net_path.name)
    p.max_iter = iters
    p.snapshot = iters
    p.snapshot_prefix = "model"
    p.solver_mode = p.CPU
    p.random_seed = seed
    p.test_interval = test_interval
    p.test_iter[:] = [test_iter]
    p.display = max(1, min(100, iters // 10))
    for k, v in extra.items():
        setattr(p, k, v)
    return p


def train_stage(work: Path, name: str, net: Any, solver_extra: dict, weights: str | None, iters: int, seed: int,
                a: argparse.Namespace, test_interval: int | None = None) -> dict:
    """Train ``net`` (cached by its settings); returns {dir, model, log curves, seconds}. The baseline tests
    every ``--test-interval``; the arms' stages test once, at their end (``test_interval``)."""
    settings = {"net": str(net), "extra": solver_extra, "weights": weights and Path(weights).name,
                "weights_key": weights and _file_key(weights), "iters": iters, "seed": seed,
                "test_interval": test_interval or a.test_interval, "test_iter": a.test_iter}
    run = work / f"{name}-{_key(settings)}"
    done = run / "stage.json"
    if done.exists():
        return json.loads(done.read_text())
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    net_path = write_text(net, run / "train_test.prototxt")
    interval = min(test_interval or a.test_interval, iters)
    sp = solver_param(net_path, iters, seed, interval, a.test_iter, **solver_extra)
    write_text(sp, run / "solver.prototxt")
    start = time.perf_counter()
    log = caffe_train(run, run / "solver.prototxt", weights, a.threads)
    out = {"dir": str(run), "model": str(run / f"model_iter_{iters}.caffemodel"), "iters": iters, "seed": seed,
           "seconds": time.perf_counter() - start, **parse_log(log)}
    if not out["accuracy"]:
        raise RuntimeError(f"no test output in {run}/train.log")
    done.write_text(json.dumps(out))
    print(f"[research_mnist] {name}: {iters} iterations in {out['seconds']:.0f} s, "
          f"final test accuracy {out['accuracy'][-1][1]:.4f}", flush=True)
    return out


def _file_key(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()[:10]


# -- data ------------------------------------------------------------------------------------------------
def _idx_slice(src: Path, dst: Path, n: int) -> Path:
    import gzip

    raw = gzip.open(src, "rb").read()
    ndim = raw[3]
    item = 1
    for i in range(1, ndim):
        item *= int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big")
    head = bytearray(raw[:4 + 4 * ndim])
    head[4:8] = n.to_bytes(4, "big")
    dst.write_bytes(bytes(head) + raw[4 + 4 * ndim:4 + 4 * ndim + n * item])
    return dst


def prepare_data(work: Path, n_train: int | None, n_test: int | None) -> Path:
    """The MNIST LMDBs, made by our convert_mnist_data from the IDX files (all of them, or slices)."""
    from neocaffe.tools import convert_mnist_data

    data = work / f"data-{n_train or 'all'}-{n_test or 'all'}"
    if (data / "done").exists():
        return data
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        img, lab = MNIST / f"{prefix}-images.idx3-ubyte.gz", MNIST / f"{prefix}-labels.idx1-ubyte.gz"
        if n:
            img = _idx_slice(img, data / f"{prefix}-images-idx3-ubyte", n)
            lab = _idx_slice(lab, data / f"{prefix}-labels-idx1-ubyte", n)
        if convert_mnist_data.main([str(img), str(lab), str(data / f"mnist_{split}_lmdb")]) != 0:
            raise RuntimeError(f"convert_mnist_data failed on {img}")
    (data / "done").write_text("ok")
    return data


# -- the arms ----------------------------------------------------------------------------------------------
def force_net(base: Any, layers: Sequence[str]) -> Any:
    """``base`` with ``force_mult: 1`` on the weight ParamSpec of ``layers``."""
    from neocaffe.proto import caffe_pb2

    net = caffe_pb2.NetParameter()
    net.CopyFrom(base)
    for lp in net.layer:
        if lp.name in layers:
            lp.param[0].force_mult = 1
    return net


def ssl_net(base: Any, layers: Sequence[str], mults: dict | None = None) -> Any:
    """``base`` with the scnn branch's ``breadth_decay_mult``/``kernel_shape_decay_mult`` on ``layers`` (1 or mults)."""
    from neocaffe.proto import caffe_pb2

    net = caffe_pb2.NetParameter()
    net.CopyFrom(base)
    for lp in net.layer:
        if lp.name in layers:
            lp.param[0].breadth_decay_mult = 1
            lp.param[0].kernel_shape_decay_mult = 1
            for field, value in (mults or {}).get(lp.name, {}).items():
                setattr(lp.param[0], field, value)
    return net


def lowrank_ranks(net: Any, model: str, sel: Any) -> dict[str, int]:
    """The rank_config for ``sel``: given, or the 95%-energy rank of each conv layer where decomposing it
    lowers its multiply-accumulates (rank K < N*D/(D+N) for N filters of size D)."""
    if isinstance(sel, dict):
        return dict(sel)
    import numpy as np

    from neocaffe.io.weights import load_weights, weights_by_name
    from neocaffe.tools.lowrank import basis_pca

    ratio = float(sel.split(":")[1])
    stored = weights_by_name(load_weights(model))
    out = {}
    for name in CONV_LAYERS:
        w = np.asarray(stored[name].blobs[0])
        n, d = w.shape[0], int(np.prod(w.shape[1:]))
        _, _, k = basis_pca(w.reshape(n, -1), ratio=ratio)
        if k * (d + n) < n * d:
            out[name] = int(k)
    return out


def decompose(run: Path, net: Any, model: str, ranks: dict[str, int]) -> tuple[Any, str]:
    """``lowrank --rank_config`` (its Python API) into ``run``; returns (net, weights path)."""
    from neocaffe.io.weights import load_weights, save_weights
    from neocaffe.tools.lowrank import decompose_net

    if not ranks:
        return net, model
    res = decompose_net(net, load_weights(model), rank_config=ranks)
    out = run / "decomposed.caffemodel.h5"
    save_weights(out, res.weights, hdf5=True)
    return res.net, str(out)


def prune(run: Path, net: Any, model: str, threshold: float) -> tuple[Any, str, list[str]]:
    """The ``prune`` tool (its Python API): a smaller dense net without the zero filters/channels/shapes."""
    from neocaffe.io.weights import load_weights, save_weights
    from neocaffe.tools.prune import prune_net

    res = prune_net(net, load_weights(model), threshold=threshold)
    out = run / "pruned.caffemodel.h5"
    save_weights(out, res.weights, hdf5=True)
    return res.net, str(out), list(res.info)


def compressed_accuracy(cdir: Path, weights: str, test_iter: int) -> float:
    """Test accuracy of the compressed net before fine-tuning (cached in the stage folder)."""
    from research_mnist_measure import accuracy

    done = cdir / "accuracy.json"
    if not done.exists():
        done.write_text(json.dumps(accuracy(str(cdir / "train_test.prototxt"), weights, test_iter)))
    return float(json.loads(done.read_text()))


def run_arm(cfg: dict, work: Path, base_net: Any, baseline: dict, seed: int, a: argparse.Namespace) -> dict:
    """Regularize from the baseline, compress, fine-tune; returns the config's record (or its failure)."""
    rec: dict[str, Any] = {"config": cfg, "seed": seed}
    try:
        if cfg["arm"] == "force":
            extra = {"force_type": cfg["force_type"], "force_decay": cfg["force_decay"]} if cfg["force_type"] else {}
            net = force_net(base_net, CONV_LAYERS)
        else:
            extra = {"breadth_decay": cfg["breadth_decay"], "kernel_shape_decay": cfg["kernel_shape_decay"]}
            net = ssl_net(base_net, CONV_LAYERS, cfg.get("mults", {}))
        if cfg["arm"] == "force" and not cfg["force_type"]:
            reg = baseline  # the control decomposes the baseline itself
        else:
            reg = train_stage(work, f"{cfg['arm']}-reg", net, extra, baseline["model"], a.reg_iters, seed, a,
                              a.reg_iters)
        rec["regularized"] = reg
        cdir = work / f"{cfg['arm']}-compress-{_key([cfg, reg['model']])}"
        cdir.mkdir(parents=True, exist_ok=True)
        if cfg["arm"] == "force":
            ranks = lowrank_ranks(base_net, reg["model"], cfg["ranks"])
            small, weights = decompose(cdir, base_net, reg["model"], ranks)
            rec["ranks"] = ranks
        else:
            small, weights, rec["prune_info"] = prune(cdir, base_net, reg["model"], cfg["threshold"])
        write_text(small, cdir / "train_test.prototxt")
        rec["compressed_weights"] = weights
        rec["accuracy_compressed"] = compressed_accuracy(cdir, weights, a.test_iter)
        ft_lr, ft_iters = cfg.get("ft_lr", a.ft_lr), cfg.get("ft_iters", a.ft_iters)
        rec["ft"] = {"base_lr": ft_lr, "iters": ft_iters}  # base_lr None: the solver's own (0.01)
        ft_extra = {} if ft_lr is None else {"base_lr": ft_lr}
        rec["tuned"] = train_stage(work, f"{cfg['arm']}-ft", small, ft_extra, weights, ft_iters, seed, a, ft_iters)
        rec["net"] = str(Path(rec["tuned"]["dir"]) / "train_test.prototxt")
        rec["model"] = rec["tuned"]["model"]
        rec["compressed_net"] = str(cdir / "train_test.prototxt")
    except Exception as e:  # noqa: BLE001 - a failed configuration is reported, not hidden
        rec["error"] = " ".join(f"{type(e).__name__}: {e}".split())[-1500:]
        print(f"[research_mnist] {cfg['name']}: FAILED: {rec['error'][:300]}", flush=True)
    return rec


# -- command line ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(REPO / "runs" / "research_mnist"), help="cache of every stage")
    ap.add_argument("--base-iters", type=int, default=10000, help="baseline iterations (Caffe's recipe: 10000)")
    ap.add_argument("--reg-iters", type=int, default=1500, help="regularized iterations from the baseline")
    ap.add_argument("--ft-iters", type=int, default=1500, help="fine-tuning iterations after compression")
    ap.add_argument("--seeds", default="1701", help="comma-separated seeds (each seed: a baseline)")
    ap.add_argument("--arm-seeds", default=None, help="the seeds whose baselines every arm starts from "
                    "(default: every seed); the other seeds' baselines measure the seed-to-seed noise")
    ap.add_argument("--replicate", action="append", default=[], metavar="SEED=REGEX",
                    help="also run, from SEED's baseline (SEED among --seeds), the configurations whose name matches "
                    "REGEX (re.search); repeatable")
    ap.add_argument("--ft-lr", type=float, default=0.001,
                    help="base_lr of the fine-tuning after compression (the solver's own: 0.01; 'inv' from iteration 0)")
    ap.add_argument("--test-interval", type=int, default=500)
    ap.add_argument("--test-iter", type=int, default=100, help="test batches of 100 (100: all 10,000 images)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training and for timing")
    ap.add_argument("--arms", default="force,ssl", help="which arms run")
    ap.add_argument("--only", default="", metavar="REGEX", help="only the configurations whose name matches")
    ap.add_argument("--only-baseline", action="store_true")
    ap.add_argument("--timing-rounds", type=int, default=40)
    ap.add_argument("--timing-seconds", type=float, default=0.1, help="time of one net's forwards per round")
    ap.add_argument("--smoke", action="store_true", help="a slice of MNIST and a few iterations (CI)")
    ap.add_argument("--out-json", default=str(REPO / "benchmarks" / "results" / "research_mnist.json"))
    ap.add_argument("--out-doc", default=str(REPO / "docs" / "research_mnist.md"))
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    os.environ.setdefault("NEOCAFFE_DATA_WORKERS", "0")  # data read in this process: the cores are shared
    n_train = n_test = None
    if a.smoke:
        a.base_iters, a.reg_iters, a.ft_iters, a.test_interval, a.test_iter = 12, 6, 6, 12, 2
        a.timing_rounds, a.timing_seconds = 2, 0.01
        n_train, n_test = 256, 200
        a.out_json = str(Path(a.work) / "research_mnist.json")
        a.out_doc = str(Path(a.work) / "research_mnist.md")
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = prepare_data(work, n_train, n_test)
    base_net = lenet(data)
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    baselines = {s: train_stage(work, "baseline", base_net, {}, None, a.base_iters, s, a) for s in seeds}
    if a.only_baseline:
        return 0
    arms = [c for c in configs(a.smoke) if c["arm"] in a.arms.split(",") and re.search(a.only, c["name"])]
    arm_seeds = [int(s) for s in (a.arm_seeds or a.seeds).split(",") if s.strip()]
    missing = sorted(set(arm_seeds) - set(seeds))
    if missing:
        raise SystemExit(f"--arm-seeds {missing} are not among --seeds {seeds}: an arm needs its seed's baseline")
    plan = [(s, c) for s in arm_seeds for c in arms]
    for rep in a.replicate:
        seed_text, _, pattern = rep.partition("=")
        if int(seed_text) not in seeds:
            raise SystemExit(f"--replicate {rep!r}: seed {seed_text} is not among --seeds {seeds}")
        plan += [(int(seed_text), c) for c in arms if re.search(pattern, c["name"]) and (int(seed_text), c) not in plan]
    records = [run_arm(c, work, base_net, baselines[s], s, a) for s, c in plan]
    from research_mnist_measure import measure_all
    from research_mnist_report import write_report

    results = measure_all(work, base_net, baselines, records, a)
    results["total_seconds"] = time.perf_counter() - started
    write_report(results, Path(a.out_json), Path(a.out_doc), a, list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
