"""upgrade_solver_proto_text IN OUT: upgrade an old solver prototxt (``solver_type`` enum) to the current
format. Same arguments, log lines and exit status as Caffe's tools/upgrade_solver_proto_text.cpp."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from neocaffe.cli.log import glog_to_stderr

log = logging.getLogger("neocaffe.tools.upgrade_solver_proto_text")


def run(argv: Sequence[str]) -> int:
    from neocaffe.io.errors import CaffeFileError, PrototxtError
    from neocaffe.io.prototxt import read_prototxt, write_prototxt
    from neocaffe.io.upgrade import UpgradeError, solver_needs_type_upgrade, upgrade_solver
    from neocaffe.proto.caffe_pb2 import SolverParameter

    if len(argv) != 2:
        log.error("Usage: upgrade_solver_proto_text old_solver_proto_file_in solver_proto_file_out")
        return 1
    input_filename, output_filename = argv
    try:
        solver = read_prototxt(input_filename, SolverParameter)
    except (PrototxtError, CaffeFileError, OSError) as exc:
        log.error("%s", exc)
        log.error("Failed to parse input text file as SolverParameter: %s", input_filename)
        return 2
    success = True
    if solver_needs_type_upgrade(solver):
        try:
            solver, lines = upgrade_solver(solver, source=input_filename)
        except UpgradeError as exc:
            log.error("%s: %s", input_filename, exc)
            return 1
        success = lines.ok
        if not success:
            log.error("Encountered error(s) while upgrading prototxt; see details above.")
    else:
        log.error("File already in latest proto format: %s", input_filename)
    write_prototxt(solver, output_filename)
    log.info("Wrote upgraded SolverParameter text proto to %s", output_filename)
    return 0 if success else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``upgrade_solver_proto_text old_solver_proto_file_in solver_proto_file_out``."""
    with glog_to_stderr():
        return run(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
