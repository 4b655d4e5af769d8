"""The ``caffe`` command: ``caffe <train|test|time|device_query> [flags]`` with Caffe's gflags.

Flags are written as gflags accepts them: ``-solver x``, ``--solver=x``, ``-solver=x`` or ``--solver x``,
before or after the command; boolean flags alone (``-channels_last``), as ``-flag=false`` or ``-noflag``.
Log lines go to stderr in glog format (see ``neocaffe.cli.log``).

``train`` with ``-gpu 0,1,...``/``-gpu all`` or ``-cpu_procs N`` (N > 1) re-runs itself under
``python -m torch.distributed.run --standalone --nproc_per_node N`` for data-parallel training
(``neocaffe.solver.parallel``); started by ``torchrun`` directly (RANK/WORLD_SIZE set), it joins the
launcher's process group instead, which is how several machines train together.
Exit status: 0 on success (also when training is stopped by a signal), 1 on any error, 2 when the
loss stopped being finite.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Callable

from neocaffe.cli.common import (DEFAULTS, EFFECTS, FLAGS, Args, CommandError, HelpRequested,  # noqa: F401 (re-exported)
                                 SignalActions, UsageError, check_files, gpu_ids, parse_args, speed_modes, stages,
                                 weight_list, with_file)
from neocaffe.cli.export import USAGE as EXPORT_USAGE
from neocaffe.progress import Progress

log = logging.getLogger("neocaffe.cli")

USAGE = """command line brew
usage: caffe <command> <args>

commands:
  train           train or finetune a model
  test            score a model
  device_query    show GPU diagnostic information
  time            benchmark model execution time
  export          write a deploy net as ONNX (-onnx) or a torch.export program (-pt2); caffe export -help

