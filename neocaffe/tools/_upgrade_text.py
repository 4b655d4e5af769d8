"""The part Caffe's upgrade_net_proto_text, upgrade_net_proto_binary and upgrade_solver_proto_text
share: read IN, upgrade it if it needs it, write OUT, with their log lines and exit status (1 on bad
usage or upgrade problems, 2 when the input does not parse)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any


def upgrade_text_file(
    argv: Sequence[str],
    *,
    usage: str,
    message_type: type,
    needs_upgrade: Callable[[Any], bool],
    upgrade: Callable[..., tuple[Any, Any]],
    log: logging.Logger,
    finish: Callable[[Any, Any], None] | None = None,
    binary: bool = False,
) -> int:
    """``argv`` = IN OUT. ``upgrade(message, source=IN)`` returns (upgraded copy, its log lines);
    ``finish(as_read, upgraded)`` runs before the write. ``binary``: IN and OUT are binary protos
    (a NetParameter: a .caffemodel), else text. Lines are logged as the calling tool's."""
    from neocaffe.io.caffemodel import read_net_binary, write_net_binary
    from neocaffe.io.errors import CaffeFileError, PrototxtError
    from neocaffe.io.prototxt import read_prototxt, write_prototxt
    from neocaffe.io.upgrade import UpgradeError

    kind = message_type.__name__
    if len(argv) != 2:
        log.error("%s", usage, stacklevel=2)
        return 1
    input_filename, output_filename = argv
    form = "binary" if binary else "text"
    try:
        if binary:
            message = read_net_binary(input_filename, upgrade=False)
        else:
            message = read_prototxt(input_filename, message_type)
    except (PrototxtError, CaffeFileError, OSError) as exc:
        log.error("%s", exc, stacklevel=2)
        log.error("Failed to parse input %s file as %s: %s", form, kind, input_filename, stacklevel=2)
        return 2
    read = message
    success = True
    if needs_upgrade(message):
        try:
            message, lines = upgrade(message, source=input_filename)
        except UpgradeError as exc:
            log.error("%s: %s", input_filename, exc, stacklevel=2)
            return 1
        success = lines.ok
        if not success:
            log.error("Encountered error(s) while upgrading prototxt; see details above.", stacklevel=2)
    else:
        log.error("File already in latest proto format: %s", input_filename, stacklevel=2)
    if finish is not None:
        finish(read, message)
    (write_net_binary if binary else write_prototxt)(message, output_filename)
    log.info("Wrote upgraded %s %s proto to %s", kind, form, output_filename, stacklevel=2)
    return 0 if success else 1
