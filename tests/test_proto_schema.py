"""The committed caffe_pb2 matches proto/caffe.proto, and the schema holds the
fields of upstream Caffe, the fork's master and its scnn branch."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, text_format

from neocaffe.proto import caffe_pb2

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "proto" / "caffe.proto"
NUMBERING = ROOT / "proto" / "NUMBERING.md"

F = descriptor_pb2.FieldDescriptorProto


def _field(message: str, name: str):
    desc = caffe_pb2.DESCRIPTOR.message_types_by_name[message]
    assert name in desc.fields_by_name, f"{message}.{name} is missing from the schema"
    return desc.fields_by_name[name]


# --- (1) committed module == proto source ----------------------------------

def _serialized_file(gencode: str) -> bytes:
    """The FileDescriptorProto bytes a protoc-generated *_pb2.py registers."""
    for node in ast.walk(ast.parse(gencode)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "AddSerializedFile"):
            return ast.literal_eval(node.args[0])
    raise AssertionError("no AddSerializedFile(...) call in the generated module")


def test_committed_pb2_matches_proto(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed (pip install grpcio-tools); "
                    "cannot regenerate caffe_pb2 to compare")
    proc = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}",
         f"--python_out={tmp_path}", str(PROTO)],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # Read the descriptor out of the regenerated module's source rather than
    # importing it: a second caffe.proto would clash in the default pool.
    fresh = _serialized_file((tmp_path / "caffe_pb2.py").read_text(encoding="utf-8"))
    stale = ("neocaffe/proto/caffe_pb2.py is out of date with proto/caffe.proto; "
             "run scripts/gen_proto.sh and commit the result")
    # The runtime re-serializes descriptors from its pool (upb rewrites e.g.
    # float defaults), so load the fresh bytes into a pool of their own and
    # compare like with like: the committed module's DESCRIPTOR.serialized_pb.
    pool = descriptor_pool.DescriptorPool()
    assert pool.AddSerializedFile(fresh).serialized_pb == caffe_pb2.DESCRIPTOR.serialized_pb, stale
    # And byte for byte, the descriptors embedded in the two sources.
    committed_src = (ROOT / "neocaffe" / "proto" / "caffe_pb2.py").read_text(encoding="utf-8")
    assert _serialized_file(committed_src) == fresh, stale


def test_pb2_runtime_gate_is_the_project_floor():
    text = (ROOT / "neocaffe" / "proto" / "caffe_pb2.py").read_text(encoding="utf-8")
    m = re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", text)
    if m is None:  # gencode without a runtime gate imports everywhere
        return
    assert tuple(int(x) for x in m.groups()) <= (6, 31, 1), (
        "caffe_pb2.py demands a newer protobuf runtime than pyproject's floor; "
        "regenerate with scripts/gen_proto.sh")


# --- (2) key fields, numbers, types ----------------------------------------

KEY_FIELDS = [
    # message, field, number, type, repeated
    ("NetParameter", "layer", 100, F.TYPE_MESSAGE, True),
    ("NetParameter", "layers", 2, F.TYPE_MESSAGE, True),
    ("NetParameter", "input_dim", 4, F.TYPE_INT32, True),
    ("BlobProto", "data", 5, F.TYPE_FLOAT, True),
    ("BlobProto", "diff", 6, F.TYPE_FLOAT, True),
    ("BlobProto", "shape", 7, F.TYPE_MESSAGE, False),
    ("BlobProto", "double_data", 8, F.TYPE_DOUBLE, True),
    ("BlobProto", "num", 1, F.TYPE_INT32, False),
    ("BlobShape", "dim", 1, F.TYPE_INT64, True),
    ("Datum", "data", 4, F.TYPE_BYTES, False),
    ("Datum", "encoded", 7, F.TYPE_BOOL, False),
    ("SolverState", "history", 3, F.TYPE_MESSAGE, True),
    ("SolverState", "current_step", 4, F.TYPE_INT32, False),
    ("SolverParameter", "type", 40, F.TYPE_STRING, False),
    ("SolverParameter", "solver_type", 30, F.TYPE_ENUM, False),
    ("SolverParameter", "rms_decay", 38, F.TYPE_FLOAT, False),
    ("SolverParameter", "clip_gradients", 35, F.TYPE_FLOAT, False),
    ("SolverParameter", "iter_size", 36, F.TYPE_INT32, False),
    ("SolverParameter", "force_type", 41, F.TYPE_STRING, False),
    ("SolverParameter", "force_decay", 42, F.TYPE_FLOAT, False),
    ("SolverParameter", "force_iter", 43, F.TYPE_INT32, False),
    ("SolverParameter", "force_decay_type", 44, F.TYPE_STRING, False),
    ("SolverParameter", "force_direction", 45, F.TYPE_STRING, False),
    ("SolverParameter", "layer_wise_reduce", 1041, F.TYPE_BOOL, False),
    ("SolverParameter", "weights", 1042, F.TYPE_STRING, True),
    ("SolverParameter", "breadth_decay", 2041, F.TYPE_FLOAT, False),
    ("SolverParameter", "kernel_shape_decay", 2042, F.TYPE_FLOAT, False),
    ("SolverParameter", "block_group_decay", 2043, F.TYPE_FLOAT, False),
    ("ParamSpec", "lr_mult", 3, F.TYPE_FLOAT, False),
    ("ParamSpec", "decay_mult", 4, F.TYPE_FLOAT, False),
    ("ParamSpec", "force_regularize", 5, F.TYPE_MESSAGE, False),
    ("ParamSpec", "force_mult", 6, F.TYPE_FLOAT, False),
    ("ParamSpec", "block_group_lasso", 7, F.TYPE_MESSAGE, True),
    ("ParamSpec", "regularization_type", 8, F.TYPE_STRING, False),
    ("ParamSpec", "decay_proto", 9, F.TYPE_STRING, False),
    ("ParamSpec", "breadth_decay_mult", 2005, F.TYPE_FLOAT, False),
    ("ParamSpec", "kernel_shape_decay_mult", 2006, F.TYPE_FLOAT, False),
    ("LayerParameter", "blobs", 7, F.TYPE_MESSAGE, True),
    ("LayerParameter", "display", 12, F.TYPE_BOOL, False),
    ("LayerParameter", "connectivity_mode", 2012, F.TYPE_ENUM, False),
    ("LayerParameter", "convolution_param", 106, F.TYPE_MESSAGE, False),
    ("LayerParameter", "recurrent_param", 146, F.TYPE_MESSAGE, False),
    ("LayerParameter", "sparsify_param", 147, F.TYPE_MESSAGE, False),
    ("LayerParameter", "symmetric_rectify_param", 148, F.TYPE_MESSAGE, False),
    ("LayerParameter", "swish_param", 1147, F.TYPE_MESSAGE, False),
    ("LayerParameter", "clip_param", 1148, F.TYPE_MESSAGE, False),
    ("ConvolutionParameter", "conv_mode", 21, F.TYPE_ENUM, False),
    ("ConvolutionParameter", "dilation", 18, F.TYPE_UINT32, True),
    ("PoolingParameter", "round_mode", 13, F.TYPE_ENUM, False),
    ("SparsifyParameter", "thre", 1, F.TYPE_FLOAT, False),
    ("SparsifyParameter", "coef", 2, F.TYPE_FLOAT, False),
    ("SymmetricRectifyParameter", "filler", 1, F.TYPE_MESSAGE, False),
    ("SymmetricRectifyParameter", "thre_decay", 3, F.TYPE_FLOAT, False),
    ("BlockGroupLassoSpec", "xdimen", 1, F.TYPE_UINT32, False),
    ("BlockGroupLassoSpec", "block_decay_mult", 3, F.TYPE_FLOAT, False),
    ("ForceRegular", "multi", 3, F.TYPE_FLOAT, False),
    ("PythonParameter", "share_in_parallel", 4, F.TYPE_BOOL, False),
    ("V1LayerParameter", "blobs", 6, F.TYPE_MESSAGE, True),
    ("V1LayerParameter", "type", 5, F.TYPE_ENUM, False),
    ("V1LayerParameter", "param", 1001, F.TYPE_STRING, True),
    ("V1LayerParameter", "blobs_lr", 7, F.TYPE_FLOAT, True),
    ("V1LayerParameter", "layer", 1, F.TYPE_MESSAGE, False),
    ("V0LayerParameter", "blobs", 50, F.TYPE_MESSAGE, True),
    ("V0LayerParameter", "hdf5_output_param", 1001, F.TYPE_MESSAGE, False),
]


@pytest.mark.parametrize("message,name,number,ftype,repeated", KEY_FIELDS,
                         ids=[f"{m}.{n}" for m, n, *_ in KEY_FIELDS])
def test_key_field(message, name, number, ftype, repeated):
    fd = _field(message, name)
    assert fd.number == number
    assert fd.type == ftype
    assert fd.is_repeated == repeated


def test_packed_blob_data():
    proto = descriptor_pb2.FileDescriptorProto.FromString(caffe_pb2.DESCRIPTOR.serialized_pb)
    blob = next(m for m in proto.message_type if m.name == "BlobProto")
    packed = {f.name for f in blob.field if f.options.packed}
    assert packed == {"data", "diff", "double_data", "double_diff"}


def test_defaults():
    s = caffe_pb2.SolverParameter()
    assert (s.force_type, s.force_decay, s.force_iter) == ("Degradation", 0.0, -1)
    assert (s.force_decay_type, s.force_direction) == ("fixed", "all")
    assert s.type == "SGD" and s.regularization_type == "L2"
    assert s.layer_wise_reduce is True
    assert s.rms_decay == pytest.approx(0.99)
    assert s.snapshot_format == caffe_pb2.SolverParameter.BINARYPROTO
    p = caffe_pb2.ParamSpec()
    assert (p.lr_mult, p.decay_mult, p.force_mult) == (1.0, 1.0, 0.0)
    assert (p.breadth_decay_mult, p.kernel_shape_decay_mult) == (0.0, 0.0)
    assert caffe_pb2.BlockGroupLassoSpec().block_decay_mult == 1.0
    assert caffe_pb2.LayerParameter().connectivity_mode == caffe_pb2.LayerParameter.CONNECTED
    assert caffe_pb2.ConvolutionParameter().conv_mode == caffe_pb2.ConvolutionParameter.LOWERED_GEMM
    assert caffe_pb2.PoolingParameter().round_mode == caffe_pb2.PoolingParameter.CEIL
    assert caffe_pb2.FillerParameter().type == "constant"


def test_enums():
    lt = caffe_pb2.V1LayerParameter.LayerType
    assert lt.Value("CONVOLUTION") == 4
    assert lt.Value("INNER_PRODUCT") == 14
    assert lt.Value("POOLING") == 17
    assert lt.Value("RELU") == 18
    assert lt.Value("SOFTMAX_LOSS") == 21
    assert lt.Value("DECONVOLUTION") == 39
    assert lt.Value("THRESHOLD") == 31
    assert len(lt.keys()) == 40
    assert caffe_pb2.Phase.Value("TEST") == 1
    st = caffe_pb2.SolverParameter.SolverType
    assert [st.Value(n) for n in ("SGD", "NESTEROV", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM")] == [0, 1, 2, 3, 4, 5]
    cm = caffe_pb2.LayerParameter.ConnectivityMode
    assert [cm.Value(n) for n in ("CONNECTED", "DISCONNECTED_ELTWISE", "DISCONNECTED_GRPWISE")] == [0, 1, 2]
    mode = caffe_pb2.ConvolutionParameter.ConvMode
    assert [mode.Value(n) for n in ("LOWERED_GEMM", "LOWERED_CSRMM", "LOWERED_CCNMM",
                                    "DIRECT_SCONV", "DIRECT_DCONV")] == [0, 1, 2, 3, 4]


def test_upstream_messages_present():
    names = set(caffe_pb2.DESCRIPTOR.message_types_by_name)
    for needed in ("ClipParameter", "SwishParameter", "RecurrentParameter", "V0LayerParameter",
                   "V1LayerParameter", "InputParameter", "ParameterParameter", "PythonParameter",
                   "WindowDataParameter", "SPPParameter", "CropParameter", "BatchNormParameter",
                   "ScaleParameter", "BiasParameter", "EmbedParameter", "TileParameter",
                   "SparsifyParameter", "SymmetricRectifyParameter", "ForceRegular",
                   "BlockGroupLassoSpec", "BlobProtoVector", "Datum", "SolverState"):
        assert needed in names, needed


def test_no_number_collisions():
    for desc in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
        stack = [desc]
        while stack:
            d = stack.pop()
            numbers = [f.number for f in d.fields]
            assert len(numbers) == len(set(numbers)), d.full_name
            stack.extend(d.nested_types)


# --- (3) text with fork master and scnn fields round-trips -----------------

SOLVER_TEXT = """
net: "train_val.prototxt"
base_lr: 0.01
type: "SGD"
force_type: "Constant"
force_decay: 0.0002
force_iter: 5000
force_decay_type: "adaptive"
force_direction: "same"
breadth_decay: 0.001
kernel_shape_decay: 0.002
block_group_decay: 0.003
layer_wise_reduce: false
weights: "init.caffemodel"
"""

NET_TEXT = """
name: "mixed"
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  display: true
  connectivity_mode: DISCONNECTED_GRPWISE
  param {
    lr_mult: 1 decay_mult: 1 force_mult: 1
    force_regularize { xdim: 2 ydim: 3 multi: 0.5 }
    breadth_decay_mult: 1 kernel_shape_decay_mult: 1
    regularization_type: "L1"
    block_group_lasso { xdimen: 5 ydimen: 10 block_decay_mult: 1.667 }
  }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 8 kernel_size: 3 conv_mode: LOWERED_CCNMM }
}
layer { name: "sr" type: "SymmetricRectify" bottom: "conv1" top: "conv1"
  symmetric_rectify_param { filler { type: "constant" value: 0.0001 } thre_decay: 0.1 } }
