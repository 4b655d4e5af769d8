"""``ristretto quantize`` (neocaffe/tools/ristretto.py; pmgysel/caffe @ 614963cb, tools/ristretto.cpp and
src/caffe/ristretto/quantization.cpp): on a small LeNet-like net reading an LMDB, the ranges, integer lengths,
bit-width search and written prototxt against a NumPy/Python re-derivation of the fork's rules, the written
net scored by ``caffe test``, ``--gpu``, the errors, and ``./build/tools/ristretto`` as the fork's example
script calls it."""
from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from neocaffe.cli import caffe as caffe_cli
from neocaffe.data.datum import array_to_datum
from neocaffe.data.db_writer import DBWriter
from neocaffe.graph.net import Net
from neocaffe.io.caffemodel import LayerWeights
from neocaffe.io.prototxt import read_net
from neocaffe.io.weights import save_weights
from neocaffe.layers.base import TEST
from neocaffe.proto import caffe_pb2
from neocaffe.tools import ristretto
from tests.conftest import REPO

N, BATCH, ITERS = 64, 16, 4          # 4 TEST batches cover the set; the 10 TRAIN batches wrap around it
LAYERS = ("conv1", "ip1", "ip2")

NET = """name: "TinyLeNet"
layer {{ name: "mnist" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ scale: {scale} }} data_param {{ source: "{db}" batch_size: 16 backend: LMDB }} }}
layer {{ name: "mnist" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ scale: {scale} }} data_param {{ source: "{db}" batch_size: 16 backend: LMDB }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 4 kernel_size: 5 }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" inner_product_param {{ num_output: 16 }} }}
layer {{ name: "relu2" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param {{ num_output: 4 }} }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include {{ phase: TEST }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
{extra}"""


# -- the workspace: images, weights, labels from the float net (so the float accuracy is ~1) -----------------
def _weights(seed: int = 7) -> dict[str, list[np.ndarray]]:
    g = np.random.default_rng(seed)
    f = np.float32
    return {"conv1": [(g.standard_normal((4, 1, 5, 5)) * 0.3).astype(f), (g.standard_normal(4) * 0.1).astype(f)],
            "ip1": [(g.standard_normal((16, 64)) * 0.3).astype(f), (g.standard_normal(16) * 0.1).astype(f)],
            "ip2": [(g.standard_normal((4, 16)) * 0.5).astype(f), (g.standard_normal(4) * 0.1).astype(f)]}


