"""Completion notices for training runs: e-mail by SMTP, or the system ``mail`` command.

Settings come from the environment, never from the scripts: ``NEOCAFFE_MAIL_TO`` (recipient; the
``--to`` option overrides it), ``NEOCAFFE_SMTP_HOST``, ``NEOCAFFE_SMTP_PORT`` (default 25, or 587 with
TLS), ``NEOCAFFE_SMTP_USER``, ``NEOCAFFE_SMTP_PASSWORD``, ``NEOCAFFE_SMTP_TLS`` (1/true: STARTTLS).
With an SMTP host set, mail goes by SMTP; otherwise through ``mail -s`` when that command exists (as
the fork's scripts did). No recipient: no mail, one line saying so. A failure to send warns and
never fails the run (exit status 0).

Usage: neocaffe-notify --run-dir DIR --status 0 [--to ADDR] [--duration S] [--command CMD] [--log FILE]
"""
from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import socket
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Mapping

from neocaffe.tools.parse_log import parse_log


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def final_test_outputs(log_text: str) -> dict[str, float]:
    """The last test pass's outputs in a training log (name -> value)."""
    _, test = parse_log(log_text)
    if not test:
        return {}
    return {k: v for k, v in test[-1].items() if k not in ("NumIters", "LearningRate")}


def compose(*, run_dir: str, command: str, status: int, duration_s: float | None,
            log_text: str = "", host: str | None = None, sender: str | None = None,
            to: str = "") -> EmailMessage:
    """The notice: host, command, run folder, final test outputs, duration, success or failure."""
    host = host or socket.gethostname()
    failed = status != 0
    outputs = final_test_outputs(log_text)
    lines = [
        f"host: {host}",
        f"command: {command}",
        f"run folder: {run_dir}",
        f"status: {'FAILED (exit status %d)' % status if failed else 'finished'}",
        f"duration: {duration_s:.0f} s" if duration_s is not None else "duration: unknown",
        "final test outputs:" if outputs else "final test outputs: none in the log",
    ]
    lines += [f"    {k} = {v:g}" for k, v in outputs.items()]
    msg = EmailMessage()
    msg["Subject"] = f"Training {'FAILED' if failed else 'done'} on {host}: {Path(run_dir).name}"
    msg["From"] = sender or f"neocaffe@{host}"
    msg["To"] = to
    msg.set_content("\n".join(lines) + "\n")
    return msg


def send(msg: EmailMessage, env: Mapping[str, str] | None = None) -> str:
    """Send ``msg``; returns a one-line account of what happened (never raises)."""
    env = os.environ if env is None else env
    to = msg["To"]
    if not to:
        return "notify: no recipient (set NEOCAFFE_MAIL_TO or pass --to); no mail sent"
    smtp_host = env.get("NEOCAFFE_SMTP_HOST", "")
    try:
        if smtp_host:
            tls = _truthy(env.get("NEOCAFFE_SMTP_TLS"))
            port = int(env.get("NEOCAFFE_SMTP_PORT") or (587 if tls else 25))
            with smtplib.SMTP(smtp_host, port, timeout=30) as server:
                if tls:
                    server.starttls()
                user = env.get("NEOCAFFE_SMTP_USER")
                if user:
                    server.login(user, env.get("NEOCAFFE_SMTP_PASSWORD", ""))
                server.send_message(msg)
            return f"notify: mailed {to} via SMTP {smtp_host}:{port}"
        mail = shutil.which("mail")
        if mail:
            proc = subprocess.run([mail, "-s", str(msg["Subject"]), to], input=msg.get_content(),
                                  text=True, capture_output=True, timeout=60)
            if proc.returncode != 0:
                return f"notify: warning: 'mail' exited {proc.returncode}: {proc.stderr.strip()[:200]}"
            return f"notify: mailed {to} via the mail command"
        return "notify: warning: no NEOCAFFE_SMTP_HOST set and no 'mail' command found; no mail sent"
    except (OSError, smtplib.SMTPException, subprocess.SubprocessError, ValueError) as e:
        return f"notify: warning: could not send mail to {to}: {e}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--status", type=int, default=0, help="the training command's exit status")
    ap.add_argument("--to", default=None, help="recipient (default: $NEOCAFFE_MAIL_TO)")
    ap.add_argument("--duration", type=float, default=None, help="seconds the run took")
    ap.add_argument("--command", default="", help="the command line that ran")
    ap.add_argument("--log", default=None, help="training log (default: RUN_DIR/train.info)")
    args = ap.parse_args(argv)
    log_path = Path(args.log) if args.log else Path(args.run_dir) / "train.info"
    log_text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    to = args.to if args.to is not None else os.environ.get("NEOCAFFE_MAIL_TO", "")
    msg = compose(run_dir=args.run_dir, command=args.command, status=args.status,
                  duration_s=args.duration, log_text=log_text, to=to)
    print(send(msg), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
