"""upgrade_net_proto_binary IN OUT: upgrade a V0/V1 (or input-field) binary net, a ``.caffemodel`` with
its weights, to the current format.

Same arguments, log lines and exit status as Caffe's tools/upgrade_net_proto_binary.cpp (1 on bad usage
or upgrade problems, 2 when the input does not parse); the upgrade is upgrade_net_proto_text's, and the
weights are carried over unchanged.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from neocaffe.cli.log import glog_to_stderr
from neocaffe.tools.upgrade_net_proto_text import run as run_upgrade

log = logging.getLogger("neocaffe.tools.upgrade_net_proto_binary")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``upgrade_net_proto_binary v0_net_proto_file_in net_proto_file_out``."""
    with glog_to_stderr():
        return run_upgrade(sys.argv[1:] if argv is None else list(argv), binary=True)


if __name__ == "__main__":
    sys.exit(main())