def np_forward(x: np.ndarray, w: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """The net in float64: every blob as it is after the forward (ReLUs in place on conv1 and ip1)."""
    x = x.astype(np.float64)
    win = np.lib.stride_tricks.sliding_window_view(x, (5, 5), axis=(2, 3))          # N,1,8,8,5,5
    conv = np.einsum("ncijkl,ockl->noij", win, w["conv1"][0]) + w["conv1"][1][:, None, None]
    pre = {"conv1_pre_relu": conv}
    conv = np.maximum(conv, 0)
    pool = conv.reshape(len(x), 4, 4, 2, 4, 2).max(axis=(3, 5))
    pre["ip1_pre_relu"] = pool.reshape(len(x), -1) @ w["ip1"][0].T + w["ip1"][1]
    ip1 = np.maximum(pre["ip1_pre_relu"], 0)
    ip2 = ip1 @ w["ip2"][0].T + w["ip2"][1]
    return {"data": x, "conv1": conv, "pool1": pool, "ip1": ip1, "ip2": ip2, **pre}


def _calibrate(x: np.ndarray, w: dict[str, list[np.ndarray]]) -> None:
    """Scale each layer (in order) so its largest output is 1.05 * 2^k (k: 2, 3, 1): the fork's activation
    integer length ceil(log2(max)) = k + 1 then saturates at 2^k only the few values above it, as in a
    trained net's long tails; and the layers' integer lengths differ."""
    for name, k in zip(LAYERS, (2, 3, 1)):
        m = float(np.abs(np_forward(x, w)[name]).max())
        w[name] = [(a * (1.05 * 2.0 ** k / m)).astype(np.float32) for a in w[name]]


class Workspace:
    """An LMDB of N 12x12 images (pixels * ``scale``; 1/240: at most 1.0625, so few saturate at 1), the
    calibrated weights, labels = the float net's argmax, the train_val prototxt."""

    def __init__(self, root: Path, scale: float = 1 / 240, extra: str = "") -> None:
        g = np.random.default_rng(3)
        self.root = root
        self.images = g.integers(0, 256, (N, 1, 12, 12), dtype=np.uint8)
        self.w = _weights()
        self.x = self.images.astype(np.float32) * np.float32(scale)
        _calibrate(self.x, self.w)
        self.blobs = np_forward(self.x, self.w)
        labels = self.blobs["ip2"].argmax(axis=1)
        with DBWriter(str(root / "lmdb"), "lmdb") as db:
            for i, (img, lab) in enumerate(zip(self.images, labels)):
                db.put(f"{i:08d}", array_to_datum(img, int(lab)).SerializeToString())
        self.model = root / "train_val.prototxt"
        self.model.write_text(NET.format(scale=scale, db=root / "lmdb", extra=extra))
        self.weights = root / "tiny.caffemodel"
        save_weights(str(self.weights), [LayerWeights(n, t, self.w[n]) for n, t in
                                         (("conv1", "Convolution"), ("ip1", "InnerProduct"), ("ip2", "InnerProduct"))],
                     hdf5=False)
        self.out = root / "quantized.prototxt"

    def maxima(self) -> dict[str, tuple[float, float, float]]:
        """RangeInLayers re-derived: (max |input|, max |output|, max |weight|) per layer."""
        b, m = self.blobs, lambda a: float(np.abs(a).max())
        return {"conv1": (m(b["data"]), m(b["conv1"]), m(self.w["conv1"][0])),
                "ip1": (m(b["pool1"]), m(b["ip1"]), m(self.w["ip1"][0])),
                "ip2": (m(b["ip1"]), m(b["ip2"]), m(self.w["ip2"][0]))}

    def integer_lengths(self) -> dict[str, tuple[int, int, int]]:
        out = {}
        for name, (i, o, p) in self.maxima().items():
            for v in (i, o, p):   # float32 vs float64 cannot move a ceil unless a maximum sits on a power of 2
                assert abs(math.log2(v) - round(math.log2(v))) > 1e-4, (name, v)
            out[name] = (math.ceil(math.log2(i)), math.ceil(math.log2(o)), math.ceil(math.log2(p) + 1))
        return out

    def argv(self, mode: str, *more: str) -> list[str]:
        return ["quantize", f"--model={self.model}", f"--weights={self.weights}", f"--model_quantized={self.out}",
                f"--trimming_mode={mode}", f"--iterations={ITERS}", *more]

    def score(self, param) -> np.float32:
        """The TEST accuracy of ``param`` over ITERS batches (float32 sums, as the fork's)."""
        param.state.phase = caffe_pb2.TEST
        net = Net(param, TEST, keep_blob_diffs=False)
        net.copy_from(str(self.weights))
        total = np.float32(0)
        with torch.no_grad():
            for _ in range(ITERS):
                net.forward()
                total = np.float32(total + np.float32(net.blob_data["accuracy"].item()))
        net.close()
        return np.float32(total / np.float32(ITERS))


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path)


def _quantized(ws: Workspace, **q: dict[str, dict]) -> caffe_pb2.NetParameter:
    """The model with layer ``name``'s type set to the Ristretto one and its quantization_param fields."""
    param = read_net(str(ws.model))
    for layer in param.layer:
        if layer.name in q:
            layer.type = "ConvolutionRistretto" if layer.type.startswith("Conv") else "FcRistretto"
            for k, v in q[layer.name].items():
                setattr(layer.quantization_param, k, v)
    return param


