"""ristretto: Ristretto's tool (pmgysel/caffe @ 614963cb: ``tools/ristretto.cpp``, ``src/caffe/ristretto/
quantization.cpp``, ``Net::RangeInLayers`` in ``src/caffe/net.cpp``), as ``examples/ristretto`` calls it::

    ristretto quantize --model=train_val.prototxt --weights=net.caffemodel --model_quantized=q.prototxt \\
        --trimming_mode=dynamic_fixed_point [--gpu=0] [--iterations=50] [--error_margin=2]

1. The TEST net scores ``--iterations`` batches; its accuracy (the mean of the first value of the first
   output blob, outputs in name order as Caffe's) is the baseline.
2. The TRAIN net runs 10 batches (no backward); per layer of type exactly Convolution or InnerProduct, the
   largest |x| of its first bottom, of its first top (as the blob holds it after the forward: after an
   in-place ReLU) and of its weights (not the bias).
3. ``dynamic_fixed_point``: ``il_in = ceil(log2(max_in))``, ``il_out = ceil(log2(max_out))``, ``il_params =
   ceil(log2(max_params) + 1)``, ``fl = bw - il`` (activations get no sign bit: values above 2^(il-1)
   saturate, the fork's "reduce the integer length by one bit"). Widths 16, 8, 4, 2, 1 are tried in turn,
   stopping after the first whose accuracy + ``error_margin``/100 < baseline, for the Convolution weights
   alone, the InnerProduct weights alone, then the activations (in = out) of both; each part keeps the last
   width before its first failure (32 when 16 fails); the net with all three is scored and written.
   ``minifloat``: ``exp_bits = max(4, ceil(log2(log2(max) - 1) + 1))`` over every ``max_in``/``max_out`` (one
   with ``log2(max) - 1 <= 0`` adds nothing: the fork's NaN/-inf cast to int); widths 16, 8, ... while ``bw - 1 -
   exp_bits > 0`` on the whole net (``mant_bits = bw - exp_bits - 1``); the best is written, not scored.
   ``integer_power_of_2_weights``: weights +/-2^e, e in [-8, -1], activations 8-bit dynamic fixed point.
   Dynamic fixed point converts layers whose type *contains* Convolution or InnerProduct (or FcRistretto), the
   other two those whose type *is* Convolution/ConvolutionRistretto or InnerProduct/FcRistretto (the fork's
   two tests). The upgraded net is written in protobuf's text format (fields in number order), ``state``
   dropped as the fork's ``release_state``.
4. The log: the fork's lines (``Running for N iterations.``, ``Batch i, name = v``, ``Loss:``), the summary.

Deviations: ``--gpu`` on a machine without CUDA warns and runs on the CPU (the fork stops); the trimming mode,
``--iterations`` >= 1 and the files are checked before any net runs; an existing ``--model_quantized`` stays
until the new file replaces it (the fork's write probe deletes it); a layer the dynamic fixed point edit
converts without measured ranges (``ConvolutionDepthwise``, a TEST-only Convolution) or whose range is 0 is an
error naming it (the fork reads past its vectors, or casts -inf); ``log2`` in double on the float maxima. A
minifloat net whose 16 bits fail is written with ``mant_bits`` 27, as the fork's; the layers refuse > 23 (a
warning says so). Ristretto V1's mode names (``fixed_point``, ``mini_floating_point``, ``power_of_2_weights``;
``examples/ristretto/quantize_squeezenet.sh`` before the fork's ``fc109ba1``) are taken, with a warning, as the
V2 modes above: the search and the written net are V2's (layer inputs trimmed too), not V1's.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Sequence

import numpy as np
import torch

from neocaffe.cli.caffe import test_batch
from neocaffe.cli.log import glog_to_stderr
from neocaffe.flags import Flag, parse_command
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net_with_source, write_prototxt
from neocaffe.io.weights import load_weights
from neocaffe.layers.base import TEST, TRAIN
from neocaffe.proto import caffe_pb2
from neocaffe.tools.ristretto_ranges import (BITWIDTHS, POW2_ACTIVATION_BITS, IntegerLengths, Ranges, RistrettoError,
                                             choose_bitwidth, edit_dynamic_fixed_point, edit_minifloat,
                                             edit_power_of_2_weights, fails, integer_length, minifloat_exp_bits)

__all__ = ["main", "quantize", "RistrettoError", "Ranges", "integer_length", "minifloat_exp_bits", "choose_bitwidth",
           "edit_dynamic_fixed_point", "edit_minifloat", "edit_power_of_2_weights", "TRIMMING_MODES", "BITWIDTHS"]

log = logging.getLogger("neocaffe.tools.ristretto")
f32 = np.float32

TRIMMING_MODES = ("dynamic_fixed_point", "minifloat", "integer_power_of_2_weights")
# Ristretto V1's mode names (before the fork's fc109ba1): its scripts run, with V2's search and output
V1_TRIMMING_MODES = {"fixed_point": "dynamic_fixed_point", "mini_floating_point": "minifloat",
                     "power_of_2_weights": "integer_power_of_2_weights"}
STATS_BATCHES = 10                 # TRAIN batches for the ranges
ANALYSIS = ("Network accuracy analysis for", "Convolutional (CONV) and fully", "connected (FC) layers.")

PROG = "ristretto"
TEXT = ("command line brew\nusage: ristretto <command> <args>\n\ncommands:\n"
        "  quantize        Trim 32bit floating point net\n")
FLAGS: dict[str, Flag] = {
    "model": Flag(str, "", "The net prototxt (its TEST net is scored, its TRAIN net gives the ranges)."),
    "weights": Flag(str, "", "The trained weights (.caffemodel or .caffemodel.h5)."),
    "trimming_mode": Flag(str, "", "dynamic_fixed_point, minifloat or integer_power_of_2_weights."),
    "model_quantized": Flag(str, "", "Where to write the quantized net's prototxt."),
    "gpu": Flag(str, "", "Optional: the CUDA device id to run on (the first of a list, or of 'all')."),
    "iterations": Flag(int, 50, "Optional: the TEST batches to score each net on."),
    "error_margin": Flag(float, 2.0, "Optional: the accuracy drop allowed, in percent."),
}


# -- the tool ---------------------------------------------------------------------------------------------------
def _g(x: Any) -> str:
    return "%g" % float(f32(x))


class Quantizer:
    """The fork's ``Quantization`` class: one run of ``ristretto quantize``."""

    def __init__(self, model: str, weights: str, model_quantized: str, iterations: int, trimming_mode: str,
                 error_margin: float, device: str) -> None:
        self.model, self.model_quantized, self.iterations = model, model_quantized, iterations
        self.trimming_mode, self.error_margin, self.device = trimming_mode, error_margin, device
        self.param, self.source = read_net_with_source(model)
        self.weights_path = weights
        self.weights = load_weights(weights)
        self.ranges = Ranges()
        self.baseline = f32(0)

    def fresh(self) -> Any:
        """``ReadNetParamsFromTextFileOrDie(model_, &param)``: a copy of the upgraded prototxt."""
        p = caffe_pb2.NetParameter()
        p.CopyFrom(self.param)
        return p

    def score(self, param: Any, phase: int, iterations: int, stats: bool = False) -> np.float32:
        """Build ``param`` for ``phase``, copy the weights in, ``run_forward_batches``: the accuracy."""
        net = Net(param, phase, source=self.source, device=self.device, keep_blob_diffs=False)
        try:
            net.copy_from(self.weights, self.weights_path)
            accuracy = run_forward_batches(net, iterations, self.ranges if stats else None)
        finally:
            net.close()
        if accuracy is None and not stats:
            raise RistrettoError(f"{self.model}: the TEST net has no output values to score; expected an output blob "
                                 "whose first value is the accuracy (e.g. an Accuracy layer's top)")
        return f32(0) if accuracy is None else accuracy

    def score_test(self, param: Any) -> np.float32:
        param.state.phase = caffe_pb2.TEST
        return self.score(param, TEST, self.iterations)

    def quantize_net(self) -> None:
        self.baseline = self.score(self.fresh(), TEST, self.iterations)
        self.score(self.fresh(), TRAIN, STATS_BATCHES, stats=True)
        {"dynamic_fixed_point": self.dynamic_fixed_point, "minifloat": self.minifloat,
         "integer_power_of_2_weights": self.power_of_2_weights}[self.trimming_mode]()

    def search(self, edit: Callable[[Any, int], None], widths: Sequence[int] = BITWIDTHS) -> list[tuple[int, Any]]:
        """Score ``edit(param, bw)`` for each width in turn, stopping after the first that fails."""
        param, tried = self.fresh(), []
        for bw in widths:
            edit(param, bw)
            acc = self.score_test(param)
            tried.append((bw, acc))
            if fails(acc, self.baseline, self.error_margin):
                break
        return tried

    def summary(self, heading: Sequence[str], tables: Sequence[tuple[Sequence[str], Sequence[tuple[int, Any]]]],
                tail: Sequence[str]) -> None:
        """The fork's closing lines: the heading, the baseline, each table's titles and rows, the tail."""
        log.info("------------------------------")
        for line in heading:
            log.info("%s", line)
        log.info("Baseline 32bit float: %s", _g(self.baseline))
        for titles, tried in tables:
            for line in titles:
                log.info("%s", line)
            for bw, acc in tried:
                log.info("%dbit: \t%s", bw, _g(acc))
        for line in tail:
            log.info("%s", line)

    def dynamic_fixed_point(self) -> None:
        il = IntegerLengths(self.ranges)
        both = "Convolution_and_InnerProduct"
        conv = self.search(lambda p, bw: edit_dynamic_fixed_point(p, il, "Convolution", "Parameters", bw, -1, -1, -1))
        fc = self.search(lambda p, bw: edit_dynamic_fixed_point(p, il, "InnerProduct", "Parameters", -1, bw, -1, -1))
        act = self.search(lambda p, bw: edit_dynamic_fixed_point(p, il, both, "Activations", -1, -1, bw, bw))
        bw_conv, bw_fc, bw_out = (choose_bitwidth(t, self.baseline, self.error_margin) for t in (conv, fc, act))
        param = self.fresh()
        edit_dynamic_fixed_point(param, il, both, "Parameters_and_Activations", bw_conv, bw_fc, bw_out, bw_out)
        accuracy = self.score_test(param)
        param.ClearField("state")
        write_prototxt(param, self.model_quantized)
        self.summary(ANALYSIS, [(("Dynamic fixed point CONV", "weights: "), conv),
                                (("Dynamic fixed point FC", "weights: "), fc),
                                (("Dynamic fixed point layer", "activations:"), act)],
                     ["Dynamic fixed point net:", f"{bw_conv}bit CONV weights,", f"{bw_fc}bit FC weights,",
                      f"{bw_out}bit layer activations:", f"Accuracy: {_g(accuracy)}", "Please fine-tune."])

    def minifloat(self) -> None:
        exp_bits = minifloat_exp_bits(self.ranges)
        widths = [bw for bw in BITWIDTHS if bw - 1 - exp_bits > 0]  # the loop's condition (widths decrease)
        tried = self.search(lambda p, bw: edit_minifloat(p, bw, exp_bits), widths)
        best = choose_bitwidth(tried, self.baseline, self.error_margin)
        param = self.fresh()
        edit_minifloat(param, best, exp_bits)
        if best - exp_bits - 1 > 23:
            log.warning("Minifloat: no width passed; the net is written with %d-bit words (mant_bits %d), as the "
                        "fork writes it, but the Ristretto layers take at most 23 mantissa bits",
                        best, best - exp_bits - 1)
        write_prototxt(param, self.model_quantized)
        self.summary(ANALYSIS, [(("Minifloat net:",), tried)], ["Please fine-tune."])

    def power_of_2_weights(self) -> None:
        il = IntegerLengths(self.ranges, log_them=False)
        param = self.fresh()
        edit_power_of_2_weights(param)
        edit_dynamic_fixed_point(param, il, "Convolution_and_InnerProduct", "Activations", -1, -1,
                                 POW2_ACTIVATION_BITS, POW2_ACTIVATION_BITS)
        accuracy = self.score_test(param)
        param.ClearField("state")
        write_prototxt(param, self.model_quantized)
        self.summary(("Network accuracy analysis for", "Integer-power-of-two weights", "in Convolutional (CONV) and",
                      "fully connected (FC) layers."), [(("Quantized net:",), [(4, accuracy)])], ["Please fine-tune."])


