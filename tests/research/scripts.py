"""The benchmark scripts the research tests run, loaded as modules (benchmarks/ is not a package)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as the module ``name`` (registered in sys.modules: dataclasses look it up)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def smoke_run(name: str, work: Path, result: str) -> tuple[ModuleType, dict]:
    """Run ``benchmarks/<name>.py --smoke --work <work>`` in this process (it must exit 0); returns the
    module and the JSON it wrote to ``work/<result>``."""
    import json

    mod = load_benchmark(name)
    assert mod.main(["--smoke", "--work", str(work)]) == 0
    return mod, json.loads((work / result).read_text())