def _table(err: str, title: str) -> list[tuple[int, str]]:
    """The summary's ``<bw>bit: \\t<accuracy>`` rows after the line ``title``."""
    lines = [line.split("] ", 1)[-1] for line in err.splitlines()]
    rows = []
    for line in lines[lines.index(title) + 1:]:
        if line in ("weights: ", "activations:"):
            continue
        m = re.fullmatch(r"(\d+)bit: \t(\S+)", line)
        if m is None:
            break
        rows.append((int(m.group(1)), m.group(2)))
    return rows


def _g(x) -> str:
    return "%g" % float(np.float32(x))


def _search(ws: Workspace, baseline: np.float32, margin: float, edit) -> tuple[list[tuple[int, np.float32]], int]:
    """The fork's loop (16, 8, 4, 2, 1; stop after the first width below baseline - margin%) and its choice."""
    tried = []
    for bw in (16, 8, 4, 2, 1):
        acc = ws.score(edit(bw))
        tried.append((bw, acc))
        if float(acc) + margin / 100 < float(baseline):
            break
    best = 32
    for bw, acc in tried:
        if float(acc) + margin / 100 < float(baseline):
            break
        best = bw
    return tried, best


def _caffe_test_accuracy(model: Path, weights: Path, capsys) -> float:
    assert caffe_cli.main(["test", f"-model={model}", f"-weights={weights}", f"-iterations={ITERS}"]) == 0
    err = capsys.readouterr().err
    return float(re.findall(r"\] accuracy = (\S+)", err)[-1])


# -- dynamic fixed point -------------------------------------------------------------------------------------
def test_dynamic_fixed_point_is_the_forks_search_and_prototxt(ws, capsys):
    margin = 3.0
    assert ristretto.main(ws.argv("dynamic_fixed_point", f"--error_margin={margin}")) == 0
    err = capsys.readouterr().err
    il = ws.integer_lengths()
    assert len({v for t in il.values() for v in t}) >= 5        # parts and layers tell apart
    # conv1's output range is after its in-place ReLU (Caffe's top blob holds that); before it: another length
    assert math.ceil(math.log2(np.abs(ws.blobs["conv1_pre_relu"]).max())) != il["conv1"][1]
    for name in LAYERS:
        i, o, p = il[name]
        assert (f"Layer {name}, integer length input={i}, integer length output={o}, integer length parameters={p}"
                in err)
    baseline = ws.score(read_net(str(ws.model)))
    assert f"Baseline 32bit float: {_g(baseline)}" in err and baseline > 0.9

    def conv(bw):
        return _quantized(ws, conv1={"bw_params": bw, "fl_params": bw - il["conv1"][2]})

    def fc(bw):
        return _quantized(ws, **{n: {"bw_params": bw, "fl_params": bw - il[n][2]} for n in ("ip1", "ip2")})

    def act(bw):
        return _quantized(ws, **{n: {"bw_layer_in": bw, "fl_layer_in": bw - il[n][0], "bw_layer_out": bw,
                                     "fl_layer_out": bw - il[n][1]} for n in LAYERS})

    expected = {}
    for title, edit in (("Dynamic fixed point CONV", conv), ("Dynamic fixed point FC", fc),
                        ("Dynamic fixed point layer", act)):
        tried, best = _search(ws, baseline, margin, edit)
        assert _table(err, title) == [(bw, _g(acc)) for bw, acc in tried], title
        expected[title] = best
    bw_conv, bw_fc, bw_act = expected.values()
    print(f"chosen: CONV {bw_conv}, FC {bw_fc}, activations {bw_act} bits; searches in the log")
    assert f"{bw_conv}bit CONV weights," in err and f"{bw_fc}bit FC weights," in err
    assert f"{bw_act}bit layer activations:" in err and err.rstrip().endswith("Please fine-tune.")
    assert 1 <= min(bw_conv, bw_fc, bw_act) and max(bw_conv, bw_fc, bw_act) <= 16  # a real search, not 32

    # the written net: the fork's edit with every part, no state; fields in number order
    want = {n: {"bw_layer_in": bw_act, "bw_layer_out": bw_act, "bw_params": bw_conv if n == "conv1" else bw_fc,
                "fl_layer_in": bw_act - il[n][0], "fl_layer_out": bw_act - il[n][1],
                "fl_params": (bw_conv if n == "conv1" else bw_fc) - il[n][2]} for n in LAYERS}
    written = read_net(str(ws.out))
    assert written == _quantized(ws, **want)
    text = ws.out.read_text()
    assert "state" not in text and text.count("quantization_param {") == 3
    block = text[text.index('name: "conv1"'):]
    block = block[:block.index("\n}\n")]
    assert block.index("convolution_param {") < block.index("quantization_param {")   # the layer's last field
    fields = re.findall(r"^    (\w+): ", block[block.index("quantization_param {"):], re.M)
    assert fields == ["bw_layer_in", "bw_layer_out", "bw_params", "fl_layer_in", "fl_layer_out", "fl_params"]
    # it builds and scores (caffe test) what the tool logged, within the margin here
    final = ws.score(read_net(str(ws.out)))
    assert f"Accuracy: {_g(final)}" in err
    acc = _caffe_test_accuracy(ws.out, ws.weights, capsys)
    assert acc == pytest.approx(float(final)) and acc + margin / 100 >= float(baseline)


