"""Intel Caffe (intel/caffe, the Intel Distribution of Caffe) fields that neocaffe parses, and what it does with them.

Read from intel/caffe @ 44d536385dc41804a673c527b4c2df2675770dff (``src/caffe/proto/caffe.proto``, its layers and
``src/caffe/solvers/sgd_solver.cpp``).

Fields that change nothing (the engine and performance knobs; neocaffe runs Caffe's CPU/GPU arithmetic, whatever
engine a layer names, and one process per device under ``torch.distributed``): the engine strings
(``NetParameter.engine``, ``LayerParameter.engine``, ``SolverParameter.engine``: "CAFFE", "MKL2017", "MKLDNN",
"MKLDNN:CPU", ...) and the ``MKL2017``/``MKLDNN`` values of the per-layer ``Engine`` enums (Convolution, Pooling,
ReLU, LRN, BatchNorm, Concat, Eltwise, InnerProduct, Split), ``ConvolutionParameter.conv_algorithm`` ("direct",
"winograd"), ``NetParameter.compile_net_state`` (the fork's record of its own layer fusions), the MLSL multinode
fields (``NetParameter.multinode``, ``LayerParameter.multinode``, ``mn_activation_param``, ``mn_grad_compress_param``),
``QuantizationParameter``'s ``bw_*`` widths as Intel's int8 prototxts set them together with scales (see below).

Fields that change Intel Caffe's numbers and that neocaffe parses without applying get one warning per net
(:func:`warn_layers`) or per solver (:func:`warn_solver`), naming each: the int8 quantization scales
(``quantization_param.scale_in``/``scale_out``/``scale_params``, ``is_negative_input``, ``force_u8_input``: its
MKL-DNN int8 convolutions; neocaffe computes in float32), the fused activations (``convolution_param.relu``/
``negative_slope``/``fusion_type``/``coeff``, ``inner_product_param.relu``, ``batch_norm_param.relu``,
``relu_param.fuse``, ``concat_param.per_fla_fuse``), BatchNorm's scale/shift of its MKL engines
(``use_weight_bias``, ``bias_term``, ``filler``, ``bias_filler``) and its statistics over a sub-batch
(``stats_batch_size``, ``NetParameter.bn_stats_batch_size``), ``pooling_param.avg_include_pad: false`` and its 3-D
fields, ``reshape_param.pixelshuffler``, ``roi_pooling_param.pooled_size``, ``transform_param``'s
``random_resize_param``/``random_aspect_ratio_param``/``pad``/``bgr2rgb``, ``data_param.side``. No solver field is
left there (:data:`_SOLVER_IGNORED` is empty; the hook stays for the next one).

Applied: the solver's linear warm-up (``warmup_iter``/``warmup_start_lr``: ``neocaffe.solver.lr_policy.warmup_rate``,
every solver type, as Intel's ``GetLearningRate``; its momentum correction only on request,
``neocaffe.solver.rules.SGD.warmup_momentum_correction``, since Intel's fused CPU SGD does not apply it); its
``multifixed`` policy (``stagelr``/``stageiter``: ``neocaffe.solver.lr_policy.multifixed``); LARS (``local_lr_auto``/
``local_gw_ratio``: ``neocaffe.solver.rules.lars_multipliers``, SGD only, as Intel's ``GetLocalRate``: the blob's
``local_gw_ratio·‖w‖/(‖g‖ + weight_decay·‖w‖)`` replaces its ``lr_mult``); ``disabled_update`` (``Solver::Step``
computes and logs the rate but updates nothing: Intel's multinode code sets it to run its own update; a prototxt that
sets it trains nothing, in Intel Caffe as here); ``test_offset`` (tests where ``(iter − test_offset) % test_interval
== 0``, in ``Step`` and after ``Solve``). Intel's ``plateau`` policy is SSD's code, after its warm-up
(``neocaffe.solver.lr_policy.plateau``).
The fused activations stay warned because Intel's reference path does not apply them either: its CAFFE-engine
Convolution and InnerProduct (``conv_layer.cpp``, ``inner_product_layer.cpp``) never read ``relu``/``negative_slope``;
only its MKL-DNN layers do (``mkldnn_convolution_layer.cpp``/``mkldnn_inner_product_layer.cpp``: an ``eltwise_relu``
post-op with ``alpha = negative_slope`` on the forward primitive, none in their backward), and ``Net::CompileNet``
sets them itself when it folds a following ReLU into an MKLDNN-engine Convolution/InnerProduct (TEST phase: the ReLU
layer is dropped; TRAIN: kept, with ``relu_param.fuse``). A prototxt that sets them by hand changes Intel's outputs
only under the MKLDNN engine; neocaffe keeps the net's own ReLU layers, which is what the CAFFE engine computes.
``image_data_param.min_height``/``min_width`` (LRCN's code, LisaAnne/lisa-caffe-public, copied by Intel) are applied by
ImageData (:func:`neocaffe.data.datum.min_size`: an image under either is upscaled keeping its aspect ratio) as
Intel's non-OpenMP build reads every image; its default OpenMP build reads the batch's first image with them and the
others without. ``transform_param.flow`` changes nothing in Intel Caffe: the one ``Transform`` overload that reads it
(LRCN's raw-Datum code) is called by none of its layers; neocaffe's Data applies LRCN's flow to raw Datums except in
a net of ``lineage: "intelcaffe"`` (``neocaffe.layers.data_layers.DataLayer``), and ImageData never does (in
neither fork).
Intel's ``EvalDetection`` (its YOLOv2 TEST record) is :mod:`neocaffe.layers.intel_eval_detection`; its
``SpatialDropout`` is :mod:`neocaffe.layers.spatial_dropout`; its YOLOv2 ``RegionLoss`` shares the type name of
MobileNet-YOLO's and is :mod:`neocaffe.layers.region_loss`, which computes Intel's loss whenever the label bottom is
SSD's ``1 x 1 x K x 8`` (the differences are listed there).
"""
from __future__ import annotations

