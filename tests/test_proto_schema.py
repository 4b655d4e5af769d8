"""The committed caffe_pb2 matches proto/caffe.proto, and the schema holds the
fields of upstream Caffe, the fork's master, its scnn branch and the forks of
issue 14 (SSD, Faster R-CNN, R-FCN, PSPNet/DeepLab, SegNet/ENet, the YOLO ports,
ShuffleNet)."""

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
    # forks of issue 14 (their own numbers where free, 3000 + original where not)
    ("LayerParameter", "annotated_data_param", 200, F.TYPE_MESSAGE, False),
    ("LayerParameter", "multibox_loss_param", 201, F.TYPE_MESSAGE, False),
    ("LayerParameter", "permute_param", 202, F.TYPE_MESSAGE, False),
    ("LayerParameter", "prior_box_param", 203, F.TYPE_MESSAGE, False),
    ("LayerParameter", "detection_output_param", 204, F.TYPE_MESSAGE, False),
    ("LayerParameter", "norm_param", 206, F.TYPE_MESSAGE, False),
    ("LayerParameter", "roi_pooling_param", 8266711, F.TYPE_MESSAGE, False),
    ("LayerParameter", "smooth_l1_loss_param", 8266712, F.TYPE_MESSAGE, False),
    ("LayerParameter", "psroi_pooling_param", 10001, F.TYPE_MESSAGE, False),
    ("LayerParameter", "bn_param", 152, F.TYPE_MESSAGE, False),
    ("LayerParameter", "interp_param", 3143, F.TYPE_MESSAGE, False),
    ("LayerParameter", "upsample_param", 3137, F.TYPE_MESSAGE, False),
    ("LayerParameter", "dense_image_data_param", 3138, F.TYPE_MESSAGE, False),
    ("LayerParameter", "reorg_param", 3149, F.TYPE_MESSAGE, False),
    ("LayerParameter", "shuffle_channel_param", 164, F.TYPE_MESSAGE, False),
    ("LayerParameter", "relu6_param", 211, F.TYPE_MESSAGE, False),
    ("LayerParameter", "yolo_detection_output_param", 601, F.TYPE_MESSAGE, False),
    ("PoolingParameter", "ceil_mode", 3013, F.TYPE_BOOL, False),
    ("TransformationParameter", "resize_param", 8, F.TYPE_MESSAGE, True),
    ("TransformationParameter", "distort_param", 13, F.TYPE_MESSAGE, False),
    ("TransformationParameter", "expand_param", 14, F.TYPE_MESSAGE, False),
    ("BNParameter", "slope_filler", 1, F.TYPE_MESSAGE, False),
    ("BNParameter", "bn_mode", 3003, F.TYPE_ENUM, False),
    ("UpsampleParameter", "scale", 1, F.TYPE_UINT32, False),
    ("UpsampleParameter", "upsample_h", 6, F.TYPE_UINT32, False),
    ("AnnotatedDatum", "annotation_group", 3, F.TYPE_MESSAGE, True),
    ("NormalizedBBox", "difficult", 6, F.TYPE_BOOL, False),
    ("PriorBoxParameter", "min_size", 1, F.TYPE_FLOAT, True),
    ("PriorBoxParameter", "offset", 13, F.TYPE_FLOAT, False),
    ("MultiBoxLossParameter", "mining_type", 20, F.TYPE_ENUM, False),
    ("DetectionOutputParameter", "keep_top_k", 7, F.TYPE_INT32, False),
    ("PSROIPoolingParameter", "group_size", 3, F.TYPE_INT32, False),
    # the face-recognition forks: SphereFace's A-Softmax, caffe-face's center loss (4000 / 5000 + 147)
    ("LayerParameter", "margin_inner_product_param", 4147, F.TYPE_MESSAGE, False),
    ("LayerParameter", "center_loss_param", 5147, F.TYPE_MESSAGE, False),
    ("MarginInnerProductParameter", "num_output", 1, F.TYPE_UINT32, False),
    ("MarginInnerProductParameter", "type", 2, F.TYPE_ENUM, False),
    ("MarginInnerProductParameter", "weight_filler", 3, F.TYPE_MESSAGE, False),
    ("MarginInnerProductParameter", "axis", 4, F.TYPE_INT32, False),
    ("MarginInnerProductParameter", "base", 5, F.TYPE_FLOAT, False),
    ("MarginInnerProductParameter", "gamma", 6, F.TYPE_FLOAT, False),
    ("MarginInnerProductParameter", "power", 7, F.TYPE_FLOAT, False),
    ("MarginInnerProductParameter", "iteration", 8, F.TYPE_INT32, False),
    ("MarginInnerProductParameter", "lambda_min", 9, F.TYPE_FLOAT, False),
    ("CenterLossParameter", "num_output", 1, F.TYPE_UINT32, False),
    ("CenterLossParameter", "center_filler", 2, F.TYPE_MESSAGE, False),
    ("CenterLossParameter", "axis", 3, F.TYPE_INT32, False),
    # RefineDet (sfzhang15/RefineDet @ a9ca4b2): its own number, free in both messages
    ("DetectionOutputParameter", "objectness_score", 24, F.TYPE_FLOAT, False),
    ("MultiBoxLossParameter", "objectness_score", 24, F.TYPE_FLOAT, False),
    # happynear (caffe-windows ms @ 504d8a85, AM-Softmax / NormFace): its own numbers but NormalizeParameter's,
    # which are SSD's 1-3
    ("LayerParameter", "normalize_param", 214, F.TYPE_MESSAGE, False),
    ("LayerParameter", "flip_param", 212, F.TYPE_MESSAGE, False),
    ("LayerParameter", "channel_scale_param", 237, F.TYPE_MESSAGE, False),
    ("LayerParameter", "label_specific_add_param", 241, F.TYPE_MESSAGE, False),
    ("NormalizeParameter", "normalize_type", 3001, F.TYPE_STRING, False),
    ("NormalizeParameter", "fix_gradient", 3002, F.TYPE_BOOL, False),
    ("NormalizeParameter", "bp_norm", 3003, F.TYPE_BOOL, False),
    ("NormalizeParameter", "across_spatial", 1, F.TYPE_BOOL, False),
    ("InnerProductParameter", "normalize", 7, F.TYPE_BOOL, False),
    ("AccuracyParameter", "min_is_better", 4, F.TYPE_BOOL, False),
    ("ScaleParameter", "min_value", 6, F.TYPE_FLOAT, False),
    ("ScaleParameter", "max_value", 7, F.TYPE_FLOAT, False),
    ("SoftmaxParameter", "normalize_type", 7, F.TYPE_STRING, False),
    ("LabelSpecificAddParameter", "bias", 1, F.TYPE_FLOAT, False),
    ("LabelSpecificAddParameter", "iteration", 8, F.TYPE_UINT32, False),
    ("ChannelScaleParameter", "init_global_scale", 7, F.TYPE_FLOAT, False),
    ("FlipParameter", "flip_height", 2, F.TYPE_BOOL, False),
    ("LayerParameter", "inner_distance_param", 213, F.TYPE_MESSAGE, False),
    ("LayerParameter", "general_contrastive_loss_param", 215, F.TYPE_MESSAGE, False),
    ("LayerParameter", "general_triplet_loss_param", 217, F.TYPE_MESSAGE, False),
    ("ParameterParameter", "blob_filler", 2, F.TYPE_MESSAGE, False),
    ("InnerDistanceParameter", "distance_type", 7, F.TYPE_STRING, False),
    ("InnerDistanceParameter", "update_center_only", 9, F.TYPE_BOOL, False),
    ("GeneralContrastiveParameter", "normalize_negative", 5, F.TYPE_FLOAT, False),
    ("GeneralContrastiveParameter", "max_negative_margin", 14, F.TYPE_FLOAT, False),
    ("GeneralTripletParameter", "negative_weight", 7, F.TYPE_FLOAT, False),
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
    assert len(lt.keys()) == 54   # BVLC's 40, mobilenet-yolo's RELU6 = 61, hed's CROP = 40, c3d's 12 (3025, 3030-3040)
    assert lt.Value("RELU6") == 61
    assert lt.Value("CROP") == 40
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
                   "BlockGroupLassoSpec", "BlobProtoVector", "Datum", "SolverState",
                   # forks of issue 14
                   "AnnotatedDatum", "AnnotatedDataParameter", "BatchSampler", "Sampler",
                   "SampleConstraint", "EmitConstraint", "NormalizedBBox", "Annotation",
                   "AnnotationGroup", "DistortionParameter", "ExpansionParameter", "NoiseParameter",
                   "ResizeParameter", "SaltPepperParameter", "DetectionEvaluateParameter",
                   "DetectionOutputParameter", "NonMaximumSuppressionParameter",
                   "SaveOutputParameter", "MultiBoxLossParameter", "NormalizeParameter",
                   "PermuteParameter", "PriorBoxParameter", "VideoDataParameter", "LabelMap",
                   "LabelMapItem", "ROIPoolingParameter", "SmoothL1LossParameter",
                   "PSROIPoolingParameter", "BoxAnnotatorOHEMParameter", "BNParameter",
                   "InterpParameter", "UpsampleParameter", "DenseImageDataParameter",
                   "ShuffleChannelParameter", "ReorgParameter", "YoloDetectionOutputParameter",
                   "Yolov3DetectionOutputParameter", "RegionLossParameter", "MishParameter",
                   # face recognition: SphereFace, caffe-face
                   "MarginInnerProductParameter", "CenterLossParameter"):
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

