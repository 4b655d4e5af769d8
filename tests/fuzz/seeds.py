"""Small valid files of every kind neocaffe reads, written with neocaffe's own writers into one
folder: net and solver prototxts (current, V1 and old-enum forms), .caffemodel[.h5], .binaryproto
means, .solverstate[.h5] snapshots and their .resume.pt companions, LMDB and LevelDB datum
databases, an HDF5Data list with its .h5 files and an ImageData list with its PNG/JPEG images, a
DenseImageData list of image/label pairs. ``make_seeds`` returns kind -> seeds;
``Seed.files`` are the files a mutation may change."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NET = """\
name: "fuzz"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "drop1" type: "Dropout" bottom: "pool1" top: "pool1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip1" bottom: "label" top: "acc" include { phase: TEST } }
"""

NET_V1 = """\
name: "fuzz_v1"
input: "data"
input_dim: 1 input_dim: 2 input_dim: 6 input_dim: 6
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 2 kernel_size: 3 group: 2 weight_filler { type: "gaussian" std: 0.01 } } }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layers { name: "lrn" type: LRN bottom: "pool" top: "lrn" lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 } }
layers { name: "prob" type: SOFTMAX bottom: "lrn" top: "prob" }
"""

NET_BRANCHES = """\
name: "fuzz_branches"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
layer { name: "c1" type: "Convolution" bottom: "x" top: "c1"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "msra" } } }
layer { name: "sum" type: "Eltwise" bottom: "c1" bottom: "x" top: "sum" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "x" top: "cat" concat_param { axis: 1 } }
layer { name: "sl" type: "Slice" bottom: "cat" top: "s0" top: "s1" slice_param { axis: 1 slice_point: 1 } }
layer { name: "up" type: "Deconvolution" bottom: "s1" top: "up"
  convolution_param { num_output: 1 kernel_size: 2 stride: 2 bias_term: false weight_filler { type: "bilinear" } } }