def test_nothing_passes_gives_32_bits_and_everything_gives_1(ws, capsys):
    """A negative margin fails every width (16 is tried, 32 kept); a margin of 100% passes them all."""
    assert ristretto.main(ws.argv("dynamic_fixed_point", "--error_margin=-50")) == 0
    err = capsys.readouterr().err
    for title in ("Dynamic fixed point CONV", "Dynamic fixed point FC", "Dynamic fixed point layer"):
        assert [bw for bw, _ in _table(err, title)] == [16]
    il = ws.integer_lengths()
    for layer in read_net(str(ws.out)).layer:
        if layer.name in LAYERS:
            q = layer.quantization_param
            assert (q.bw_params, q.fl_params, q.bw_layer_in, q.fl_layer_out) == (32, 32 - il[layer.name][2], 32,
                                                                                 32 - il[layer.name][1])
    assert ristretto.main(ws.argv("dynamic_fixed_point", "--error_margin=100")) == 0
    err = capsys.readouterr().err
    assert [bw for bw, _ in _table(err, "Dynamic fixed point CONV")] == [16, 8, 4, 2, 1]
    q = {l.name: l.quantization_param for l in read_net(str(ws.out)).layer}
    assert {(q[n].bw_params, q[n].bw_layer_out, q[n].fl_layer_in) for n in LAYERS} == \
        {(1, 1, 1 - il[n][0]) for n in LAYERS}


