"""Caffe's upgrade_proto semantics: old nets and solvers to the current schema.

Order as UpgradeNetAsNeeded: V0 -> V1 (padding layers folded into the next conv/pool), data
transformation fields -> ``transform_param``, V1 ``layers`` -> ``layer``, net ``input`` fields -> an
``Input`` layer, BatchNorm param specs removed. Solvers: ``solver_type`` enum -> ``type`` string.
Caffe's log lines are logged (logger ``neocaffe.io.upgrade``) and returned.
C3D-v1.0's V1 layer types (facebookarchive/C3D) map to their class names (``CONVOLUTION3D`` ->
``Convolution3D``, ``VIDEO_DATA`` -> ``VideoData``; ``legacy_types.C3D_V1_TYPES``).
"""

from __future__ import annotations

import logging
from typing import Any

from neocaffe.proto import caffe_pb2

from .legacy_types import V1_TO_V2_TYPE
from .upgrade_v0 import UpgradeError, UpgradeLog, UpgradeLogger, upgrade_v0_net

__all__ = [
    "UpgradeError", "UpgradeLog", "upgrade_net", "upgrade_solver", "net_needs_upgrade",
    "net_needs_v0_to_v1_upgrade", "net_needs_data_upgrade", "net_needs_v1_to_v2_upgrade", "net_needs_input_upgrade",
    "net_needs_batchnorm_upgrade", "solver_needs_type_upgrade", "upgrade_v0_net", "upgrade_v1_net",
    "upgrade_net_data_transformation", "upgrade_net_input", "upgrade_net_batchnorm", "upgrade_solver_type",
    "upgrade_blob_proto",
]

NetParameter = caffe_pb2.NetParameter
V1 = caffe_pb2.V1LayerParameter


# ---------------------------------------------------------------- checks


def net_needs_v0_to_v1_upgrade(net: NetParameter) -> bool:
    return any(layer.HasField("layer") for layer in net.layers)


def net_needs_v1_to_v2_upgrade(net: NetParameter) -> bool:
    return len(net.layers) > 0


_DATA_TYPES = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param", V1.WINDOW_DATA: "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def net_needs_data_upgrade(net: NetParameter) -> bool:
    for layer in net.layers:
        name = _DATA_TYPES.get(layer.type)
        if name and any(getattr(layer, name).HasField(f) for f in _TRANSFORM_FIELDS):
            return True
    return False


def net_needs_input_upgrade(net: NetParameter) -> bool:
    return len(net.input) > 0


def net_needs_batchnorm_upgrade(net: NetParameter) -> bool:
    return any(layer.type == "BatchNorm" and len(layer.param) == 3 for layer in net.layer)


def net_needs_upgrade(net: NetParameter) -> bool:
    return (net_needs_v0_to_v1_upgrade(net) or net_needs_v1_to_v2_upgrade(net) or net_needs_data_upgrade(net)
            or net_needs_input_upgrade(net) or net_needs_batchnorm_upgrade(net))


def solver_needs_type_upgrade(solver: caffe_pb2.SolverParameter) -> bool:
    return solver.HasField("solver_type")


# ---------------------------------------------------------------- data transformation, V1 -> V2


def upgrade_net_data_transformation(net: NetParameter) -> None:
    """UpgradeNetDataTransformation (in place): data/image_data/window_data_param transform fields move
    into ``transform_param``; both sub-messages become present, as Caffe's mutable_*() makes them."""
    for layer in net.layers:
        name = _DATA_TYPES.get(layer.type)
        if not name:
            continue
        param = getattr(layer, name)
        param.SetInParent()
        layer.transform_param.SetInParent()
        for f in _TRANSFORM_FIELDS:
            if param.HasField(f):
                setattr(layer.transform_param, f, getattr(param, f))
                param.ClearField(f)


# Caffe's UpgradeV1LayerParameter copies exactly these sub-messages.
_V1_COPIED = (
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param", "convolution_param",
    "data_param", "dropout_param", "dummy_data_param", "eltwise_param", "exp_param", "hdf5_data_param",
    "hdf5_output_param", "hinge_loss_param", "image_data_param", "infogain_loss_param", "inner_product_param",
    "lrn_param", "memory_data_param", "mvn_param", "pooling_param", "power_param", "relu_param",
    "sigmoid_param", "softmax_param", "slice_param", "tanh_param", "threshold_param", "window_data_param",
    "transform_param", "loss_param",
)


