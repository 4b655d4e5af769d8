"""choasup/caffe-yolo9000's nets (copies in tests/layers/data/yolo9000, origin in its README): they parse as
released; shrunk (64 x 64 input, hidden widths / 16), the darknet deploy net (``Reorg`` without ``reorg_param``) runs,
the COCO test net runs at TEST with ``EvalDetection``'s ``save_output_param`` writing its JSON, and the hierarchical
GoogLeNet train net (``softmax_tree: "voc.tree"``, ``class_map: "voc.map"``) builds at TRAIN and TEST and takes three
solver steps with the fork's solver from a tiny LMDB."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import TEST, TRAIN
from neocaffe.proto import caffe_pb2

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

DATA = Path(__file__).parent / "data" / "yolo9000"
MIRROR = Path("/work/.mirror/choasup+caffe-yolo9000/repo")
COMMIT = "e8a476c4c23d756632f7a26c681a96e3ab672544"
FILES = {"gnet_region_train_googlenet.prototxt": "examples/yolo/googlenet_hier_voc/",
         "gnet_region_solver_googlenet.prototxt": "examples/yolo/googlenet_hier_voc/",
         "voc.tree": "examples/yolo/googlenet_hier_voc/", "voc.map": "examples/yolo/googlenet_hier_voc/",
         "yolov2-608_test.prototxt": "examples/yolo/darknet_yolov2_coco/",
         "darknet448.prototxt": "examples/yolo/darknet_voc/"}
HEADS = ("425", "140")   # the COCO head (5 * 85) and the hierarchical VOC head (5 * 28): kept


def _shrunk(name: str, size: int, side: int) -> str:
    text = (DATA / name).read_text()
    text = re.sub(r"num_output: (\d+)", lambda m: f"num_output: {m[1] if m[1] in HEADS else max(int(m[1]) // 16, 1)}",
                  text)
    for big in ("608", "448", "416"):
        text = text.replace(f"height: {big}", f"height: {size}").replace(f"width: {big}", f"width: {size}")
        text = text.replace(f"input_dim: {big}", f"input_dim: {size}")
    return re.sub(r"side: (19|13)", f"side: {side}", text)


def _with_inputs(text: str, batch: int, size: int, boxes: int) -> caffe_pb2.NetParameter:
    """The net with its AnnotatedData replaced by an Input of the same tops (images, SSD's label 1 x 1 x K x 8)."""
    from neocaffe.io.prototxt import read_net

    net = read_net(text)
    data = [lp for lp in net.layer if lp.type == "AnnotatedData"]
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    inp = out.layer.add(name="data", type="Input", top=list(data[0].top))
    inp.input_param.shape.add(dim=[batch, 3, size, size])
    inp.input_param.shape.add(dim=[1, 1, boxes, 8])
    out.layer.extend(lp for lp in net.layer if lp.type != "AnnotatedData")
    return out


@pytest.mark.parametrize("name", [n for n in FILES if n.endswith(".prototxt")])
def test_the_forks_prototxts_parse_as_released(name):
    from neocaffe.io.prototxt import read_net, read_solver

    if "solver" in name:
        s = read_solver(str(DATA / name))
        assert s.lr_policy == "multifixed" and list(s.stageiter) == [1000, 30000, 60000, 80000]
        return
    net = read_net(str(DATA / name))
    types = [lp.type for lp in net.layer]
    if name != "gnet_region_train_googlenet.prototxt":
        reorg = [lp for lp in net.layer if lp.type == "Reorg"]
        assert len(reorg) == 1 and not reorg[0].HasField("reorg_param") and reorg[0].reorg_param.stride == 2
    if "RegionLoss" in types:
        p = next(lp for lp in net.layer if lp.type == "RegionLoss").region_loss_param
        assert (p.softmax_tree, p.class_map) == (("voc.tree", "voc.map") if "googlenet" in name else ("", ""))
    if "EvalDetection" in types:
        s = next(lp for lp in net.layer if lp.type == "EvalDetection").eval_detection_param.save_output_param
        assert s.num_test_image == 5000 and s.output_name_prefix == "coco_results_caffe500p"


def test_the_misspelled_sotmax_tree_stays_a_parse_error():
    """The fork's gnet_region_test_googlenet.prototxt writes ``sotmax_tree: "voc.tree"``: its own Caffe fails there."""
    from neocaffe.io.errors import PrototxtError
    from neocaffe.io.prototxt import read_net

    with pytest.raises(PrototxtError, match="sotmax_tree"):
        read_net('layer { name: "det_loss" type: "RegionLoss" bottom: "conv_reg" bottom: "label" top: "det_loss"\n'
                 '  region_loss_param { side: 13 num_class: 23\n    sotmax_tree: "voc.tree"\n  } }')


@pytest.mark.parametrize("name", list(FILES))
def test_the_copies_are_the_forks_files_byte_for_byte(name):
    if not MIRROR.is_dir() or shutil.which("git") is None:
        pytest.skip(f"the choasup/caffe-yolo9000 mirror ({MIRROR}) or git is absent; the copies' origin is in "
                    f"{DATA / 'README.md'}")
    blob = subprocess.run(["git", "-C", str(MIRROR), "show", f"{COMMIT}:{FILES[name]}{name}"], capture_output=True,
                          check=True).stdout
    assert blob == (DATA / name).read_bytes()


def test_darknet_deploy_net_runs_with_the_default_reorg_stride():
    from neocaffe import rng
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    rng.set_seed(5)
    net = Net(read_net(_shrunk("darknet448.prototxt", 64, 2)), TEST)
    assert net.layer("extra_layer-reorg").stride == 2
    with torch.no_grad():
        net.forward({"data": torch.rand(1, 3, 64, 64)})
    assert tuple(net.blob("conv_reg").shape) == (1, 425, 2, 2)
    assert torch.isfinite(net.blob("conv_reg")).all()


def test_coco_test_net_runs_and_writes_the_result_file(tmp_path):
    from neocaffe import rng
    from neocaffe.graph.net import Net

    (tmp_path / "out").mkdir()
    (tmp_path / "sizes.txt").write_text("000000397133 640 427\n000000037777 352 230\n")
    (tmp_path / "labelmap.prototxt").write_text("".join(f'item {{ name: "{k}" label: {k} display_name: "c{k}" }}\n'
                                                        for k in range(81)))
    text = _shrunk("yolov2-608_test.prototxt", 64, 2)
    text = text.replace("/home/data/liuyong/choas/codes/caffe-yolo9000/examples/yolo/darknet_yolov2_coco/",
                        f"{tmp_path}/out/")
    text = text.replace("../../../data/coco/labelmap_coco.prototxt", str(tmp_path / "labelmap.prototxt"))
    text = text.replace("../../../data/coco/minival_yolo5k_name_size.txt", str(tmp_path / "sizes.txt"))
    text = text.replace("num_test_image: 5000", "num_test_image: 2")
    rng.set_seed(6)
    net = Net(_with_inputs(text, 1, 64, 2), TEST)
    assert net.layer("eval_det").yolo9000
    label = np.array([[[[0, 1, 0, 0.1, 0.2, 0.5, 0.7, 0], [0, 17, 1, 0.3, 0.3, 0.8, 0.9, 0]]]], np.float32)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):   # the fork's batch_size 1: one image a forward, the file after the second
        with torch.no_grad():
            net.forward({"data": torch.rand(1, 3, 64, 64, generator=gen), "label": torch.tensor(label)})
        top = net.blob("eval_det")
        assert tuple(top.shape) == (1, 80 + 2 * 2 * 5 * 4) and top[0, 0] == 1 and top[0, 16] == 1
    saved = json.loads((tmp_path / "out" / "coco_results_caffe500p.json").read_text())
    assert saved and {d["image_id"] for d in saved} <= {397133, 37777}
    assert all(len(d["bbox"]) == 4 and 0 < d["score"] <= 1 and 1 <= d["category_id"] <= 80 for d in saved)


