"""What `import caffe` and a CLI start pull in: not torch._dynamo, whose import alone took 2.3 s of the
5.8-7.0 s a `caffe` command spent starting (torch 2.13, CPU), paid by every tool run and every test that
starts one. torch.compile imports it when a net is compiled; a module-level ``@torch.compiler.disable``
imports it at import time (DetectionOutput wraps its file work at setup instead)."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_import_caffe_and_the_cli_leave_torch_dynamo_unimported():
    code = ("import sys, caffe, neocaffe.cli.caffe, neocaffe.layers; "
            "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo'))[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"imported at startup: {out.stdout.strip()}"