# -- minifloat and power-of-two weights ------------------------------------------------------------------------
def test_minifloat_exponent_bits_and_widths_are_the_forks(tmp_path, capsys):
    ws = Workspace(tmp_path, scale=4.0)      # inputs up to 1020: ceil(log2(log2(1020) - 1) + 1) = ceil(4.17): 5 bits
    maxima = ws.maxima()
    exp_bits = 4
    for i, o, _ in maxima.values():
        for m in (i, o):
            if math.log2(m) - 1 > 0:
                exp_bits = max(exp_bits, math.ceil(math.log2(math.log2(m) - 1) + 1))
    assert exp_bits == 5
    margin = 2.0
    assert ristretto.main(ws.argv("minifloat", f"--error_margin={margin}")) == 0
    err = capsys.readouterr().err
    baseline = ws.score(read_net(str(ws.model)))

    def mini(bw):
        return _quantized(ws, **{n: {"precision": caffe_pb2.QuantizationParameter.MINIFLOAT,
                                     "mant_bits": bw - exp_bits - 1, "exp_bits": exp_bits} for n in LAYERS})
    tried = []
    for bw in (16, 8):                       # bw - 1 - exp_bits > 0: 16 and 8 only
        tried.append((bw, ws.score(mini(bw))))
        if float(tried[-1][1]) + margin / 100 < float(baseline):
            break
    assert _table(err, "Minifloat net:") == [(bw, _g(a)) for bw, a in tried]
    best = 32
    for bw, a in tried:
        if float(a) + margin / 100 < float(baseline):
            break
        best = bw
    written = read_net(str(ws.out))
    expect = mini(best)
    expect.ClearField("state")
    assert written == expect
    print(f"minifloat: exp_bits {exp_bits}, tried {[(b, float(a)) for b, a in tried]}, chose {best}")
    if best <= 16:
        Net(written, TEST, keep_blob_diffs=False)   # the written net builds


def test_power_of_2_weights_with_8_bit_activations(ws, capsys):
    assert ristretto.main(ws.argv("integer_power_of_2_weights")) == 0
    err = capsys.readouterr().err
    il = ws.integer_lengths()
    want = {n: {"precision": caffe_pb2.QuantizationParameter.INTEGER_POWER_OF_2_WEIGHTS, "exp_min": -8, "exp_max": -1,
                "bw_layer_in": 8, "fl_layer_in": 8 - il[n][0], "bw_layer_out": 8, "fl_layer_out": 8 - il[n][1]}
            for n in LAYERS}
    assert read_net(str(ws.out)) == _quantized(ws, **want)
    acc = ws.score(_quantized(ws, **want))
    assert _table(err, "Quantized net:") == [(4, _g(acc))]
    assert "Integer-power-of-two weights" in err and "Running for 10 iterations." in err


def test_v1_mode_names_quantize_as_the_v2_modes(ws, capsys):
    """Ristretto V1's scripts (``--trimming_mode=fixed_point`` ...) run: the V2 mode's net, with a warning."""
    for v1, v2 in (("power_of_2_weights", "integer_power_of_2_weights"), ("fixed_point", "dynamic_fixed_point")):
        assert ristretto.main(ws.argv(v2)) == 0
        want = ws.out.read_bytes()
        ws.out.unlink()
        capsys.readouterr()
        assert ristretto.main(ws.argv(v1)) == 0
        err = capsys.readouterr().err
        assert f"--trimming_mode={v1} is Ristretto V1's name; quantizing as {v2}" in err
        assert ws.out.read_bytes() == want


# -- flags, devices, errors -----------------------------------------------------------------------------------
def test_gpu_flag_is_accepted(ws, capsys):
    assert ristretto.main(ws.argv("integer_power_of_2_weights", "--gpu=0")) == 0
    err = capsys.readouterr().err
    if torch.cuda.is_available():
        assert "Use GPU with device ID 0" in err
    else:
        assert "--gpu=0 given but CUDA is not available on this machine; running on the CPU" in err
        assert "Use CPU." in err
    assert ws.out.exists()
    assert ristretto.main(ws.argv("integer_power_of_2_weights", "--gpu=first")) == 1
    assert "--gpu=first: expected device ids separated by ','" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"model": ""}, "Need a model definition to score. (--model is empty)"),
    ({"weights": ""}, "Need model weights to score. (--weights is empty)"),
    ({"model_quantized": ""}, "Need network description output path. (--model_quantized is empty)"),
    ({"trimming_mode": ""}, "Need trimming mode. (--trimming_mode is empty)"),
    ({"trimming_mode": "fixed"}, "Unknown trimming mode: fixed; expected one of dynamic_fixed_point, "
                                 "minifloat, integer_power_of_2_weights"),
    ({"iterations": "0"}, "--iterations=0: expected at least 1 batch to score"),
    ({"model": "{root}/none.prototxt"}, "--model={root}/none.prototxt: no such file; expected a net prototxt"),
    ({"weights": "{root}"}, "--weights={root}: is a directory; expected a .caffemodel or .caffemodel.h5 file"),
    ({"model_quantized": "{root}/no/dir/q.prototxt"}, "Missing write permissions: --model_quantized={root}/no/dir/q.prototxt"),
])
def test_bad_flags_and_files_name_what_was_received(ws, capsys, change, message):
    flags = {"model": str(ws.model), "weights": str(ws.weights), "model_quantized": str(ws.out),
             "trimming_mode": "dynamic_fixed_point", "iterations": str(ITERS)}
    flags.update({k: v.format(root=ws.root) for k, v in change.items()})
    assert ristretto.main(["quantize", *(f"--{k}={v}" for k, v in flags.items())]) == 1
    err = capsys.readouterr().err
    assert message.format(root=ws.root) in err and err.startswith("F")
    assert not ws.out.exists()


