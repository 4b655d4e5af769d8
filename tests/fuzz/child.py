"""The child side of the fuzz runner: ``python -m tests.fuzz.child CASES.json START`` loads each
case from START on, as a user's run would, and prints one ``@@fuzz {json}`` line when it starts a
case and one with its outcome: ``ok``, or the error's type, module and message. The parent
(``tests.fuzz.runner``) judges them and detects deaths and hangs."""
from __future__ import annotations

import json
import logging
import os
import resource
import sys
from typing import Any

MARK = "@@fuzz "

DATA_NET = """\
layer {{ name: "data" type: "{type}" top: "data" top: "label"
  {param} {{ source: "{source}" batch_size: 4 {backend} }}
  {transform} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: 5 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "quiet" type: "Silence" bottom: "label" }}
"""
# the labels go to a Silence layer: a damaged label value is data, not a file a reader must refuse


def _data_net(source: str, *, backend: str | None = None, mean_file: str | None = None) -> Any:
    """A TRAIN net reading ``source`` through a Data (``backend`` set) or HDF5Data layer."""
    from neocaffe.graph.net import Net
    from neocaffe.io import parse_text
    from neocaffe.layers.base import TRAIN
    from neocaffe.proto import caffe_pb2

    if backend is not None:
        transform = 'transform_param { scale: 0.0039 mirror: true crop_size: 6 %s }' % (
            f'mean_file: "{mean_file}"' if mean_file else "mean_value: 100")
        text = DATA_NET.format(type="Data", param="data_param", source=source, transform=transform,
                               backend=f"backend: {backend.upper()}")
    else:
        text = DATA_NET.format(type="HDF5Data", param="hdf5_data_param", source=source, backend="shuffle: true",
                               transform="")
    return Net(parse_text(text, caffe_pb2.NetParameter(), "<fuzz data net>"), TRAIN)


def _image_net(source: str, dense: bool = False) -> Any:
    """A TRAIN net reading the ImageData list ``source`` (resized to 8 x 8, cropped, mirrored, shuffled),
    or with ``dense`` the DenseImageData pairs list (names relative to its folder)."""
    from neocaffe.graph.net import Net
    from neocaffe.io import parse_text
    from neocaffe.layers.base import TRAIN
    from neocaffe.proto import caffe_pb2

    if dense:
        text = DATA_NET.format(type="DenseImageData", param="dense_image_data_param", source=source,
                               backend=f'root_folder: "{os.path.dirname(source)}/" new_height: 8 new_width: 8 '
                                       "shuffle: true", transform="transform_param { scale: 0.0039 }")
    else:
        text = DATA_NET.format(type="ImageData", param="image_data_param", source=source,
                               backend="new_height: 8 new_width: 8 shuffle: true",
                               transform="transform_param { crop_size: 6 mirror: true scale: 0.0039 }")
    return Net(parse_text(text, caffe_pb2.NetParameter(), "<fuzz data net>"), TRAIN)


def _forward(net: Any, times: int = 1) -> None:
    try:
        for _ in range(times):
            net.forward()
    finally:
        net.close()


def _small(p: Any) -> bool:
    """Whether one step of solver ``p`` is little work: a valid solver may ask for 2^31 gradient
    accumulations or test batches (a long run, not a hang of a reader); those are built, not stepped."""
    return p.iter_size <= 4 and all(t <= 4 for t in p.test_iter)


def load(case: dict) -> None:
    """Read ``case['path']`` completely, as neocaffe does when it trains or tests with it."""
    kind, path, aux = case["kind"], case["path"], case.get("aux", {})
    if kind == "net":
        from neocaffe.graph.net import Net
        from neocaffe.io import read_net_with_source
        from neocaffe.layers.base import TEST

        param, source = read_net_with_source(path)
        _forward(Net(param, TEST, source=source))
    elif kind == "solver":
        from neocaffe.solver.solver import Solver

        s = Solver(path)
        try:
            if _small(s.param):
                s.step(1)
        finally:
            s.close()
    elif kind in ("caffemodel", "caffemodel_h5"):
        from neocaffe.graph.net import Net
        from neocaffe.io import read_net_with_source
        from neocaffe.layers.base import TEST

        if "net" not in aux:  # a real Caffe file for another net: read it whole
            from neocaffe.io import load_weights

            load_weights(path)
            return
        param, source = read_net_with_source(aux["net"])
        net = Net(param, TEST, source=source)
        net.copy_from(path)
        _forward(net)
    elif kind in ("solverstate", "solverstate_h5", "resume"):
        from neocaffe.solver.solver import Solver

        if "solver" not in aux:  # a real Caffe file for another net: read it whole
            from neocaffe.io import read_solverstate

            read_solverstate(path)
            return
        s = Solver(aux["solver"])
        try:
            s.restore(path)
            if _small(s.param):
                s.step(1)
        finally:
            s.close()
    elif kind == "binaryproto":
        _forward(_data_net(aux["source"], backend="lmdb", mean_file=path), 2)
    elif kind in ("lmdb", "leveldb"):
        _forward(_data_net(path, backend=kind), 3)
    elif kind == "hdf5data":
        _forward(_data_net(path), 4)
    elif kind == "imagedata":
        _forward(_image_net(path), 3)
    elif kind == "denseimage":
        _forward(_image_net(path, dense=True), 3)
    elif kind == "selftest_crash":
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "selftest_hang":
        import time

        time.sleep(3600)
    elif kind == "selftest_raise":
        raise KeyError(path)
    else:
        raise SystemExit(f"unknown fuzz kind {kind!r}")


def _report(record: dict) -> None:
    sys.stdout.write(MARK + json.dumps(record) + "\n")
    sys.stdout.flush()


def _address_space() -> int:
    """This process's mapped bytes (VmSize), 0 where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) << 10
    except OSError:
        pass
    return 0


def main(cases_file: str, start: int, memory_mb: int) -> None:
    logging.disable(logging.WARNING)
    cases = json.loads(open(cases_file).read())
    if any(not c["kind"].startswith("selftest") for c in cases[start:]):
        import h5py  # noqa: F401  (mapped before the limit: a CUDA build of torch maps gigabytes of libraries)
        import torch

        torch.set_num_threads(1)
    if memory_mb > 0:  # a huge allocation becomes an error, not a swapping machine
        limit = _address_space() + (memory_mb << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _report({"ready": True})
    for i in range(start, len(cases)):
        _report({"i": i, "start": True})
        try:
            load(cases[i])
            out: dict = {"i": i, "ok": True}
        except Exception as err:  # every failure is recorded; the parent judges it
            out = {"i": i, "ok": False, "type": type(err).__name__, "module": type(err).__module__,
                   "msg": str(err)[:2000]}
        _report(out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