def test_hierarchical_googlenet_builds_at_train_and_test():
    from neocaffe import rng
    from neocaffe.graph.net import Net

    text = _shrunk("gnet_region_train_googlenet.prototxt", 64, 2)
    text = text.replace('"voc.tree"', f'"{DATA / "voc.tree"}"').replace('"voc.map"', f'"{DATA / "voc.map"}"')
    label = torch.tensor([[[[0, 12, 0, 0.1, 0.2, 0.5, 0.7, 0], [1, 15, 0, 0.6, 0.5, 0.9, 0.95, 0]]]])
    for phase in (TRAIN, TEST):
        rng.set_seed(7)
        net = Net(_with_inputs(text, 2, 64, 2), phase)
        layer = net.layer("det_loss")
        assert layer.intel and layer.tree is not None and layer.tree.n == 23
        loss = net.forward({"data": torch.rand(2, 3, 64, 64) * 255 - 117, "label": label})
        assert torch.isfinite(loss) and float(loss) > 0
        assert layer.stats["class_count"] == 2
    net.backward()
    d = net.blob_diff("conv_reg")
    assert torch.isfinite(d).all() and d.abs().sum() > 0


def test_hierarchical_googlenet_trains_with_the_forks_solver(tmp_path, monkeypatch):
    """The train net as released but for its source, label map, 64 x 64 resize, batch 2 and widths; the fork's solver
    (``multifixed``, ``iter_size: 2``) but for the net path, three iterations, CPU and no snapshot. AnnotatedData (the
    fork's batch samplers) gives SSD's labels 1..2, which ``voc.map`` reads as tree nodes 11 and 3 (the fork's
    off-by-one); the tree files are opened relative to the working directory, as the fork's."""
    from neocaffe.solver.solver import Solver
    from tests.layers.test_yolo_loss import _yolo_dataset

    _yolo_dataset(tmp_path, n=8, size=64)
    for f in ("voc.tree", "voc.map"):
        shutil.copy(DATA / f, tmp_path / f)
    monkeypatch.chdir(tmp_path)
    text = _shrunk("gnet_region_train_googlenet.prototxt", 64, 2)
    text = text.replace("../../../data/VOC0712/lmdb/VOC0712_0712trainval_lmdb", str(tmp_path / "db"))
    text = text.replace("data/VOC0712/labelmap_voc.prototxt", str(tmp_path / "labelmap.prototxt"))
    (tmp_path / "gnet_region_train_googlenet.prototxt").write_text(text.replace("batch_size: 32", "batch_size: 2"))
    solver = (DATA / "gnet_region_solver_googlenet.prototxt").read_text()
    solver = solver.replace("max_iter: 80000", "max_iter: 3").replace("solver_mode: GPU", "solver_mode: CPU")
    solver = solver.replace("snapshot: 2500", "snapshot: 0").replace('"./models/gnet_yolo_region_googlenet"',
                                                                     f'"{tmp_path}/snap"')
    param = text_format.Parse(solver + "\nsnapshot_after_train: false random_seed: 4\n", caffe_pb2.SolverParameter())
    s = Solver(param)
    layer = s.net.layer("det_loss")
    assert layer.intel and layer.tree.n == 23 and layer.class_map[1] == 11
    losses = []
    for _ in range(3):
        s.step(1)
        losses.append(float(s.net.blob("det_loss")))
    assert all(np.isfinite(losses)) and min(losses) > 0, losses
    assert layer.iterations == 6   # iter_size 2: two forwards a step