def _table(section_name: str, first: int = 0):
    """Rows of the first table under `## section_name` of NUMBERING.md."""
    rows = []
    section = None
    for line in NUMBERING.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        if section != section_name or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("message", "lineage", "") or set(cells[0]) <= set("-: "):
            continue
        rows.append(cells)
    return rows


def _moved_rows():
    return _table("Moved fields")


def _lineages():
    head = NUMBERING.read_text(encoding="utf-8").split("## ", 1)[0]
    names = set()
    for line in head.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("lineage", "") and not set(cells[0]) <= set("-: "):
            names.add(cells[0])
    return names


def test_numbering_table_matches_schema():
    rows = _moved_rows()
    assert len(rows) >= 10, "the moved-fields table of proto/NUMBERING.md was not found"
    for message, field, original, lineage, new, why in rows:
        assert lineage in _lineages(), lineage
        fd = _field(message, field)
        assert fd.number == int(new), f"{message}.{field}: schema {fd.number}, NUMBERING.md {new}"
        assert int(original) != int(new)
        assert why
        # The original number now belongs to another field of the same message.
        desc = caffe_pb2.DESCRIPTOR.message_types_by_name[message]
        assert int(original) in desc.fields_by_number, f"{message}: {original} is free; why move?"


def test_numbering_lineage_table():
    assert {"upstream", "master", "scnn", "ssd", "fast-rcnn", "rfcn", "pspnet", "deeplab", "segnet",
            "enet", "mobilenet-yolo", "yolov3", "shufflenet", "pr3057", "sphereface", "caffe-face",
            "refinedet", "hed", "c3d", "happynear"} <= _lineages()