def _v1_layer(v1: Any, out: Any, say: UpgradeLogger) -> bool:
    """UpgradeV1LayerParameter: one V1LayerParameter to a LayerParameter."""
    ok = True
    out.Clear()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        out.type = V1_TO_V2_TYPE[V1.LayerType.Name(v1.type)]
    out.blobs.extend(v1.blobs)

    def spec(i: int) -> Any:
        while len(out.param) <= i:
            out.param.add()
        return out.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(V1.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    out.loss_weight.extend(v1.loss_weight)
    for name in _V1_COPIED:
        if v1.HasField(name):
            getattr(out, name).CopyFrom(getattr(v1, name))
    if v1.HasField("type") and v1.type == V1.ELTWISE_PRODUCT:  # C3D-v1.0's EltwiseProductLayer
        out.eltwise_param.operation = caffe_pb2.EltwiseParameter.PROD
    if v1.HasField("down_sampling_param"):  # C3D-v1.0's; ours at 10002 (proto/NUMBERING.md)
        out.down_sampling_param.CopyFrom(v1.down_sampling_param)
    if v1.HasField("layer"):
        say(logging.ERROR, "Input NetParameter has V0 layer -- ignoring.")
        ok = False
    return ok


def upgrade_v1_net(v1_net: NetParameter, say: UpgradeLogger | None = None) -> tuple[NetParameter, bool]:
    """UpgradeV1Net: (net with ``layer`` entries, fully compatible?)."""
    say = say or UpgradeLogger()
    ok = True
    if len(v1_net.layer) > 0:
        say(logging.ERROR, "Input NetParameter to be upgraded already specifies 'layer' fields; these will "
                           "be ignored for the upgrade.")
        ok = False
    net = NetParameter()
    net.CopyFrom(v1_net)
    net.ClearField("layers")
    net.ClearField("layer")
    for i, v1 in enumerate(v1_net.layers):
        if not _v1_layer(v1, net.layer.add(), say):
            say(logging.ERROR, f"Upgrade of input layer {i} failed.")
            ok = False
    if not net.lineage and any(v1.type == V1.CROP for v1 in v1_net.layers):
        net.lineage = "hed"  # only s9xie/hed's schema has V1 CROP: its coordinate-map Crop (neocaffe/layers/hed.py)
    return net, ok


# ---------------------------------------------------------------- input fields, BatchNorm


def upgrade_net_input(net: NetParameter) -> None:
    """UpgradeNetInput (in place): ``input`` + ``input_shape``/``input_dim`` -> a first ``Input`` layer
    named "input"; inputs without shapes (legacy caffemodels) are simply dropped."""
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    if has_shape or has_dim:
        layer = net.layer.add()
        layer.name = "input"
        layer.type = "Input"
        for i, top in enumerate(net.input):
            layer.top.append(top)
            shape = layer.input_param.shape.add()
            if has_shape:
                if i >= len(net.input_shape):
                    raise UpgradeError(f"input '{top}' has no input_shape ({len(net.input)} inputs, "
                                       f"{len(net.input_shape)} input_shape)")
                shape.CopyFrom(net.input_shape[i])
            else:
                if 4 * i + 4 > len(net.input_dim):
                    raise UpgradeError(f"input '{top}' has no 4 input_dim values ({len(net.input)} inputs, "
                                       f"{len(net.input_dim)} input_dim)")
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        layers = list(net.layer)
        net.ClearField("layer")
        net.layer.extend([layers[-1]] + layers[:-1])
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


def upgrade_net_batchnorm(net: NetParameter) -> None:
    """UpgradeNetBatchNorm (in place): BatchNorm layers declaring 3 param specs lose them (the layer fixes
    its statistics' lr_mult to 0 itself)."""
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            layer.ClearField("param")


# ---------------------------------------------------------------- entry points


def upgrade_net(net: NetParameter, source: str = "<net>") -> tuple[NetParameter, UpgradeLog]:
    """UpgradeNetAsNeeded on a copy of ``net``: (upgraded net, Caffe's log lines)."""
    say = UpgradeLogger()
    out = NetParameter()
    out.CopyFrom(net)
    if net_needs_v0_to_v1_upgrade(out):
        say(logging.INFO, f"Attempting to upgrade input file specified using deprecated V0LayerParameter: {source}")
        out, ok = upgrade_v0_net(out, say)
        say.lines.ok &= ok
        if not ok:
            say(logging.ERROR, "Warning: had one or more problems upgrading V0NetParameter to NetParameter "
                               "(see above); continuing anyway.")
        else:
            say(logging.INFO, "Successfully upgraded file specified using deprecated V0LayerParameter")
        say(logging.WARNING, "Note that future Caffe releases will not support V0NetParameter; use "
                             "./build/tools/upgrade_net_proto_text for prototxt and "
                             "./build/tools/upgrade_net_proto_binary for model weights upgrade this and any "
                             "other net protos to the new format.")
    if net_needs_data_upgrade(out):
        say(logging.INFO, f"Attempting to upgrade input file specified using deprecated transformation "
                          f"parameters: {source}")
        upgrade_net_data_transformation(out)
        say(logging.INFO, "Successfully upgraded file specified using deprecated data transformation parameters.")
        say(logging.WARNING, "Note that future Caffe releases will only support transform_param messages for "
                             "transformation fields.")
    if net_needs_v1_to_v2_upgrade(out):
        say(logging.INFO, f"Attempting to upgrade input file specified using deprecated V1LayerParameter: {source}")
        out, ok = upgrade_v1_net(out, say)
        say.lines.ok &= ok
        if not ok:
            say(logging.ERROR, "Warning: had one or more problems upgrading V1LayerParameter (see above); "
                               "continuing anyway.")
        else:
            say(logging.INFO, "Successfully upgraded file specified using deprecated V1LayerParameter")
    if net_needs_input_upgrade(out):
        say(logging.INFO, f"Attempting to upgrade input file specified using deprecated input fields: {source}")
        upgrade_net_input(out)
        say(logging.INFO, "Successfully upgraded file specified using deprecated input fields.")
        say(logging.WARNING, "Note that future Caffe releases will only support input layers and not input "
                             "fields.")
    if net_needs_batchnorm_upgrade(out):
        say(logging.INFO, f"Attempting to upgrade batch norm layers using deprecated params: {source}")
        upgrade_net_batchnorm(out)
        say(logging.INFO, "Successfully upgraded batch norm layers using deprecated params.")
    return out, say.lines


_SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                 "ADADELTA": "AdaDelta", "ADAM": "Adam"}