layer { name: "sp" type: "Sparsify" bottom: "conv1" top: "conv1"
  sparsify_param { coef: 0.001 thre: 0 } }
layer { name: "sw" type: "Swish" bottom: "conv1" top: "sw" swish_param { beta: 2 } }
layer { name: "cl" type: "Clip" bottom: "sw" top: "cl" clip_param { min: -1 max: 1 } }
layer { name: "pool" type: "Pooling" bottom: "cl" top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR } }
layers { name: "old" type: INNER_PRODUCT bottom: "pool" top: "ip" blobs_lr: 1 blobs_lr: 2 }
"""


def test_text_round_trip_solver():
    s = text_format.Parse(SOLVER_TEXT, caffe_pb2.SolverParameter())
    assert s.force_type == "Constant" and s.force_iter == 5000
    assert s.block_group_decay == pytest.approx(0.003)
    assert list(s.weights) == ["init.caffemodel"] and s.layer_wise_reduce is False
    again = text_format.Parse(text_format.MessageToString(s), caffe_pb2.SolverParameter())
    assert again == s
    assert caffe_pb2.SolverParameter.FromString(s.SerializeToString()) == s


def test_text_round_trip_net():
    n = text_format.Parse(NET_TEXT, caffe_pb2.NetParameter())
    conv = n.layer[0]
    assert conv.display is True
    assert conv.connectivity_mode == caffe_pb2.LayerParameter.DISCONNECTED_GRPWISE
    assert conv.param[0].force_mult == 1.0
    assert conv.param[0].block_group_lasso[0].ydimen == 10
    assert conv.convolution_param.conv_mode == caffe_pb2.ConvolutionParameter.LOWERED_CCNMM
    assert n.layer[2].sparsify_param.coef == pytest.approx(0.001)
    assert n.layers[0].type == caffe_pb2.V1LayerParameter.INNER_PRODUCT
    again = text_format.Parse(text_format.MessageToString(n), caffe_pb2.NetParameter())
    assert again == n
    assert caffe_pb2.NetParameter.FromString(n.SerializeToString()) == n


def test_master_numbers_on_the_wire():
    # A master-written layer with display=true (field 12) must not decode as
    # scnn's connectivity_mode, and force_mult must sit at field 6.
    layer = caffe_pb2.LayerParameter(display=True)
    assert layer.SerializeToString() == b"\x60\x01"          # field 12, varint 1
    spec = caffe_pb2.ParamSpec(force_mult=1.0)
    assert spec.SerializeToString() == b"\x35\x00\x00\x80\x3f"  # field 6, fixed32 1.0


# --- (4) NUMBERING.md agrees with the schema -------------------------------

def _moved_rows():
    rows = []
    section = None
    for line in NUMBERING.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        if section != "Moved fields" or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("message", "") or set(cells[0]) <= set("-: "):
            continue
        rows.append(cells)
    return rows


def test_numbering_table_matches_schema():
    rows = _moved_rows()
    assert len(rows) >= 10, "the moved-fields table of proto/NUMBERING.md was not found"
    for message, field, original, lineage, new, why in rows:
        assert lineage in ("upstream", "scnn", "master"), lineage
        fd = _field(message, field)
        assert fd.number == int(new), f"{message}.{field}: schema {fd.number}, NUMBERING.md {new}"
        assert int(original) != int(new)
        assert why
        # The original number now belongs to another field of the same message.
        desc = caffe_pb2.DESCRIPTOR.message_types_by_name[message]
        assert int(original) in desc.fields_by_number, f"{message}: {original} is free; why move?"