def test_numbering_refinedet_rows_match_schema():
    """RefineDet's fields keep their own numbers: the rows of the unchanged-numbers table name them."""
    rows = [r for r in _table("Lineage of the fields not in upstream (numbers unchanged)") if r[3] == "refinedet"]
    assert {(r[0], r[1].split()[0]) for r in rows} == {("DetectionOutputParameter", "objectness_score"),
                                                        ("MultiBoxLossParameter", "objectness_score")}
    for message, field, number, _ in rows:
        fd = _field(message, field.split()[0])
        assert fd.number == int(number) and fd.type == F.TYPE_FLOAT
        assert fd.default_value == pytest.approx(0.01)


def test_numbering_moved_enum_values_match_schema():
    rows = _table("Moved enum values")
    assert rows, "the moved-enum-values table of proto/NUMBERING.md was not found"
    for message, enum, value, original, lineage, new, why in rows:
        assert lineage in _lineages()
        desc = caffe_pb2.DESCRIPTOR.message_types_by_name[message].enum_types_by_name[enum]
        assert desc.values_by_name[value].number == int(new)
        assert int(original) in desc.values_by_number, f"{enum}: {original} is free; why move?"


def test_numbering_same_name_rows_match_schema():
    rows = _table("Same name, other number")
    assert len(rows) >= 10
    for message, field, lineage, theirs, ours in rows:
        assert lineage in _lineages()
        fd = _field(message, field)
        assert fd.number == int(ours) and int(theirs) != fd.number, (message, field)


