"""upgrade_net_proto_text IN OUT: upgrade a V0/V1 (or input-field) net prototxt to the current format.

Same arguments, log lines and exit status as Caffe's tools/upgrade_net_proto_text.cpp: 1 on bad usage
or upgrade problems, 2 when the input does not parse.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from neocaffe.cli.log import glog_to_stderr

log = logging.getLogger("neocaffe.tools.upgrade_net_proto_text")


def run(argv: Sequence[str]) -> int:
    from neocaffe.io.errors import CaffeFileError, PrototxtError
    from neocaffe.io.prototxt import read_prototxt, write_prototxt
    from neocaffe.io.upgrade import (UpgradeError, net_needs_data_upgrade, net_needs_upgrade, upgrade_net,
                                     upgrade_net_data_transformation)
    from neocaffe.proto.caffe_pb2 import NetParameter

    if len(argv) != 2:
        log.error("Usage: upgrade_net_proto_text v0_net_proto_file_in net_proto_file_out")
        return 1
    input_filename, output_filename = argv
    try:
        net = read_prototxt(input_filename, NetParameter)
    except (PrototxtError, CaffeFileError, OSError) as exc:
        log.error("%s", exc)
        log.error("Failed to parse input text file as NetParameter: %s", input_filename)
        return 2
    need_upgrade = net_needs_upgrade(net)
    need_data_upgrade = net_needs_data_upgrade(net)
    success = True
    if need_upgrade:
        try:
            net, lines = upgrade_net(net, source=input_filename)
        except UpgradeError as exc:
            log.error("%s: %s", input_filename, exc)
            return 1
        success = lines.ok
        if not success:
            log.error("Encountered error(s) while upgrading prototxt; see details above.")
    else:
        log.error("File already in latest proto format: %s", input_filename)
    if need_data_upgrade:
        upgrade_net_data_transformation(net)
    write_prototxt(net, output_filename)
    log.info("Wrote upgraded NetParameter text proto to %s", output_filename)
    return 0 if success else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``upgrade_net_proto_text v0_net_proto_file_in net_proto_file_out``."""
    with glog_to_stderr():
        return run(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