def run_forward_batches(net: Net, iterations: int, ranges: Ranges | None = None) -> np.float32 | None:
    """``RunForwardBatches``: ``iterations`` forwards, each output value logged and averaged (float32),
    the ranges taken after each when given; returns the mean of the first output value (None: no output)."""
    log.info("Running for %d iterations.", iterations)
    scores: list[np.float32] = []
    names: list[str] = []
    loss = f32(0)
    for i in range(iterations):
        iter_loss = test_batch(net, i, scores, names)  # as `caffe test`: forward, log and add each output
        if ranges is not None:
            ranges.update(net)
        loss = f32(loss + iter_loss)
    loss = f32(loss / f32(iterations))
    log.info("Loss: %s", _g(loss))
    for name, s in zip(names, scores):
        mean = f32(s / f32(iterations))
        w = f32(net.blob_loss_weights.get(name, 0.0))
        log.info("%s = %s%s", name, _g(mean), f" (* {_g(w)} = {_g(w * mean)} loss)" if w else "")
    return f32(scores[0] / f32(iterations)) if scores else None


def select_device(flag: str) -> str:
    """``SetGpu``: the first id of ``--gpu`` ('all': every CUDA device), else the CPU; without CUDA, ``--gpu``
    warns and gives the CPU."""
    try:
        ids = [int(s) for s in flag.split(",")] if flag and flag != "all" else []
    except ValueError:
        raise RistrettoError(f"--gpu={flag}: expected device ids separated by ',' (e.g. 0 or 0,1) or 'all'") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if flag and not count:
        log.warning("--gpu=%s given but CUDA is not available on this machine; running on the CPU", flag)
        ids = []
    ids = list(range(count)) if flag == "all" else ids
    if ids and not 0 <= ids[0] < count:
        raise RistrettoError(f"--gpu={flag}: no CUDA device {ids[0]} (this machine has {count})")
    if ids:
        log.info("Use GPU with device ID %d", ids[0])
        return f"cuda:{ids[0]}"
    log.info("Use CPU.")
    return "cpu"