# --- (5) fork prototxts parse by name --------------------------------------

FORK_NET_TEXT = """
layer { name: "data" type: "AnnotatedData" top: "data" top: "label"
  transform_param { mirror: true mean_value: 104
    resize_param { prob: 1 resize_mode: WARP height: 300 width: 300 interp_mode: LINEAR interp_mode: AREA }
    emit_constraint { emit_type: CENTER }
    distort_param { brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5 contrast_lower: 0.5 }
    expand_param { prob: 0.5 max_expand_ratio: 4.0 } }
  data_param { source: "trainval_lmdb" batch_size: 32 backend: LMDB }
  annotated_data_param { label_map_file: "labelmap.prototxt"
    batch_sampler { sampler { min_scale: 0.3 max_scale: 1.0 min_aspect_ratio: 0.5 max_aspect_ratio: 2.0 }
      sample_constraint { min_jaccard_overlap: 0.1 } max_sample: 1 max_trials: 50 } } }
layer { name: "n" type: "Normalize" bottom: "c" top: "n"
  norm_param { across_spatial: false scale_filler { type: "constant" value: 20 } channel_shared: false } }
layer { name: "p" type: "Permute" bottom: "n" top: "p" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "pb" type: "PriorBox" bottom: "n" bottom: "data" top: "pb"
  prior_box_param { min_size: 30 max_size: 60 aspect_ratio: 2 flip: true clip: false
    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 8 offset: 0.5 } }
layer { name: "loss" type: "MultiBoxLoss" bottom: "l" bottom: "c" bottom: "pb" bottom: "label" top: "loss"
  loss_param { normalization: VALID }
  multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1 num_classes: 21
    share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true
    background_label_id: 0 use_difficult_gt: true neg_pos_ratio: 3 neg_overlap: 0.5 code_type: CENTER_SIZE
    ignore_cross_boundary_bbox: false mining_type: MAX_NEGATIVE } }
layer { name: "det" type: "DetectionOutput" bottom: "l" bottom: "c" bottom: "pb" top: "det"
  detection_output_param { num_classes: 21 share_location: true background_label_id: 0
    nms_param { nms_threshold: 0.45 top_k: 400 } code_type: CENTER_SIZE keep_top_k: 200
    confidence_threshold: 0.01 } }
layer { name: "roi" type: "ROIPooling" bottom: "c" bottom: "rois" top: "roi"
  roi_pooling_param { pooled_w: 6 pooled_h: 6 spatial_scale: 0.0625 } }
layer { name: "sl1" type: "SmoothL1Loss" bottom: "a" bottom: "b" top: "sl1" smooth_l1_loss_param { sigma: 3 } }
layer { name: "ps" type: "PSROIPooling" bottom: "c" bottom: "rois" top: "ps"
  psroi_pooling_param { spatial_scale: 0.0625 output_dim: 21 group_size: 7 } }
layer { name: "bn" type: "BN" bottom: "c" top: "c" bn_param { slope_filler { type: "constant" value: 1 }
  bias_filler { type: "constant" value: 0 } frozen: true momentum: 0.95 } }
layer { name: "bn2" type: "BN" bottom: "c" top: "c" bn_param { scale_filler { type: "constant" value: 1 }
  shift_filler { type: "constant" value: 0.001 } bn_mode: INFERENCE } }
layer { name: "i" type: "Interp" bottom: "c" top: "i" interp_param { zoom_factor: 8 } }
layer { name: "u" type: "Upsample" bottom: "c" bottom: "mask" top: "u" upsample_param { scale: 2 upsample_h: 45 } }
layer { name: "u2" type: "Upsample" bottom: "c" top: "u2" upsample_param { scale: 2 } }
layer { name: "sc" type: "ShuffleChannel" bottom: "c" top: "sc" shuffle_channel_param { group: 3 } }
layer { name: "r" type: "Reorg" bottom: "c" top: "r" reorg_param { stride: 2 } }
layer { name: "pool" type: "Pooling" bottom: "c" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false } }
layer { name: "d" type: "DenseImageData" top: "d" top: "l"
  dense_image_data_param { source: "train.txt" batch_size: 4 shuffle: true } }
layer { name: "dr" type: "Dropout" bottom: "c" top: "c" dropout_param { dropout_ratio: 0.5 sample_weights_test: true scale_train: false } }
layer { name: "r6" type: "ReLU6" bottom: "c" top: "c" relu6_param { negative_slope: 0 } }
layer { name: "yd" type: "YoloDetectionOutput" bottom: "c" top: "yd"
  yolo_detection_output_param { side: 13 num_classes: 20 num_box: 5 biases: 1.08 biases: 1.19 } }
layer { name: "ce" type: "SoftmaxWithLoss" bottom: "c" bottom: "l" top: "ce"
  loss_param { weight_by_label_freqs: true class_weighting: 0.2 class_weighting: 3.1 normalization: PRE_FIXED pre_fixed_normalizer: 4 } }
layer { name: "fc6" type: "MarginInnerProduct" bottom: "fc5" bottom: "label" top: "fc6" top: "lambda"
  param { lr_mult: 1 decay_mult: 1 }
  margin_inner_product_param { num_output: 10572 type: QUADRUPLE weight_filler { type: "xavier" }
    base: 1000 gamma: 0.12 power: 1 lambda_min: 5 iteration: 0 } }
layer { name: "center_loss" type: "CenterLoss" bottom: "fc5" bottom: "label" top: "center_loss"
  param { lr_mult: 1 decay_mult: 2 } center_loss_param { num_output: 10572 center_filler { type: "xavier" } }
  loss_weight: 0.008 }
layer { name: "odm_loss" type: "MultiBoxLoss" bottom: "odm_loc" bottom: "odm_conf" bottom: "arm_priorbox"
  bottom: "label" bottom: "arm_conf_flatten" bottom: "arm_loc" top: "odm_loss"
  multibox_loss_param { num_classes: 21 mining_type: MAX_NEGATIVE objectness_score: 0.01 } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "odm_loc" bottom: "odm_conf_flatten"
  bottom: "arm_priorbox" bottom: "arm_conf_flatten" bottom: "arm_loc" top: "detection_out"
  detection_output_param { num_classes: 21 keep_top_k: 500 confidence_threshold: 0.01 objectness_score: 0.02 } }
"""