layer { name: "r" type: "Reshape" bottom: "up" top: "r" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "sig" type: "Sigmoid" bottom: "r" top: "r" }
layer { name: "pw" type: "Power" bottom: "s0" top: "pw" power_param { power: 2 scale: 0.5 shift: 1 } }
"""

SOLVERS = {
    "sgd": """\
        net: "{net}"
        base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005
        lr_policy: "step" gamma: 0.5 stepsize: 2
        max_iter: 4 display: 1 average_loss: 2 snapshot: 0 snapshot_prefix: "{snap}/sgd"
        solver_mode: CPU random_seed: 7
        """,
    "adam": """\
        net: "{net}"
        test_iter: 1 test_interval: 2 test_initialization: false
        type: "Adam" base_lr: 0.001 momentum: 0.9 momentum2: 0.999 delta: 1e-8
        lr_policy: "fixed" max_iter: 4 display: 2
        snapshot: 0 snapshot_format: HDF5 snapshot_prefix: "{snap}/adam"
        solver_mode: CPU random_seed: 3
        """,
    "nesterov_v1": """\
        train_net: "{net}"
        solver_type: NESTEROV base_lr: 0.1 momentum: 0.5 regularization_type: "L1" weight_decay: 0.001
        lr_policy: "multistep" gamma: 0.1 stepvalue: 1 stepvalue: 3 clip_gradients: 10 iter_size: 2
        max_iter: 4 snapshot_prefix: "{snap}/nesterov"
        """,
}


@dataclass
class Seed:
    kind: str
    name: str
    path: Path  # what the loader opens (a file, a database folder, an HDF5Data list)
    files: list[Path]  # what a mutation may change
    text: bool = False
    aux: dict[str, str] = field(default_factory=dict)

    @property
    def message(self) -> str | None:
        """The caffe_pb2 message ``path`` holds, for schema-aware edits (None: not a protobuf)."""
        return MESSAGES.get(self.kind)


MESSAGES = {"net": "NetParameter", "solver": "SolverParameter", "caffemodel": "NetParameter",
            "binaryproto": "BlobProto", "solverstate": "SolverState"}


def datum_db(path: Path, backend: str, encoded: bool) -> Path:
    import cv2

    from neocaffe.data.datum import array_to_datum
    from neocaffe.data.db_writer import DBWriter

    g = np.random.default_rng(13)
    with DBWriter(str(path), backend, map_size=1 << 22) as db:
        for i in range(10):
            img = g.integers(0, 256, (3, 8, 8), dtype=np.uint8)
            datum = array_to_datum(img, i % 5)
            if encoded:
                ok, png = cv2.imencode(".png", img.transpose(1, 2, 0))
                assert ok
                datum.ClearField("data")
                datum.data = png.tobytes()
                datum.encoded = True
            db.put(f"{i:08d}", datum.SerializeToString())
    return path


def _hdf5_list(folder: Path) -> Path:
    import h5py

    folder.mkdir()
    g = np.random.default_rng(5)
    names = []
    for k in range(2):
        name = folder / f"part{k}.h5"
        with h5py.File(name, "w") as f:
            f.create_dataset("data", data=g.standard_normal((6, 3, 8, 8)).astype(np.float32))
            f.create_dataset("label", data=(np.arange(6) % 5).astype(np.float32))
        names.append(name)
    listing = folder / "list.txt"
    listing.write_text("".join(f"{n}\n" for n in names))
    return listing


def image_list(folder: Path) -> Path:
    """Two PNG and two JPEG images of different sizes and an ImageData list naming them with labels."""
    import cv2

    folder.mkdir()
    g = np.random.default_rng(9)
    names = []
    for k, (ext, h, w) in enumerate([(".png", 8, 8), (".jpg", 10, 7), (".png", 6, 9), (".jpg", 12, 12)]):
        name = folder / f"img{k}{ext}"
        assert cv2.imwrite(str(name), g.integers(0, 256, (h, w, 3), dtype=np.uint8))
        names.append(name)
    listing = folder / "list.txt"
    listing.write_text("".join(f"{n} {k}\n" for k, n in enumerate(names)))
    return listing


def dense_list(folder: Path) -> Path:
    """DenseImageData's pairs: three PNG images with gray label images, a list of names relative to
    the folder (its ``root_folder``)."""
    import cv2

    folder.mkdir()
    g = np.random.default_rng(11)
    lines = []
    for k, (h, w) in enumerate([(8, 8), (9, 7), (6, 10)]):
        assert cv2.imwrite(str(folder / f"im{k}.png"), g.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert cv2.imwrite(str(folder / f"lb{k}.png"), g.integers(0, 10, (h, w), dtype=np.uint8))
        lines.append(f"im{k}.png lb{k}.png\n")
    listing = folder / "pairs.txt"
    listing.write_text("".join(lines))
    return listing


def _solver_seeds(root: Path, net: Path, snap: Path) -> dict[str, Path]:
    out = {}
    for name, body in SOLVERS.items():
        p = root / f"solver_{name}.prototxt"
        p.write_text(textwrap.dedent(body).format(net=net, snap=snap))
        out[name] = p
    return out


def make_seeds(root: Path) -> dict[str, list[Seed]]:
    """Write every seed under ``root`` (a new folder); kind -> its seeds."""
    from neocaffe.io import save_caffemodel, write_blobproto
    from neocaffe.layers.base import TEST
    from neocaffe.graph.net import Net
    from neocaffe.io import read_net
    from neocaffe.solver.solver import Solver

    root.mkdir(parents=True, exist_ok=True)
    snap = root / "snap"
    snap.mkdir()
    nets = {}
    for name, text in [("net", NET), ("net_v1", NET_V1), ("net_branches", NET_BRANCHES)]:
        nets[name] = root / f"{name}.prototxt"
        nets[name].write_text(text)
    solvers = _solver_seeds(root, nets["net"], snap)
    seeds: dict[str, list[Seed]] = {k: [] for k in KINDS}
    for name, p in nets.items():
        seeds["net"].append(Seed("net", name, p, [p], text=True))
    for name, p in solvers.items():
        seeds["solver"].append(Seed("solver", name, p, [p], text=True))
    made = {}
    for name in ("sgd", "adam"):
        s = Solver(str(solvers[name]))
        s.step(1)
        made[name] = s.snapshot()
        s.close()
    model, state = made["sgd"]
    seeds["caffemodel"].append(Seed("caffemodel", "snapshot", Path(model), [Path(model)], aux={"net": str(nets["net"])}))
    v1 = Net(read_net(nets["net_v1"]), TEST)
    v1_model = root / "v1_layers.caffemodel"
    save_caffemodel(v1_model, v1.to_weights())
    seeds["caffemodel"].append(Seed("caffemodel", "bare", v1_model, [v1_model], aux={"net": str(nets["net_v1"])}))
    seeds["solverstate"].append(Seed("solverstate", "sgd", Path(state), [Path(state)],
                                     aux={"solver": str(solvers["sgd"])}))
    companion = Path(state + ".resume.pt")  # neocaffe's own resume state beside the solverstate
    if companion.exists():
        seeds["resume"].append(Seed("resume", "sgd", Path(state), [companion], aux={"solver": str(solvers["sgd"])}))
    model_h5, state_h5 = made["adam"]
    seeds["caffemodel_h5"].append(Seed("caffemodel_h5", "snapshot", Path(model_h5), [Path(model_h5)],
                                       aux={"net": str(nets["net"])}))
    seeds["solverstate_h5"].append(Seed("solverstate_h5", "adam", Path(state_h5), [Path(state_h5)],
                                        aux={"solver": str(solvers["adam"])}))
    lmdb_raw = datum_db(root / "lmdb_raw", "lmdb", encoded=False)
    mean = np.random.default_rng(2).uniform(0, 255, (1, 3, 8, 8)).astype(np.float32)
    for legacy in (True, False):
        p = root / f"mean_{'legacy' if legacy else 'shape'}.binaryproto"
        write_blobproto(p, mean if legacy else mean[0], legacy=legacy)
        seeds["binaryproto"].append(Seed("binaryproto", p.stem, p, [p], aux={"source": str(lmdb_raw)}))
    for backend, encoded in [("lmdb", False), ("lmdb", True), ("leveldb", False)]:
        db = lmdb_raw if (backend, encoded) == ("lmdb", False) else \
            datum_db(root / f"{backend}_{'png' if encoded else 'raw'}", backend, encoded)
        seeds[backend].append(Seed(backend, db.name, db, sorted(p for p in db.iterdir() if p.name != "lock.mdb"
                                                              and p.name != "LOCK")))
    listing = _hdf5_list(root / "hdf5")
    seeds["hdf5data"].append(Seed("hdf5data", "list", listing, [listing] + sorted(listing.parent.glob("*.h5"))))
    images = image_list(root / "images")
    seeds["imagedata"].append(Seed("imagedata", "list", images, [images] + sorted(images.parent.glob("img*"))))
    pairs = dense_list(root / "dense")
    seeds["denseimage"].append(Seed("denseimage", "pairs", pairs, [pairs] + sorted(pairs.parent.glob("*.png"))))
    return seeds


def fixture_seeds(fixtures: Path, root: Path) -> dict[str, list[Seed]]:
    """Files written by the real Caffe build in ``../shared/fixtures`` (read only: cases copy them):
    convert_imageset LMDBs, HDF5Data parts, snapshots of both formats (read whole, as no net here
    matches them) and the per-layer golden nets. Kinds whose files are absent are left out."""
    root.mkdir(parents=True, exist_ok=True)
    seeds: dict[str, list[Seed]] = {k: [] for k in KINDS}
    for name in ("lmdb_raw", "lmdb_encoded_png"):
        db = fixtures / "data" / name
        if (db / "data.mdb").exists():
            seeds["lmdb"].append(Seed("lmdb", f"caffe_{name}", db, [db / "data.mdb"]))
    parts = sorted((fixtures / "data" / "h5").glob("*.h5"))
    if parts:
        listing = root / "caffe_hdf5_list.txt"
        listing.write_text("".join(f"{p}\n" for p in parts))
        seeds["hdf5data"].append(Seed("hdf5data", "caffe_list", listing, [listing] + parts))
    for kind, folder, pattern in [("caffemodel", "snap_binary", "*_iter_20.caffemodel"),
                                  ("solverstate", "snap_binary", "*_iter_20.solverstate"),
                                  ("caffemodel_h5", "snap_hdf5", "*_iter_20.caffemodel.h5"),
                                  ("solverstate_h5", "snap_hdf5", "*_iter_20.solverstate.h5")]:
        for p in sorted((fixtures / "logs" / folder).glob(pattern)):
            seeds[kind].append(Seed(kind, f"caffe_{folder}", p, [p]))
    for p in sorted((fixtures / "layers").glob("*.prototxt")):  # one small net per layer case
        seeds["net"].append(Seed("net", f"caffe_layers_{p.stem}", p, [p], text=True))
    mean = fixtures / "data" / "mean.binaryproto"
    if mean.exists() and (fixtures / "data" / "lmdb_raw" / "data.mdb").exists():
        seeds["binaryproto"].append(Seed("binaryproto", "caffe_mean", mean, [mean],
                                         aux={"source": str(fixtures / "data" / "lmdb_raw")}))
    return {k: v for k, v in seeds.items() if v}


KINDS = ["net", "solver", "caffemodel", "caffemodel_h5", "binaryproto", "solverstate", "solverstate_h5",
         "resume", "lmdb", "leveldb", "hdf5data", "imagedata", "denseimage"]
