"""A real SMTP server on localhost (aiosmtpd) that records the messages it receives."""
from __future__ import annotations

import socket
from contextlib import contextmanager
from email import message_from_bytes
from typing import Iterator

from aiosmtpd.controller import Controller


class _Recorder:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def smtp_server() -> Iterator[tuple[int, list]]:
    """(port, received messages) of a running local SMTP server."""
    rec = _Recorder()
    port = _free_port()
    ctl = Controller(rec, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield port, rec.messages
    finally:
        ctl.stop()