def test_fork_text_round_trip():
    n = text_format.Parse(FORK_NET_TEXT, caffe_pb2.NetParameter())
    by = {layer.name: layer for layer in n.layer}
    tp = by["data"].transform_param
    assert len(tp.resize_param) == 1 and tp.resize_param[0].height == 300
    assert list(tp.resize_param[0].interp_mode) == [1, 2]
    assert by["data"].annotated_data_param.batch_sampler[0].max_trials == 50
    assert list(by["p"].permute_param.order) == [0, 2, 3, 1]
    assert by["loss"].multibox_loss_param.code_type == caffe_pb2.PriorBoxParameter.CENTER_SIZE
    assert by["det"].detection_output_param.nms_param.top_k == 400
    assert by["bn2"].bn_param.bn_mode == caffe_pb2.BNParameter.INFERENCE
    assert by["pool"].pooling_param.ceil_mode is False
    assert caffe_pb2.PoolingParameter().ceil_mode is True
    assert not by["u2"].upsample_param.HasField("upsample_h")
    assert by["ce"].loss_param.normalization == caffe_pb2.LossParameter.PRE_FIXED
    mip = by["fc6"].margin_inner_product_param
    assert mip.type == caffe_pb2.MarginInnerProductParameter.QUADRUPLE and mip.lambda_min == 5.0
    assert by["center_loss"].center_loss_param.num_output == 10572
    assert by["odm_loss"].multibox_loss_param.HasField("objectness_score")
    assert by["detection_out"].detection_output_param.objectness_score == pytest.approx(0.02)
    again = text_format.Parse(text_format.MessageToString(n), caffe_pb2.NetParameter())
    assert again == n
    assert caffe_pb2.NetParameter.FromString(n.SerializeToString()) == n