def test_command_line_errors_and_usage(ws, capsys):
    assert ristretto.main(["quantize", "--bits=8"]) == 1
    assert "ERROR: unknown command line flag 'bits'" in capsys.readouterr().err
    assert ristretto.main(["squeeze"]) == 1
    err = capsys.readouterr().err
    assert "Available ristretto actions:" in err and "\tquantize" in err and "Unknown action: squeeze" in err
    assert ristretto.main([]) == 1
    assert "usage: ristretto <command> <args>" in capsys.readouterr().err
    assert ristretto.main(["--help"]) == 1                     # gflags' --help exits with 1
    err = capsys.readouterr().err
    assert "quantize        Trim 32bit floating point net" in err and "-error_margin" in err
    assert ristretto.main(["quantize", "--iterations=many"]) == 1
    assert "illegal value 'many' specified for int32 flag 'iterations'" in capsys.readouterr().err


def test_existing_output_is_kept_until_replaced_and_unmeasured_layers_are_errors(tmp_path, capsys):
    """A TEST-only Convolution has no TRAIN ranges: the fork reads past its vectors, here an error naming it;
    the output file that was there stays as it was."""
    extra = ('layer { name: "conv_t" type: "Convolution" bottom: "data" top: "conv_t" include { phase: TEST }\n'
             '  convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "xavier" } } }\n')
    ws = Workspace(tmp_path, extra=extra)
    ws.out.write_text("old\n")
    assert ristretto.main(ws.argv("dynamic_fixed_point")) == 1
    err = capsys.readouterr().err
    assert "layer 'conv_t' (Convolution): the dynamic fixed point edit converts it" in err
    assert "no ranges were measured for it" in err and "measured: conv1, ip1, ip2" in err
    assert ws.out.read_text() == "old\n"


# -- the build path ------------------------------------------------------------------------------------------------
def test_build_tools_ristretto_runs_as_the_forks_example_script(ws):
    """examples/ristretto/00_quantize_squeezenet.sh's command line, from a Caffe-like root."""
    root = ws.root / "caffe"
    root.mkdir()
    (root / "build").symlink_to(REPO / "build")
    script = root / "00_quantize.sh"
    script.write_text("#!/usr/bin/env sh\n\n./build/tools/ristretto quantize \\\n"
                      f"\t--model={ws.model} \\\n\t--weights={ws.weights} \\\n"
                      "\t--model_quantized=quantized.prototxt \\\n"
                      f"\t--trimming_mode=integer_power_of_2_weights --gpu=0 --iterations={ITERS} \\\n"
                      "\t--error_margin=3\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    run = subprocess.run(["sh", str(script)], cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Please fine-tune." in run.stderr and "ristretto.py:" in run.stderr
    assert read_net(str(root / "quantized.prototxt")).layer[2].type == "ConvolutionRistretto"
