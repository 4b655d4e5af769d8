"""upgrade_solver_proto_text IN OUT: upgrade an old solver prototxt (``solver_type`` enum) to the current
format. Same arguments, log lines and exit status as Caffe's tools/upgrade_solver_proto_text.cpp."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from neocaffe.cli.log import glog_to_stderr
from neocaffe.tools._upgrade_text import upgrade_text_file

log = logging.getLogger("neocaffe.tools.upgrade_solver_proto_text")


def run(argv: Sequence[str]) -> int:
    from neocaffe.io.upgrade import solver_needs_type_upgrade, upgrade_solver
    from neocaffe.proto.caffe_pb2 import SolverParameter

    return upgrade_text_file(argv, usage="Usage: upgrade_solver_proto_text old_solver_proto_file_in solver_proto_file_out",
                             message_type=SolverParameter, needs_upgrade=solver_needs_type_upgrade,
                             upgrade=upgrade_solver, log=log)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``upgrade_solver_proto_text old_solver_proto_file_in solver_proto_file_out``."""
    with glog_to_stderr():
        return run(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
