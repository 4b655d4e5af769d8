"""Completion notices: SMTP to a real local server, the no-recipient line, failures never fatal."""
from __future__ import annotations

import os
import subprocess
import sys

from neocaffe import notify
from tests.harness.smtp import smtp_server

LOG = """I1121 21:49:00.1 1 solver.py:1] Iteration 30, Testing net (#0)
I1121 21:49:00.1 1 solver.py:1]     Test net output #0: accuracy = 0.75
I1121 21:49:00.1 1 solver.py:1]     Test net output #1: loss = 0.5 (* 1 = 0.5 loss)
"""


def test_smtp_notice_carries_the_run_facts(tmp_path):
    (tmp_path / "train.info").write_text(LOG)
    with smtp_server() as (port, received):
        env = {"NEOCAFFE_SMTP_HOST": "127.0.0.1", "NEOCAFFE_SMTP_PORT": str(port), "PATH": os.environ["PATH"]}
        proc = subprocess.run([sys.executable, "-m", "neocaffe.notify", "--run-dir", str(tmp_path), "--status", "0",
                               "--to", "me@example.org", "--duration", "12", "--command", "train_script.sh 0.1"],
                              env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "mailed me@example.org via SMTP" in proc.stderr
    assert len(received) == 1
    rcpts, msg = received[0]
    assert rcpts == ["me@example.org"]
    body = msg.get_payload(decode=True).decode()
    for fact in ("host:", "train_script.sh 0.1", str(tmp_path), "accuracy = 0.75", "12 s", "finished"):
        assert fact in body, fact


def test_failed_run_is_reported_as_failed(tmp_path):
    msg = notify.compose(run_dir=str(tmp_path), command="x", status=3, duration_s=1.0, to="a@b")
    assert "FAILED" in msg["Subject"] and "exit status 3" in msg.get_content()


def test_no_recipient_sends_nothing_and_says_so(tmp_path):
    line = notify.send(notify.compose(run_dir=str(tmp_path), command="x", status=0, duration_s=None, to=""), env={})
    assert line.startswith("notify: no recipient")


def test_unreachable_server_warns_but_does_not_fail(tmp_path):
    from tests.harness.smtp import _free_port

    env = {"NEOCAFFE_SMTP_HOST": "127.0.0.1", "NEOCAFFE_SMTP_PORT": str(_free_port())}
    line = notify.send(notify.compose(run_dir=str(tmp_path), command="x", status=0, duration_s=None, to="a@b"), env=env)
    assert line.startswith("notify: warning: could not send")
