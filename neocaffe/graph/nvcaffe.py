"""NVCaffe (NVIDIA/caffe 0.15-0.17, DIGITS) fields that neocaffe parses but does not honor, explained in the log.

NVCaffe's mixed precision (``NetParameter.default_forward_type``/``default_backward_type``/``default_*_math``,
``LayerParameter.forward_type``/``backward_type``/``forward_math``/``backward_math``, ``global_grad_scale``, ...)
picks the storage and math type of each layer on NVIDIA GPUs. neocaffe computes in float32 whatever these say (its
own opt-in precision modes, ``tf32``/``bf16``, are asked for by name, not by the prototxt): a net that asks for
another type gets one warning naming the fields, never a silent change. The cuDNN/engine knobs
(``cudnn_math_override``, ``conv_algos_override``, ``reduce_buckets``, ``eltwise_mem_sharing``, ``engine``) do not
change Caffe's numbers and are ignored, except a scale_bias ``BatchNorm``'s ``engine: CUDNN``, whose running
variance is cuDNN's unbiased one (:mod:`neocaffe.layers._cudnn_bn`). DataParameter's ``shuffle`` with ``cache: true`` in TRAIN (NVCaffe's
DataReader reshuffles its cache at every pass after the first) is applied by the Data layer
(:class:`neocaffe.data.batches.DBBatchMaker`: the same distribution, neocaffe's own seeded draws). The random
resizes and stretches of ``transform_param`` (``img_rand_resize_*``, ``rand_resize_ratio_*``, ``*_stretch_*``,
``allow_upscale``, ``interpolation_algo_*``) are applied by :mod:`neocaffe.data.nv_resize` (Data and ImageData).
Applied as NVCaffe computes them (NVIDIA/caffe caffe-0.17 @ 87a25543a68e0e5e753923ac4a8b8be6392a41f7): ELU's
``lambda`` (``elu_layer.cpp``/``.cu``: :class:`neocaffe.layers.neuron.ELULayer`) and SoftmaxWithLoss's
``loss_param.label_smoothing`` (its GPU backward, ``softmax_loss_layer.cu``:
:class:`neocaffe.layers.softmax_loss.SoftmaxWithLoss`), ImageData's ``image_data_param.short_side``
(``util/io.cpp``: :func:`neocaffe.data.datum.read_image`). ``pooling_param.torch_pooling`` and
``multibox_loss_param.ignore_difficult_gt`` are declared in NVCaffe's caffe.proto but read nowhere in its code:
NVCaffe's outputs do not change with them, nor do neocaffe's; a net that sets them gets its own note
(:func:`unread_notes`), since its author may expect what the proto comment promises (floor rounding). The solver's
own NVCaffe fields: :func:`solver_notes`."""
from __future__ import annotations

import logging
from typing import Any

from neocaffe.graph.fork_notes import layers_shown

log = logging.getLogger("neocaffe.graph")

FLOAT = 1  # NVCaffe's Type.FLOAT: every *_type / *_math field's default
_NET_TYPES = ("default_forward_type", "default_backward_type", "default_forward_math", "default_backward_math")
_LAYER_TYPES = ("forward_type", "backward_type", "forward_math", "backward_math")
_TYPE_NAMES = {0: "DOUBLE", 1: "FLOAT", 2: "FLOAT16", 3: "INT", 4: "UINT", 5: "BOOL"}


def precision_notes(net_param: Any) -> list[str]:
    """The NVCaffe precision fields of a net that ask for something other than float32, as ``field = VALUE``."""
    notes = [f"{f} = {_TYPE_NAMES.get(getattr(net_param, f), getattr(net_param, f))}" for f in _NET_TYPES
             if net_param.HasField(f) and getattr(net_param, f) != FLOAT]
    if net_param.HasField("global_grad_scale") and net_param.global_grad_scale != 1:
        notes.append(f"global_grad_scale = {net_param.global_grad_scale:g}")
    if net_param.global_grad_scale_adaptive:
        notes.append("global_grad_scale_adaptive = true")
    layers: dict[str, list[str]] = {}
    for lp in net_param.layer:
        for f in _LAYER_TYPES:
            if lp.HasField(f) and getattr(lp, f) != FLOAT:
                layers.setdefault(f"{f} = {_TYPE_NAMES.get(getattr(lp, f), getattr(lp, f))}", []).append(lp.name)
    for what, names in layers.items():
        notes.append(f"{what} (layer {layers_shown(names)})")
    return notes


