"""``caffe train``: one process, or data-parallel over several (``-gpu 0,1``, ``-gpu all``,
``-cpu_procs N``: re-run under torchrun; started by torchrun: join its process group)."""
from __future__ import annotations

import logging
import sys
from typing import Any

from neocaffe.cli.common import (Args, CommandError, SignalActions, check_files, gpu_ids, speed_modes, stages,
                                 weight_list, with_file)

log = logging.getLogger("neocaffe.cli")


def train(args: Args) -> int:
    from neocaffe.cli.log import Progress
    from neocaffe.io.prototxt import read_solver
    from neocaffe.solver.parallel import DataParallel, launch_env, launched
    from neocaffe.solver.solver import Solver

    if not args.solver:
        raise CommandError("Need a solver definition to train.")
    if args.snapshot and args.weights:
        raise CommandError("Give a snapshot to resume training or weights to finetune but not both.")
    if args.cpu_procs < 0:
        raise CommandError(f"-cpu_procs must be positive; received {args.cpu_procs}")
    if args.cpu_procs and args.gpu:
        raise CommandError("-cpu_procs trains on CPU processes; it cannot be combined with -gpu")
    modes = speed_modes(args)
    param = read_solver(args.solver)
    param.train_state.level = args.level
    for s in stages(args):
        param.train_state.stage.append(s)
    gpus = gpu_ids(args.gpu)
    procs = len(gpus) if len(gpus) > 1 else args.cpu_procs
    if procs > 1 and not launched():
        return _relaunch(args, procs)
    rank, world, local_rank = launch_env()
    device = None
    if gpus:
        device = f"cuda:{gpus[local_rank % len(gpus)]}"
        if rank == 0:
            log.info("Using GPUs %s", ", ".join(str(g) for g in gpus))
            import torch

            for g in gpus:
                log.info("GPU %d: %s", g, torch.cuda.get_device_name(g))
    elif args.cpu_procs or param.solver_mode != param.GPU:
        device = "cpu"
        log.info("Use CPU.")
    else:  # the solver's solver_mode/device_id decide (CPU with a warning when CUDA is absent)
        import torch

        if world > 1 and torch.cuda.is_available():
            from neocaffe.solver.nets import solver_device_id

            # TSN's repeated device_id: process k takes the k-th id (on this machine; the fork's MPI rank)
            device = (f"cuda:{solver_device_id(param, local_rank, world)}" if len(param.device_id)
                      else f"cuda:{local_rank % torch.cuda.device_count()}")
    check_files(args.snapshot, "snapshot", ".solverstate")
    for w in weight_list(args.weights):
        check_files(w, "weights", ".caffemodel")
    dp = None
    if world > 1:
        from neocaffe.solver.nets import resolve_device

        dp = DataParallel(resolve_device(param, device))
        if dp.rank != 0:  # Caffe logs from the root solver
            logging.getLogger("neocaffe").setLevel(logging.WARNING)
        log.info("Data-parallel training: %d processes (%s), batch_size per process", dp.world_size, dp.backend)
    signals = SignalActions(args.sigint_effect, args.sighup_effect)
    try:
        solver = Solver(param, device=device, action_request=signals, precision=modes.precision,
                        channels_last=modes.channels_last, cudnn_benchmark=modes.cudnn_benchmark,
                        compile=modes.compile, fused=modes.fused, data_parallel=dp,
                        tensorboard=args.tensorboard, tensorboard_histograms=args.tensorboard_histograms,
                        source=args.solver)
        try:
            return _train(args, solver, signals, Progress)
        finally:
            solver.close()
    finally:
        if dp is not None:
            dp.close()


def _train(args: Args, solver: Any, signals: SignalActions, progress_cls: Any) -> int:
    from neocaffe.solver.jacinto_sparsity import ignores_shape_mismatch  # caffe-jacinto's solver field

    if args.snapshot:
        log.info("Resuming from %s", args.snapshot)
        with_file(args.snapshot, "snapshot", lambda: solver.restore(args.snapshot))
    else:
        for w in weight_list(args.weights):
            log.info("Finetuning from %s", w)
            lenient = ignores_shape_mismatch(solver.param)
            with_file(w, "weights", lambda w=w: [n.copy_from(w, ignore_shape_mismatch=lenient)
                                                 for n in [solver.net, *solver.test_nets]])
    if solver.dp is not None:
        solver.sync_parameters()
    progress = None
    from neocaffe.cli import log as glog

    handler = glog.current_handler()
    if solver.rank == 0 and handler is not None and progress_cls.wanted(handler.stream):
        progress = progress_cls(solver, handler)
        solver.add_callback(progress)
    log.info("Starting Optimization")
    signals.install()
    try:
        solver.solve()
    finally:
        signals.uninstall()
        if progress is not None:
            progress.close()
    if solver.diverged:
        log.critical("Training stopped at iteration %d: the loss is not finite (NaN or infinite).", solver.iter)
        return 2
    log.info("Optimization Done.")
    return 0


def _relaunch(args: Args, procs: int) -> int:
    """Run this same command as ``procs`` data-parallel processes under torchrun; its exit status."""
    import shlex
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           "-m", "neocaffe.cli.caffe", *args.argv]
    log.info("Starting %d data-parallel processes: %s", procs, " ".join(shlex.quote(c) for c in cmd))
    return subprocess.call(cmd)