import logging
from typing import Any

from neocaffe.graph.fork_notes import layers_shown

log = logging.getLogger("neocaffe.graph")

#: (layer parameter message, field) pairs that change Intel Caffe's numbers and that neocaffe does not apply
_LAYER_IGNORED = (
    ("quantization_param", "scale_in"), ("quantization_param", "scale_out"), ("quantization_param", "scale_params"),
    ("quantization_param", "is_negative_input"), ("quantization_param", "force_u8_input"),
    ("convolution_param", "relu"), ("convolution_param", "negative_slope"), ("convolution_param", "fusion_type"),
    ("convolution_param", "coeff"), ("inner_product_param", "relu"), ("inner_product_param", "negative_slope"),
    ("batch_norm_param", "relu"), ("batch_norm_param", "use_weight_bias"), ("batch_norm_param", "bias_term"),
    ("batch_norm_param", "filler"), ("batch_norm_param", "stats_batch_size"), ("relu_param", "fuse"),
    ("concat_param", "per_fla_fuse"), ("pooling_param", "avg_include_pad"), ("pooling_param", "pad_3d"),
    ("pooling_param", "kernel_size_3d"), ("pooling_param", "stride_3d"), ("reshape_param", "pixelshuffler"),
    ("roi_pooling_param", "pooled_size"), ("transform_param", "random_resize_param"),
    ("transform_param", "random_aspect_ratio_param"), ("transform_param", "pad"), ("transform_param", "bgr2rgb"),
    ("data_param", "side"),
)

#: solver fields of Intel Caffe that change training and that neocaffe does not apply: none left (LARS,
#: ``disabled_update`` and ``test_offset`` are applied by neocaffe.solver)
_SOLVER_IGNORED: tuple[str, ...] = ()


def _is_set(msg: Any, f: str) -> bool:
    fd = msg.DESCRIPTOR.fields_by_name[f]
    if fd.is_repeated:
        return len(getattr(msg, f)) > 0
    if fd.message_type is not None:
        return msg.HasField(f)
    return msg.HasField(f) and getattr(msg, f) != fd.default_value


def layer_notes(net_param: Any) -> list[str]:
    """Intel Caffe's fields of :data:`_LAYER_IGNORED` that the net sets, grouped as ``message.field (layer 'a', ...)``."""
    found: dict[str, list[str]] = {}
    if net_param.HasField("bn_stats_batch_size") and net_param.bn_stats_batch_size != 0:
        found[f"bn_stats_batch_size = {net_param.bn_stats_batch_size}"] = []
    for lp in net_param.layer:
        for msg, f in _LAYER_IGNORED:
            if lp.HasField(msg) and _is_set(getattr(lp, msg), f):
                found.setdefault(f"{msg}.{f}", []).append(lp.name)
        if lp.HasField("batch_norm_param") and lp.batch_norm_param.HasField("bias_filler") and (
                lp.batch_norm_param.HasField("use_weight_bias") or lp.batch_norm_param.HasField("filler")):
            found.setdefault("batch_norm_param.bias_filler", []).append(lp.name)  # Intel's, beside its scale filler
    out = []
    for what, names in found.items():
        out.append(f"{what} (layer {layers_shown(names)})" if names else what)
    return out


def warn_layers(net_param: Any, source: str) -> list[str]:
    """Log one warning for the net when :func:`layer_notes` finds anything; return the notes."""
    notes = layer_notes(net_param)
    if notes:
        log.warning("%s: net '%s' sets Intel Caffe's fields %s: parsed but not applied by neocaffe (it computes in "
                    "float32 without Intel's int8 scales, fusions, BatchNorm scale/shift or data options; its "
                    "outputs differ there from Intel Caffe's)", source, net_param.name, "; ".join(notes))
    return notes


def solver_notes(solver_param: Any) -> list[str]:
    """Intel Caffe's solver fields set in ``solver_param`` (:data:`_SOLVER_IGNORED`), as ``field = value``."""
    out = []
    for f in _SOLVER_IGNORED:
        if _is_set(solver_param, f):
            v = getattr(solver_param, f)
            out.append(f"{f} = {f'{v:.7g}' if isinstance(v, float) else v}")
    return out


def warn_solver(solver_param: Any, source: str) -> list[str]:
    notes = solver_notes(solver_param)
    if notes:
        log.warning("%s: Intel Caffe solver fields %s are parsed but not applied by neocaffe (Caffe's update "
                    "unchanged)", source, "; ".join(notes))
    return notes


__all__ = ["layer_notes", "warn_layers", "solver_notes", "warn_solver"]
