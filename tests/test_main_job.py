"""The README's main job, run as a user runs it: digits -> convert_imageset -> caffe train LeNet."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_main_job_reaches_97_percent(tmp_path):
    readme = (REPO / "README.md").read_text()
    assert "bash examples/digits/run.sh" in readme.split("```")[1], "README's first command must run the main job"
    for tool in ("convert_imageset", "caffe", "plot_training_log"):
        assert shutil.which(tool), f"console script {tool} is not installed"
    run = tmp_path / "run"
    proc = subprocess.run(["bash", str(REPO / "examples/digits/run.sh"), str(run)], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = re.search(r"final test accuracy: ([0-9.]+)", proc.stdout)
    assert m, proc.stdout[-2000:]
    assert float(m.group(1)) >= 0.97
    assert (run / "loss_accuracy.png").stat().st_size > 1000
    assert list((run / "snapshots").glob("lenet_digits_iter_*.caffemodel"))
    assert list((run / "snapshots").glob("lenet_digits_iter_*.solverstate"))