flags (-flag value, --flag=value, -flag=value):
  -solver         The solver definition protocol buffer text file.
  -model          The model definition protocol buffer text file.
  -weights        Optional; the pretrained weights to initialize finetuning, separated by ','.
                  Cannot be set simultaneously with snapshot.
  -snapshot       Optional; the snapshot solver state to resume training.
  -gpu            Optional; run in GPU mode on given device IDs separated by ','. Use '-gpu all' to
                  run on all available GPUs. Absent: CPU (or the solver's solver_mode/device_id).
                  train with several GPUs: one process per GPU (torchrun), each with batch_size,
                  gradients averaged (Caffe's meaning).
  -cpu_procs      train only: data-parallel over N CPU processes (gloo), each with batch_size.
  -iterations     The number of iterations to run (test, time). Default 50.
  -phase          Optional; network phase (TRAIN or TEST). Only used for 'time'.
  -level          Optional; network level. Default 0.
  -stage          Optional; network stages, separated by ',' (may be repeated).
  -sigint_effect  Optional; action to take when a SIGINT signal is received: snapshot, stop or none.
                  Default stop.
  -sighup_effect  Optional; action to take when a SIGHUP signal is received: snapshot, stop or none.
                  Default snapshot.
  -precision      train/time only: fp32 (default, Caffe-exact; TF32 off on CUDA), tf32 (TF32
                  matmul/convolutions on CUDA) or bf16 (bfloat16 autocast, fp32 master weights and
                  solver state). Default: $NEOCAFFE_PRECISION, else fp32. tf32 and bf16 are opt-in
                  speed modes and are NOT Caffe-exact.
  -channels_last  train/time/test: NHWC memory layout for 4-D weights and data (values unchanged).
  -cudnn_benchmark  train/time only: let cuDNN time its algorithms per shape (torch.backends.cudnn.benchmark).
  -compile        train/time only: torch.compile the net's forward and backward (-compile or
                  -compile=reduce-overhead for CUDA graphs, -compile=max-autotune). NOT Caffe-exact.
  -fused          train/time only: our Triton kernels on CUDA (LRN, and ReLU+LRN pairs, one kernel per
                  direction; float32). Not with -compile. Default: $NEOCAFFE_FUSED, else off.
  -tensorboard    train only: write TensorBoard scalars to this directory on display and test
                  iterations (loss, outputs, lr, regularization terms, sparsity, images/s); the log is
                  unchanged. Default: $NEOCAFFE_TENSORBOARD, else off. Needs pip install neocaffe[tensorboard].
  -tensorboard_histograms  train only: also weight histograms on snapshot iterations.
                  Default: $NEOCAFFE_TENSORBOARD_HISTOGRAMS, else off.
  -fold_bn        test: fold Convolution/InnerProduct + BatchNorm + Scale once the weights are loaded
                  (within ~1e-6 of the output's scale; also export). test also takes -channels_last, and
                  $NEOCAFFE_FROZEN / $NEOCAFFE_THREADS (neocaffe.export.modes).
  -onnx, -pt2, -opset, -batch, -input_shape, -check: export only (caffe export -help).
"""

def _usage(code: int, export: bool = False) -> int:
    sys.stderr.write(EXPORT_USAGE if export else USAGE)
    return code


def _set_precision(precision: str, device: Any) -> None:
    """Set the CUDA TF32 switches for ``precision`` (kept for callers of the old helper)."""
    from neocaffe.solver.speed import SpeedModes, apply_backend_flags

    if precision not in ("fp32", "tf32", "bf16"):
        raise CommandError(f"-precision {precision}: expected fp32, tf32 or bf16")
    apply_backend_flags(SpeedModes(precision=precision), device)


# -- commands ---------------------------------------------------------------------------------------
def train(args: Args) -> int:
    """``caffe train`` (``neocaffe.cli.train``)."""
    from neocaffe.cli.train import train as run_train

    return run_train(args)


def _make_net(model: str, phase: int, args: Args, device: Any) -> Any:
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net_with_source

    net_param, source = read_net_with_source(model)
    return Net(net_param, phase, args.level, stages(args), source=source, device=device,
               keep_blob_diffs=False)


def _inference_modes(args: Args) -> Any:
    """``caffe test``'s opt-in inference modes (``neocaffe.export.modes``): ``-fold_bn`` and
    ``-channels_last`` when given, else ``NEOCAFFE_FOLD_BN`` / ``NEOCAFFE_CHANNELS_LAST``; ``NEOCAFFE_FROZEN``
    and ``NEOCAFFE_THREADS`` from the environment."""
    from neocaffe.export.modes import InferenceModeError, InferenceModes

    try:
        modes = InferenceModes.resolve(fold_bn=args.fold_bn if "fold_bn" in args.given else None,
                                       channels_last=args.channels_last)
    except InferenceModeError as e:
        raise CommandError(str(e)) from None
    if modes.any:
        log.info("Inference modes: %s (not Caffe-exact)", ", ".join(modes.names()))
    return modes


def _device(args: Args, what: str) -> Any:
    gpus = gpu_ids(args.gpu)
    if len(gpus) > 1:
        for g in reversed(gpus[1:]):
            log.info("Not using GPU #%d for single-GPU function", g)
    if gpus:
        import torch

        log.info("Use GPU with device ID %d", gpus[0])
        log.info("GPU device name: %s", torch.cuda.get_device_name(gpus[0]))
        return f"cuda:{gpus[0]}"
    log.info("Use CPU.")
    return "cpu"


def test_batch(net: Any, i: int, scores: list[Any], names: list[str]) -> Any:
    """One ``caffe test`` batch: forward, log each output value, add it to ``scores``; the batch's loss."""
    import numpy as np
    import torch

    f32 = np.float32
    with torch.no_grad():
        iter_loss = f32(float(net.forward()))
    idx = 0
    for name in net.outputs:
        for score in net.blob_data[name].detach().float().reshape(-1).cpu().numpy():
            if i == 0:
                scores.append(f32(score))
                names.append(name)
            else:
                scores[idx] = f32(scores[idx] + f32(score))
            log.info("Batch %d, %s = %s", i, name, _g(score))
            idx += 1
    return iter_loss


def test(args: Args) -> int:
    import numpy as np

    from neocaffe.layers.base import TEST

    if not args.model:
        raise CommandError("Need a model definition to score.")
    if not args.weights:
        raise CommandError("Need model weights to score.")
    for w in weight_list(args.weights):
        check_files(w, "weights", ".caffemodel")
    device = _device(args, "test")
    net = _make_net(args.model, TEST, args, device)
    for w in weight_list(args.weights):
        with_file(w, "weights", lambda w=w: net.copy_from(w))
    net = _inference_modes(args).apply(net)  # after the weights: fold_bn folds what was loaded
    log.info("Running for %d iterations.", args.iterations)
    f32 = np.float32
    scores: list[Any] = []
    names: list[str] = []
    loss = f32(0)
    try:
        with Progress(args.iterations, "caffe test", "batches", log) as bar:
            for i in range(args.iterations):
                loss = f32(loss + test_batch(net, i, scores, names))
                bar.update()
    finally:  # also at the end of a video (KeyboardInterrupt): data workers stop, visualize's video is finished
        net.close()
    loss = f32(loss / f32(max(args.iterations, 1)))
    log.info("Loss: %s", _g(loss))
    weights = net.blob_loss_weights
    for name, s in zip(names, scores):
        mean = f32(s / f32(args.iterations))
        w = f32(weights.get(name, 0.0))
        extra = f" (* {_g(w)} = {_g(w * mean)} loss)" if w else ""
        log.info("%s = %s%s", name, _g(mean), extra)
    return 0


def _g(x: Any) -> str:
    import numpy as np

    return "%g" % float(np.float32(x))


def _gd(x: float) -> str:
    return "%g" % x


def time(args: Args) -> int:
    from neocaffe.cli.timing import benchmark

    if not args.model:
        raise CommandError("Need a model definition to time.")
    phases = {"": 0, "TRAIN": 0, "TEST": 1}
    if args.phase not in phases:
        raise CommandError('phase must be "TRAIN" or "TEST"')
    device = _device(args, "time")
    from neocaffe.solver.speed import apply_backend_flags

    modes = speed_modes(args)
    apply_backend_flags(modes, device)
    net = _make_net(args.model, phases[args.phase], args, device)
    net.tf32 = modes.precision == "tf32"
    if modes.channels_last:
        import torch

        net.set_memory_format(torch.channels_last)
    if modes.fused:
        net.set_fused_kernels(True)  # pairs fuse in the whole-net summary; per-layer timing runs them apart
    if modes.compile:
        net.enable_compile(modes.compile)  # the whole-net summary runs compiled; per-layer timing stays eager
    benchmark(net, args.iterations, modes.precision, log)
    return 0


def device_query(args: Args) -> int:
    import torch

    log.info("Querying GPUs %s", args.gpu)
    if not torch.cuda.is_available():
        raise CommandError("device_query: CUDA is not available on this machine (no GPU to query)")
    for g in gpu_ids(args.gpu or "all"):
        prop = torch.cuda.get_device_properties(g)
        log.info("Device id:                     %d", g)
        log.info("Major revision number:         %d", prop.major)
        log.info("Minor revision number:         %d", prop.minor)
        log.info("Name:                          %s", prop.name)
        log.info("Total global memory:           %d", prop.total_memory)
        log.info("Number of multiprocessors:     %d", prop.multi_processor_count)
    return 0


def export(args: Args) -> int:
    """``caffe export`` (``neocaffe.cli.export``)."""
    from neocaffe.cli.export import export as run_export

    return run_export(args, CommandError, stages(args))


COMMANDS: dict[str, Callable[[Args], int]] = {
    "train": train, "test": test, "time": time, "device_query": device_query, "export": export,
}


def main(argv: list[str] | None = None) -> int:
    from neocaffe.cli.log import setup, teardown

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        return _usage(1)
    handler = setup()
    try:
        return _run(argv)
    finally:
        teardown(handler)


def _run(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
    except HelpRequested as e:
        raise SystemExit(_usage(0, e.export)) from None
    except UsageError as e:
        sys.stderr.write(f"ERROR: {e}\n\n")
        return _usage(1)
    fn = COMMANDS.get(args.command)
    if fn is None:
        log.error("Available caffe actions:")
        for name in sorted(COMMANDS):
            log.error("\t%s", name)
        log.critical("Unknown action: %s", args.command)
        return 1
    try:
        return fn(args)
    except KeyboardInterrupt:
        log.critical("Interrupted.")
        return 130
    except (CommandError, OSError, ValueError, RuntimeError, KeyError) as e:
        log.critical("%s", e)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
