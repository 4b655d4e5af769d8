"""V0 nets (``layers { layer { type: "conv" ... } }``) to V1, as Caffe's UpgradeV0Net; shared upgrade
logging and errors."""

from __future__ import annotations

import logging
from typing import Any

from neocaffe.proto import caffe_pb2

from .legacy_types import V0_TO_V1_TYPE

__all__ = ["UpgradeError", "UpgradeLog", "upgrade_v0_net"]

log = logging.getLogger("neocaffe.io.upgrade")
NetParameter = caffe_pb2.NetParameter
V1 = caffe_pb2.V1LayerParameter


class UpgradeError(ValueError):
    """An old-format file Caffe itself refuses to upgrade (its CHECK/FATAL cases)."""


class UpgradeLog(list):
    """Caffe's log lines of one upgrade (a list of str); ``ok`` is False when Caffe reports problems
    ("had one or more problems upgrading ...", the tools then exit with status 1)."""

    ok: bool = True


class UpgradeLogger:
    """Collects Caffe's log lines while logging them."""

    def __init__(self) -> None:
        self.lines = UpgradeLog()

    def __call__(self, level: int, text: str) -> None:
        self.lines.append(text)
        log.log(level, text, stacklevel=2)


def _v0_padding_layers(net: NetParameter) -> NetParameter:
    """UpgradeV0PaddingLayers: drop ``padding`` layers, giving their pad to the conv/pool they feed."""
    out = NetParameter()
    out.CopyFrom(net)
    out.ClearField("layers")
    last_top: dict[str, int] = {name: -1 for name in net.input}
    for i, conn in enumerate(net.layers):
        v0 = conn.layer
        if v0.type != "padding":
            out.layers.add().CopyFrom(conn)
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                raise UpgradeError(f"Unknown blob input {blob} to layer {j}")
            top_idx = last_top[blob]
            if top_idx == -1:
                continue
            source = net.layers[top_idx]
            if source.layer.type == "padding":
                if v0.type not in ("conv", "pool"):
                    raise UpgradeError(f"Padding layer input to non-convolutional / non-pooling layer type "
                                       f"{v0.type}")
                if len(conn.bottom) != 1:
                    raise UpgradeError("Conv Layer takes a single blob as input.")
                if len(source.bottom) != 1:
                    raise UpgradeError("Padding Layer takes a single blob as input.")
                if len(source.top) != 1:
                    raise UpgradeError("Padding Layer produces a single blob as output.")
                target = out.layers[len(out.layers) - 1]
                target.layer.pad = source.layer.pad
                target.bottom[j] = source.bottom[0]
        for blob in conn.top:
            last_top[blob] = i
    return out


def _put(msg: Any, field: str, value: Any) -> None:
    """Set a singular field or append to a repeated one (Caffe's set_x / add_x)."""
    if msg.DESCRIPTOR.fields_by_name[field].is_repeated:
        getattr(msg, field).append(value)
    else:
        setattr(msg, field, value)


# V0 field -> {v0 type: (LayerParameter sub-message, field)}; "*" applies to every type.
_V0_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "num_output": {"conv": ("convolution_param", "num_output"), "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"), "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"), "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"), "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": ("data_param", "source"), "hdf5_data": ("hdf5_data_param", "source"),
               "images": ("image_data_param", "source"), "window_data": ("window_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "scale": {"*": ("transform_param", "scale")},
    "meanfile": {"*": ("transform_param", "mean_file")},
    "batchsize": {"data": ("data_param", "batch_size"), "hdf5_data": ("hdf5_data_param", "batch_size"),
                  "images": ("image_data_param", "batch_size"), "window_data": ("window_data_param", "batch_size")},
    "cropsize": {"*": ("transform_param", "crop_size")},
    "mirror": {"*": ("transform_param", "mirror")},
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", "")},
}
_UNKNOWN_NAME = {"shuffle_images": "shuffle"}  # Caffe's message names this one differently


def _v0_layer(conn: Any, out: Any, say: UpgradeLogger) -> bool:
    """UpgradeV0LayerParameter: one V0 layer connection to a V1LayerParameter."""
    ok = True
    out.Clear()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if not conn.HasField("layer"):
        return ok
    v0 = conn.layer
    if v0.HasField("name"):
        out.name = v0.name
    kind = v0.type
    if v0.HasField("type"):
        if kind not in V0_TO_V1_TYPE:
            raise UpgradeError(f"Unknown layer name: {kind}")
        out.type = V1.LayerType.Value(V0_TO_V1_TYPE[kind])
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for v0_field, targets in _V0_FIELDS.items():
        if not v0.HasField(v0_field):
            continue
        target = targets.get(kind) or targets.get("*")
        if target is None:
            say(logging.ERROR, f"Unknown parameter {_UNKNOWN_NAME.get(v0_field, v0_field)} for layer type {kind}")
            ok = False
            continue
        sub, name = target
        value = getattr(v0, v0_field)
        if not name:
            getattr(out, sub).CopyFrom(value)
        elif v0_field in ("weight_filler", "bias_filler"):
            getattr(getattr(out, sub), name).CopyFrom(value)
        elif v0_field == "pool":
            getattr(out, sub).pool = caffe_pb2.PoolingParameter.PoolMethod.Value(
                caffe_pb2.V0LayerParameter.PoolMethod.Name(value))
        else:
            _put(getattr(out, sub), name, value)
    return ok


def upgrade_v0_net(v0_net: NetParameter, say: UpgradeLogger | None = None) -> tuple[NetParameter, bool]:
    """UpgradeV0Net: (V1 net, fully compatible?)."""
    say = say or UpgradeLogger()
    padded = _v0_padding_layers(v0_net)
    net = NetParameter()
    ok = True
    if padded.HasField("name"):
        net.name = padded.name
    for conn in padded.layers:
        ok &= _v0_layer(conn, net.layers.add(), say)
    net.input.extend(padded.input)
    net.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        net.force_backward = padded.force_backward
    return net, ok
