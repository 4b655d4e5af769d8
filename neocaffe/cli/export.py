"""``caffe export``: a deploy net (and its weights) to ONNX and/or a ``torch.export`` program.

    caffe export -model deploy.prototxt -weights w.caffemodel -onnx out.onnx [-opset 17]
                 [-batch N|dynamic] [-fold_bn] [-pt2 out.pt2] [-input_shape data=1,3,227,227] [-check]
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from neocaffe.export.registry import DEFAULT_OPSET
from neocaffe.flags import Flag
from neocaffe.progress import Progress

log = logging.getLogger("neocaffe.cli")

USAGE = """usage: caffe export -model deploy.prototxt [-weights w.caffemodel] -onnx out.onnx [-pt2 out.pt2] [flags]

Exports the TEST phase of a net, with Caffe's numbers, for deployment.

flags (-flag value, --flag=value, -flag=value):
  -model          The model definition protocol buffer text file (a deploy prototxt: inputs from Input
                  layers or input/input_shape fields).
  -weights        The trained weights (.caffemodel or .caffemodel.h5), separated by ','. Without it the
                  fillers' initial values are exported.
  -onnx           Write an ONNX model here (needs: pip install neocaffe[onnx]).
  -pt2            Write a torch.export ExportedProgram here; it loads with torch.export.load alone.
  -opset          ONNX opset version (13 or later). Default {opset}.
  -batch          N: axis 0 of every input becomes N; dynamic: a symbolic batch axis. Default: the
                  prototxt's shapes.
  -fold_bn        Fold BatchNorm/Scale/Bias into the Convolution/InnerProduct before them.
  -input_shape    blob=d0,d1,... (may be repeated): the shape of an input; replaces a training data
                  layer (Data, ImageData, ...) with an Input layer of this shape (its label top and the
                  layers reading it are dropped), or overrides an Input layer's shape.
  -check          Run the exported model (onnxruntime's CPU provider; the .pt2 with torch) and neocaffe
                  on the same random inputs; fail when an output differs by more than 1e-5 of its
                  largest magnitude.
  -level, -stage  The net's level and stages, as for the other commands.
""".format(opset=DEFAULT_OPSET)

FLAGS: dict[str, Flag] = {
    "onnx": Flag(str, ""), "pt2": Flag(str, ""), "opset": Flag(int, DEFAULT_OPSET), "batch": Flag(str, ""),
    "fold_bn": Flag(bool, False), "check": Flag(bool, False),
    "input_shape": Flag(list, [], split=False),  # repeatable, each value whole (it holds commas)
}


def _batch(flag: str, error: Any) -> tuple[int | None, bool]:
    if not flag:
        return None, False
    if flag == "dynamic":
        return None, True
    try:
        n = int(flag)
    except ValueError:
        raise error(f"-batch {flag}: expected a positive integer or 'dynamic'") from None
    if n <= 0:
        raise error(f"-batch {flag}: expected a positive integer or 'dynamic'")
    return n, False


def _size(path: str) -> str:
    return f"{os.path.getsize(path) / 2**20:.1f} MiB"


def _report(errors: dict[str, float], what: str, error: Any) -> None:
    from neocaffe.export.verify import TOLERANCE

    for blob, err in errors.items():
        log.info("Check %s: output '%s' differs from neocaffe by %.3g of its largest magnitude", what, blob, err)
    bad = [b for b, e in errors.items() if not e <= TOLERANCE]
    if bad:
        raise error(f"{what} differs from neocaffe by more than {TOLERANCE:g} on {', '.join(bad)}")


def _check(net: Any, dynamic: bool, run: Any, what: str, error: Any) -> None:
    """Compare ``run(inputs) -> {blob: array}`` with neocaffe on random inputs (and another batch size
    when the batch is dynamic)."""
    from neocaffe.export.verify import neocaffe_outputs, random_inputs, scaled_error

    trials = [random_inputs(net)]
    if dynamic and net.inputs:  # another batch size first: the net ends at its own shapes
        trials.insert(0, random_inputs(net, 1, batch=net.blob_shapes[net.inputs[0]][0] + 2))
    for x in trials:
        ref = neocaffe_outputs(net, x)
        got = run(x)
        _report({o: scaled_error(got[o], ref[o]) for o in ref}, f"{what} (batch {len(next(iter(x.values())))})", error)


def export(args: Any, error: Any, stages: list[str]) -> int:
    """Run ``caffe export``; ``error`` is the CLI's error type."""
    from neocaffe.export import load_deploy_net, parse_shapes

    if not args.model:
        raise error("Need a model definition to export (-model deploy.prototxt).")
    if not args.onnx and not args.pt2:
        raise error("Need an output: -onnx out.onnx and/or -pt2 out.pt2.")
    batch, dynamic = _batch(args.batch, error)
    weights = [w for w in args.weights.split(",") if w] if args.weights else []
    for w in [args.model] + weights:
        if not os.path.isfile(w):
            raise error(f"{w}: no such file")
    steps = 1 + bool(args.fold_bn) + sum((1 + bool(args.check)) for out in (args.onnx, args.pt2) if out)
    with Progress(steps, "caffe export", "steps", log) as bar:
        bar.stage("loading the net")
        net = load_deploy_net(args.model, weights, input_shapes=parse_shapes(args.input_shape), batch=batch,
                              level=args.level, stages=stages)
        bar.update()
        if not weights:
            log.warning("No -weights given: exporting the fillers' initial values")
        _write(args, net, dynamic, error, bar)
    return 0


def _write(args: Any, net: Any, dynamic: bool, error: Any, bar: Progress) -> None:
    """Fold (``-fold_bn``), write and check the ONNX and .pt2 files, one ``bar`` step each."""
    from neocaffe.export import export_pt2, fold_net

    if args.fold_bn:
        bar.stage("folding BatchNorm/Scale")
        net, chains = fold_net(net)
        for c in chains:
            log.info("Folded %s into %s", ", ".join(c.removed), c.layer)
        log.info("Folded %d chain(s)", len(chains))
        bar.update()
    shapes = ", ".join(f"{n} {tuple(net.blob_shapes[n])}" for n in net.inputs)
    log.info("Inputs: %s%s; outputs: %s", shapes, " (batch dynamic)" if dynamic else "", ", ".join(net.outputs))
    if args.onnx:
        try:
            from neocaffe.export.onnx import export_onnx
        except ImportError as e:
            raise error(f"-onnx needs the onnx package: pip install neocaffe[onnx] ({e})") from e
        bar.stage("writing ONNX")
        t = time.perf_counter()
        model = export_onnx(net, args.onnx, opset=args.opset, dynamic_batch=dynamic)
        log.info("Wrote %s (ONNX opset %d, %d nodes, %s) in %.2f s", args.onnx, args.opset, len(model.graph.node),
                 _size(args.onnx), time.perf_counter() - t)
        bar.update()
        if args.check:
            from neocaffe.export.verify import onnxruntime_outputs

            bar.stage("checking ONNX")
            _check(net, dynamic, lambda x: onnxruntime_outputs(args.onnx, x, list(net.outputs)), "ONNX", error)
            bar.update()
    if args.pt2:
        bar.stage("writing .pt2")
        t = time.perf_counter()
        program = export_pt2(net, args.pt2, dynamic_batch=dynamic)
        log.info("Wrote %s (torch.export program) in %.2f s", args.pt2, time.perf_counter() - t)
        bar.update()
        if args.check:
            import torch

            def run(x: dict) -> dict:
                with torch.no_grad():
                    out = program.module()(*[torch.from_numpy(x[n]) for n in net.inputs])
                return {k: v.numpy() for k, v in out.items()}

            bar.stage("checking .pt2")
            _check(net, dynamic, run, ".pt2", error)
            bar.update()