def warn_precision(net_param: Any, source: str) -> list[str]:
    """Log one warning for the net when :func:`precision_notes` finds anything; return the notes."""
    notes = precision_notes(net_param)
    if notes:
        log.warning("%s: net '%s' sets NVCaffe's precision fields %s: neocaffe computes in float32 "
                    "(NVCaffe's FLOAT16 storage/math and loss scaling are not emulated; ask for neocaffe's own "
                    "modes, tf32/bf16, by name)", source, net_param.name, "; ".join(notes))
    return notes


#: NVCaffe's layer fields that change its numbers and that neocaffe parses without applying (warned when set to a
#: value other than the default): (parameter message, field). None at present: ``data_param.shuffle`` (with
#: ``cache: true``, TRAIN) is applied by the Data layer.
_LAYER_IGNORED: tuple[tuple[str, str], ...] = ()

#: fields in NVCaffe's caffe.proto that no code of NVCaffe reads (caffe-0.17 @ 87a25543: ``git grep`` finds them
#: only in src/caffe/proto/caffe.proto): NVCaffe computes as if unset, and so does neocaffe
_LAYER_UNREAD = (("pooling_param", "torch_pooling"), ("multibox_loss_param", "ignore_difficult_gt"))


def _set_fields(net_param: Any, fields: tuple[tuple[str, str], ...]) -> list[str]:
    out = []
    for lp in net_param.layer:
        for msg, f in fields:
            if not lp.HasField(msg):
                continue
            sub = getattr(lp, msg)
            if sub.HasField(f) and getattr(sub, f) != sub.DESCRIPTOR.fields_by_name[f].default_value:
                v = getattr(sub, f)
                out.append(f"layer '{lp.name}': {msg}.{f} = {f'{v:.7g}' if isinstance(v, float) else v}")
    return out


def layer_notes(net_param: Any) -> list[str]:
    """NVCaffe's layer fields (:data:`_LAYER_IGNORED`) set to other than their defaults, as
    ``layer 'name': message.field = value``."""
    return _set_fields(net_param, _LAYER_IGNORED)


def unread_notes(net_param: Any) -> list[str]:
    """The fields of :data:`_LAYER_UNREAD` set to other than their defaults, as :func:`layer_notes` writes them."""
    return _set_fields(net_param, _LAYER_UNREAD)


def warn_layers(net_param: Any, source: str) -> list[str]:
    """Log one warning for the net when :func:`layer_notes` finds anything, and one when :func:`unread_notes`
    does; return the notes of both."""
    notes = layer_notes(net_param)
    if notes:
        log.warning("%s: net '%s' sets NVCaffe's fields %s: parsed but not applied by neocaffe (its outputs, data or "
                    "losses differ there from NVCaffe's)", source, net_param.name, "; ".join(notes))
    unread = unread_notes(net_param)
    if unread:
        log.warning("%s: net '%s' sets %s: declared in NVCaffe's caffe.proto but read by none of its code (NVIDIA/"
                    "caffe 0.17); neocaffe, like NVCaffe, computes as if unset (torch_pooling: Caffe's ceil "
                    "rounding, not floor)", source, net_param.name, "; ".join(unread))
    return notes + unread


#: solver fields of NVCaffe that neocaffe parses and ignores, with their defaults (set to another value: warned)
_SOLVER_IGNORED = ("rampup_interval", "rampup_lr", "min_lr", "momentum_policy", "max_momentum", "momentum_power",
                   "larc", "larc_policy", "larc_eta", "larc_turbo", "weight_decay_policy", "weight_decay_power",
                   "max_weight_decay", "solver_data_type", "test_and_snapshot_last_epochs")


def solver_notes(solver_param: Any) -> list[str]:
    """NVCaffe's solver fields set in ``solver_param`` that change training in NVCaffe and that neocaffe does not
    apply (LARC, learning-rate ramp-up and floor, momentum and weight-decay policies, FLOAT16 solver data).
    ``store_blobs_in_old_format`` needs nothing: neocaffe always writes BVLC's float ``data``."""
    out = []
    for f in _SOLVER_IGNORED:
        if solver_param.HasField(f):
            v = getattr(solver_param, f)
            default = solver_param.DESCRIPTOR.fields_by_name[f].default_value
            if v != default:
                shown = _TYPE_NAMES.get(v, v) if f == "solver_data_type" else (f"{v:.7g}" if isinstance(v, float) else v)
                out.append(f"{f} = {shown}")
    return out


def warn_solver(solver_param: Any, source: str) -> list[str]:
    notes = solver_notes(solver_param)
    if notes:
        log.warning("%s: NVCaffe solver fields %s are parsed but not applied by neocaffe (its solver runs Caffe's "
                    "lr_policy, momentum and weight decay unchanged, in float32)", source, "; ".join(notes))
    return notes


__all__ = ["precision_notes", "warn_precision", "layer_notes", "unread_notes", "warn_layers", "solver_notes", "warn_solver"]