def check_write_permissions(path: str) -> None:
    """``CheckWritePermissions``: the output can be written (a new probe file is removed again)."""
    existed = os.path.exists(path)
    try:
        open(path, "ab").close()
    except OSError as e:
        raise RistrettoError(f"Missing write permissions: --model_quantized={path}: {e.strerror or e}") from None
    if not existed:
        os.remove(path)


def _check_file(flag: str, path: str, kind: str) -> None:
    if not os.path.isfile(path):
        why = "is a directory" if os.path.isdir(path) else "no such file"
        raise RistrettoError(f"--{flag}={path}: {why}; expected {kind}")


def quantize(model: str = "", weights: str = "", model_quantized: str = "", trimming_mode: str = "",
             gpu: str = "", iterations: int = 50, error_margin: float = 2.0) -> None:
    """``ristretto quantize`` (the flags as keyword arguments)."""
    for flag, value, need in (("model", model, "a model definition to score"), ("weights", weights, "model weights "
                              "to score"), ("model_quantized", model_quantized, "network description output path"),
                              ("trimming_mode", trimming_mode, "trimming mode")):
        if not value:
            raise RistrettoError(f"Need {need}. (--{flag} is empty)")
    if trimming_mode in V1_TRIMMING_MODES:
        log.warning("--trimming_mode=%s is Ristretto V1's name; quantizing as %s (V2's search, which also "
                    "trims layer inputs)", trimming_mode, V1_TRIMMING_MODES[trimming_mode])
        trimming_mode = V1_TRIMMING_MODES[trimming_mode]
    if trimming_mode not in TRIMMING_MODES:
        raise RistrettoError(f"Unknown trimming mode: {trimming_mode}; expected one of {', '.join(TRIMMING_MODES)}")
    if iterations < 1:
        raise RistrettoError(f"--iterations={iterations}: expected at least 1 batch to score")
    _check_file("model", model, "a net prototxt")
    _check_file("weights", weights, "a .caffemodel or .caffemodel.h5 file")
    check_write_permissions(model_quantized)
    device = select_device(gpu)
    Quantizer(model, weights, model_quantized, iterations, trimming_mode, error_margin, device).quantize_net()


COMMANDS: dict[str, Callable[..., None]] = {"quantize": quantize}


def run(argv: list[str]) -> int:
    """``ristretto <command> [flags]`` without the logging setup; the exit status."""
    parsed = parse_command(PROG, TEXT, FLAGS, argv, 1, 1)  # usage (also --help: gflags exits 1) or the flag error
    if parsed is None:
        return 1
    values, (command,), _ = parsed
    if command not in COMMANDS:
        log.error("Available ristretto actions:")
        for name in sorted(COMMANDS):
            log.error("\t%s", name)
        log.critical("Unknown action: %s", command)
        return 1
    try:
        COMMANDS[command](**values)
    except KeyboardInterrupt:
        log.critical("Interrupted.")
        return 130
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        log.critical("%s", e)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``ristretto <command> [flags]``; glog lines to stderr. Returns the exit status."""
    with glog_to_stderr():
        return run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