def test_fork_defaults():
    assert caffe_pb2.PriorBoxParameter().offset == pytest.approx(0.5)
    assert caffe_pb2.PriorBoxParameter().flip is True and caffe_pb2.PriorBoxParameter().clip is False
    m = caffe_pb2.MultiBoxLossParameter()
    assert m.match_type == m.PER_PREDICTION and m.mining_type == m.MAX_NEGATIVE
    assert m.loc_loss_type == m.SMOOTH_L1 and m.neg_pos_ratio == 3.0
    assert caffe_pb2.DetectionOutputParameter().keep_top_k == -1
    assert caffe_pb2.NonMaximumSuppressionParameter().nms_threshold == pytest.approx(0.3)
    assert caffe_pb2.NormalizeParameter().eps == pytest.approx(1e-10)
    assert caffe_pb2.ROIPoolingParameter().spatial_scale == 1.0
    assert caffe_pb2.BNParameter().momentum == pytest.approx(0.9)
    assert caffe_pb2.UpsampleParameter().scale == 2   # segnet's default; the YOLO kind reads it only if set
    assert caffe_pb2.InterpParameter().zoom_factor == 1
    assert caffe_pb2.BatchSampler().max_trials == 100
    mip = caffe_pb2.MarginInnerProductParameter()
    assert (mip.type, mip.axis, mip.base, mip.gamma, mip.power, mip.iteration, mip.lambda_min) == (
        mip.SINGLE, 1, 1.0, 0.0, 1.0, 0, 0.0)
    assert [mip.MarginType.Value(n) for n in ("SINGLE", "DOUBLE", "TRIPLE", "QUADRUPLE")] == [0, 1, 2, 3]
    assert caffe_pb2.CenterLossParameter().axis == 1
    for m in (caffe_pb2.DetectionOutputParameter(), caffe_pb2.MultiBoxLossParameter()):
        assert m.objectness_score == pytest.approx(0.01) and not m.HasField("objectness_score")


# --- (6) C3D-v1.0 (facebookarchive/C3D @ 71336a2, C3D-v1.0/src/caffe/proto/caffe.proto) -------------

C3D_NET_TEXT = """
name: "DeepConv3DNet_Sport1M_Val"
layers { name: "data" type: VIDEO_DATA top: "data" top: "label"
  image_data_param { source: "list.txt" use_image: true mean_file: "mean.binaryproto" batch_size: 50
    crop_size: 112 mirror: false show_data: 0 new_height: 128 new_width: 171 new_length: 16 shuffle: false
    sampling_rate: 1 use_temporal_jitter: false mean_value: 0 } }
layers { name: "conv1a" type: CONVOLUTION3D bottom: "data" top: "conv1a" blobs_lr: 1 blobs_lr: 2
  convolution_param { num_output: 64 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1 stride: 1
    temporal_stride: 1 filter_group: 2 weight_filler { type: "gaussian" std: 0.01 } } }
layers { name: "pool1" type: POOLING3D bottom: "conv1a" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 kernel_depth: 1 stride: 2 temporal_stride: 1 } }
layers { name: "ds" type: DOWN_SAMPLING bottom: "pool1" top: "ds"
  down_sampling_param { type: AVERAGE spatial_factor: 2 temporal_factor: 1 } }
layers { name: "ep" type: ELTWISE_PRODUCT bottom: "a" bottom: "b" top: "ep" }
"""


