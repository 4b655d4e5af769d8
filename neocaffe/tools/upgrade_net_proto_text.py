"""upgrade_net_proto_text IN OUT: upgrade a V0/V1 (or input-field) net prototxt to the current format.

Same arguments, log lines and exit status as Caffe's tools/upgrade_net_proto_text.cpp: 1 on bad usage
or upgrade problems, 2 when the input does not parse.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from neocaffe.cli.log import glog_to_stderr
from neocaffe.tools._upgrade_text import upgrade_text_file

log = logging.getLogger("neocaffe.tools.upgrade_net_proto_text")


def run(argv: Sequence[str], *, binary: bool = False) -> int:
    """The tool on ``argv`` (IN OUT); ``binary``: upgrade_net_proto_binary (a .caffemodel in and out)."""
    from neocaffe.io.upgrade import (net_needs_data_upgrade, net_needs_upgrade, upgrade_net,
                                     upgrade_net_data_transformation)
    from neocaffe.proto.caffe_pb2 import NetParameter

    def data_upgrade(read: NetParameter, net: NetParameter) -> None:  # decided on the file as read
        if net_needs_data_upgrade(read):
            upgrade_net_data_transformation(net)

    tool = "upgrade_net_proto_binary" if binary else "upgrade_net_proto_text"
    return upgrade_text_file(argv, usage=f"Usage: {tool} v0_net_proto_file_in net_proto_file_out",
                             message_type=NetParameter, needs_upgrade=net_needs_upgrade, upgrade=upgrade_net,
                             log=log, finish=data_upgrade, binary=binary)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``upgrade_net_proto_text v0_net_proto_file_in net_proto_file_out``."""
    with glog_to_stderr():
        return run(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
