"""DESIGN.md 'One way through': imports point one way only,
proto <- io <- data <- layers <- graph <- regularizers <- solver <- cli, tools <- pycaffe_compat,
and the core never imports the compat package ``caffe``. This test walks every import statement."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lower rank = deeper in the stack; a module may import its own rank or lower. rng.py (the seeded
# generators behind Caffe's RNG) and flags.py (the gflags parser of the caffe command and the tools)
# sit with proto at the bottom; notify.py (run-end notices, reads logs through tools.parse_log) sits
# with the command-line front ends; export (ONNX, .pt2, BatchNorm
# folding) needs only graph and sits beside regularizers.
RANK = {"proto": 0, "rng": 0, "progress": 0, "flags": 0, "io": 1, "data": 2, "layers": 3, "graph": 4, "regularizers": 5, "export": 5,
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


# -- cycles between files of one package ----------------------------------------------------------
def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (imports for annotations only, not run)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                out.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return out


def file_cycles(package_root: Path) -> list[str]:
    """'a.py <-> b.py' for every pair of files of one package that import each other (at module level
    or inside functions; ``TYPE_CHECKING`` imports do not count), and longer cycles as 'a -> b -> c'."""
    package = package_root.name
    edges: dict[str, set[str]] = {}
    files = {".".join(p.relative_to(package_root.parent).with_suffix("").parts): p
             for p in package_root.rglob("*.py") if p.name != "__init__.py"}
    for mod, path in files.items():
        skip = _type_checking_lines(ast.parse(path.read_text(), str(path)))
        pkg = mod.rsplit(".", 1)[0]
        for name, line in _imported(path, package_root):
            if line in skip or not name.startswith(package + "."):
                continue
            target = name if name in files else name.rsplit(".", 1)[0]
            if target in files and target != mod and target.rsplit(".", 1)[0] == pkg:
                edges.setdefault(mod, set()).add(target)
    found: set[str] = set()

    def walk(start: str, node: str, trail: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                cyc = trail + [start]
                k = cyc.index(min(cyc[:-1]))
                found.add(" -> ".join(cyc[k:-1] + cyc[:k + 1]))
            elif nxt not in trail and len(trail) < 6:
                walk(start, nxt, trail + [nxt])

    for mod in sorted(edges):
        walk(mod, mod, [mod])
    return sorted(found)


def test_no_import_cycles_between_files_of_a_package():
    assert file_cycles(ROOT / "neocaffe") == []


def test_cycle_walker_catches_a_cycle(tmp_path):
    pkg = tmp_path / "neocaffe"
    (pkg / "graph").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "graph" / "__init__.py").write_text("")
    (pkg / "graph" / "a.py").write_text("from neocaffe.graph.b import x\n")
    (pkg / "graph" / "b.py").write_text("def f():\n    from neocaffe.graph import a\n")
    (pkg / "graph" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                        "    from neocaffe.graph.a import y\n")
    (pkg / "graph" / "d.py").write_text("from neocaffe.graph.c import z\n")
    assert file_cycles(pkg) == ["neocaffe.graph.a -> neocaffe.graph.b -> neocaffe.graph.a"]


# -- private fields belong to their module --------------------------------------------------------
def private_accesses(root: Path) -> list[str]:
    """'file:line: x._name' wherever a module reads or writes a ``_private`` attribute of an object
    it did not define: the name is bound nowhere in the file (as ``self._name``, a function, a class
    attribute or a module global), and the object is not a third-party module (``torch._C``)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name.endswith("_pb2.py"):  # generated by protoc
            continue
        tree = ast.parse(path.read_text(), str(path))
        defined: set[str] = set()
        external: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                defined.add(node.attr)
            elif isinstance(node, ast.arg):
                defined.add(node.arg)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = node.module or "" if isinstance(node, ast.ImportFrom) else ""
                for a in node.names:
                    full = a.name if isinstance(node, ast.Import) else f"{mod}.{a.name}"
                    if not full.split(".")[0] in ("neocaffe", "caffe") and not getattr(node, "level", 0):
                        external.add((a.asname or a.name).split(".")[0])
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            attr = node.attr
            if not attr.startswith("_") or attr.startswith("__"):
                continue
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and (base.id in external or base.id in ("self", "cls")
                                               and isinstance(node.value, ast.Name)):
                continue
            if attr in defined:
                continue
            found.append(f"{path.relative_to(root.parent)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_touches_another_objects_private_fields():
    assert private_accesses(ROOT / "neocaffe") + private_accesses(ROOT / "pycaffe_compat") == []


def test_private_walker_catches_a_foreign_field(tmp_path):
    pkg = tmp_path / "neocaffe"
    pkg.mkdir()
    (pkg / "a.py").write_text("import torch\nclass A:\n    def __init__(self):\n        self._mine = 1\n"
                              "    def f(self, net):\n        torch._foreach_add_([], 1)\n"
                              "        return self._mine + net._first\n")
    assert private_accesses(pkg) == ["neocaffe/a.py:7: net._first"]