def upgrade_solver_type(solver: caffe_pb2.SolverParameter, say: UpgradeLogger | None = None) -> bool:
    """UpgradeSolverType (in place): ``solver_type: ADAM`` -> ``type: "Adam"``."""
    say = say or UpgradeLogger()
    if solver.HasField("solver_type") and solver.HasField("type"):
        raise UpgradeError("Failed to upgrade solver: old solver_type field (enum) and new type field "
                           "(string) cannot be both specified in solver proto text.")
    if not solver.HasField("solver_type"):
        say(logging.ERROR, "Warning: solver type already up to date. ")
        return False
    solver.type = _SOLVER_TYPES[caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)]
    solver.ClearField("solver_type")
    return True


def upgrade_solver(solver: caffe_pb2.SolverParameter,
                   source: str = "<solver>") -> tuple[caffe_pb2.SolverParameter, UpgradeLog]:
    """UpgradeSolverAsNeeded on a copy of ``solver``: (upgraded solver, Caffe's log lines)."""
    say = UpgradeLogger()
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(solver)
    if solver_needs_type_upgrade(out):
        say(logging.INFO, f"Attempting to upgrade input file specified using deprecated 'solver_type' field "
                          f"(enum)': {source}")
        if not upgrade_solver_type(out, say):
            say.lines.ok = False
            say(logging.ERROR, "Warning: had one or more problems upgrading SolverType (see above).")
        else:
            say(logging.INFO, "Successfully upgraded file specified using deprecated 'solver_type' field (enum) "
                              "to 'type' field (string).")
            say(logging.WARNING, "Note that future Caffe releases will only support 'type' field (string) for "
                                 "a solver's type.")
    return out, say.lines


def upgrade_blob_proto(blob: caffe_pb2.BlobProto, target_shape: tuple[int, ...] | None = None) -> None:
    """Legacy dims -> BlobShape (in place). ``num/channels/height/width`` become ``shape`` (4-D, or
    ``target_shape`` when Caffe's Blob::ShapeEquals accepts it, e.g. 1x1x500x800 -> 500x800)."""
    legacy_fields = ("num", "channels", "height", "width")
    if not any(blob.HasField(f) for f in legacy_fields):
        return
    legacy = tuple(getattr(blob, f) for f in legacy_fields)
    shape: tuple[int, ...] = legacy
    if target_shape is not None:
        padded = (1,) * (4 - len(target_shape)) + tuple(target_shape) if len(target_shape) <= 4 else None
        if padded != legacy:
            raise UpgradeError(f"legacy blob {' '.join(map(str, legacy))} does not fit shape "
                               f"{' '.join(map(str, target_shape))}")
        shape = tuple(target_shape)
    for f in legacy_fields:
        blob.ClearField(f)
    blob.shape.Clear()
    blob.shape.dim.extend(shape)