def test_c3d_text_and_numbers():
    n = text_format.Parse(C3D_NET_TEXT, caffe_pb2.NetParameter())
    lt = caffe_pb2.V1LayerParameter.LayerType
    assert [lt.Name(layer.type) for layer in n.layers] == ["VIDEO_DATA", "CONVOLUTION3D", "POOLING3D",
                                                           "DOWN_SAMPLING", "ELTWISE_PRODUCT"]
    ip = n.layers[0].image_data_param
    assert (ip.new_length, ip.use_image, ip.sampling_rate, ip.use_label) == (16, True, 1, True)
    cp = n.layers[1].convolution_param
    assert (cp.kernel_depth, cp.temporal_pad, cp.temporal_stride, cp.filter_group) == (3, 1, 1, 2)
    pp = n.layers[2].pooling_param
    assert (pp.kernel_depth, pp.temporal_stride) == (1, 1)
    assert n.layers[3].down_sampling_param.type == caffe_pb2.DownSamplingParameter.AVERAGE
    assert caffe_pb2.NetParameter.FromString(n.SerializeToString()) == n
    assert _field("BlobProto", "length").number == 3003
    assert _field("VolumeDatum", "length").default_value == 1
    assert caffe_pb2.ConvolutionParameter().temporal_stride == 1 and not caffe_pb2.ConvolutionParameter().kernel_depth
    assert "AggregationParameter" in caffe_pb2.DESCRIPTOR.message_types_by_name


# --- (7) happynear (caffe-windows ms @ 504d8a85: AM-Softmax, NormFace) -----------------------------------

HAPPYNEAR_NET_TEXT = """
layer { name: "norm1" type: "Normalize" bottom: "fc5" top: "norm1" top: "feature_norm" normalize_param { bp_norm: true } }
layer { name: "fc6_l2" type: "InnerProduct" bottom: "norm1" top: "fc6" inner_product_param { num_output: 10516
  normalize: true weight_filler { type: "gaussian_unitball" } bias_term: false } }
layer { name: "m" type: "LabelSpecificAdd" bottom: "fc6" bottom: "label" top: "fc6_margin" top: "margin"
  label_specific_add_param { iteration: 0 bias_base: 0 bias_gamma: -5e-05 bias_power: 1 bias_min: -0.4 bias_max: 0 } }
layer { name: "cs" type: "ChannelScale" bottom: "fc6_margin" bottom: "feature_norm" top: "s" }
layer { name: "sc" type: "Scale" bottom: "s" top: "s" scale_param { num_axes: 0 min_value: 0.01 filler { value: 10 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" top: "loss" softmax_param { normalize_type: "Softmax" } }
layer { name: "acc" type: "Accuracy" bottom: "fc6" bottom: "label" top: "acc" accuracy_param { min_is_better: false } }
layer { name: "flip" type: "Flip" bottom: "data" top: "flip" flip_param { flip_width: true } }
layer { name: "ssd" type: "Normalize" bottom: "c" top: "n" norm_param { across_spatial: false } }
"""


def test_happynear_text_and_the_normalize_message():
    n = text_format.Parse(HAPPYNEAR_NET_TEXT, caffe_pb2.NetParameter())
    assert n.layer[0].HasField("normalize_param") and not n.layer[0].HasField("norm_param")
    assert n.layer[0].normalize_param.bp_norm and n.layer[0].normalize_param.normalize_type == "L2"
    assert n.layer[8].HasField("norm_param") and not n.layer[8].norm_param.across_spatial
    assert n.layer[1].inner_product_param.normalize and n.layer[4].scale_param.min_value == pytest.approx(0.01)
    assert n.layer[2].label_specific_add_param.bias_gamma == pytest.approx(-5e-05)
    assert caffe_pb2.NetParameter.FromString(n.SerializeToString()) == n
    # happynear's binary normalize_param { bp_norm: true } (its field 3) reads as SSD's channel_shared here
    assert caffe_pb2.NormalizeParameter.FromString(b"\x18\x01").HasField("channel_shared")
    rows = [r for r in _table("Lineage of the fields not in upstream (numbers unchanged)") if r[3] == "happynear"]
    assert len(rows) >= 10
    for message, fields, numbers, _ in rows:
        names = [f.strip() for f in re.sub(r"\([^)]*\)", "", fields).split(",")]
        if "-" in numbers:
            lo, hi = (int(v) for v in numbers.split("-"))
            want = list(range(lo, hi + 1))
        else:
            want = [int(v) for v in numbers.split(",")]
        assert [_field(message, name).number for name in names] == want, (message, names)

