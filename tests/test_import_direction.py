"""DESIGN.md 'One way through': imports point one way only,
proto <- io <- data <- layers <- graph <- regularizers <- solver <- cli, tools <- pycaffe_compat,
and the core never imports the compat package ``caffe``. This test walks every import statement."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lower rank = deeper in the stack; a module may import its own rank or lower. rng.py (the seeded
# generators behind Caffe's RNG) sits with proto at the bottom; notify.py (run-end notices, reads logs
# through tools.parse_log) sits with the command-line front ends.
RANK = {"proto": 0, "rng": 0, "io": 1, "data": 2, "layers": 3, "graph": 4, "regularizers": 5,
        "solver": 6, "cli": 7, "tools": 7, "notify": 7, "pycaffe_compat": 8}


def _imported(path: Path, package_root: Path) -> list[tuple[str, int]]:
    """Every absolute module name ``path`` imports, with its line (relative imports resolved)."""
    rel = path.relative_to(package_root.parent).with_suffix("").parts  # ('neocaffe', 'graph', 'net')
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel[:-node.level]) if path.name != "__init__.py" else list(rel[:len(rel) - node.level + 1])
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((module, node.lineno))
            out += [(f"{module}.{a.name}", node.lineno) for a in node.names]  # `from neocaffe import rng`
    return out


def _component(module: str, package: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "caffe":
        return "pycaffe_compat"
    if parts[0] != package or len(parts) < 2:
        return None
    return parts[1]


def back_edges(package_root: Path) -> list[str]:
    """'file:line: a -> b' for every import from a lower-ranked component to a higher one."""
    package = package_root.name
    found: dict[tuple[str, int, str], str] = {}
    for path in sorted(package_root.rglob("*.py")):
        parts = path.relative_to(package_root).with_suffix("").parts
        src = parts[0]
        if src == "__init__" or src not in RANK:
            continue
        for module, line in _imported(path, package_root):
            dst = _component(module, package)
            if dst is None or dst == src or dst not in RANK:
                continue
            if RANK[dst] > RANK[src]:
                where = str(path.relative_to(package_root.parent))
                found.setdefault((where, line, dst), f"{where}:{line}: {src} -> {dst} ({module})")
    return sorted(found.values())


def test_every_component_is_ranked():
    names = {p.stem if p.is_file() else p.name for p in (ROOT / "neocaffe").iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert names <= set(RANK), f"unranked components {sorted(names - set(RANK))}: add them to RANK"


def test_no_back_edges():
    assert back_edges(ROOT / "neocaffe") == []


@pytest.mark.parametrize("source, expect", [
    ("from neocaffe.solver import solver\n", ["layers -> solver"]),
    ("from ..graph.net import Net\n", ["layers -> graph"]),
    ("import caffe\n", ["layers -> pycaffe_compat"]),
    ("from neocaffe import io\nfrom . import base\n", []),
])
def test_walker_catches_a_back_edge(tmp_path, source, expect):
    pkg = tmp_path / "neocaffe"
    (pkg / "layers").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "layers" / "__init__.py").write_text("")
    (pkg / "layers" / "bad.py").write_text(source)
    got = [e.split(": ", 1)[1].split(" (")[0] for e in back_edges(pkg)]
    assert got == expect
