"""Combine the parts of one ``benchmarks/gpu_check.sh`` run into one JSON, with issue 19's targets.

Reads, in the check's output folder: ``steps.tsv`` (each step's status and seconds), ``pytest_gpu.xml``
(junit of ``pytest -m gpu``), ``suite_parts.json`` (``run_all.py``'s sections), ``zoo_parity.json``;
writes ``suite_cuda.json`` there (``suite_cpu_dryrun.json`` for a CPU dry run) and prints a short table.

    python benchmarks/gpu_combine.py [--dry-run] OUT_DIR          # what gpu_check.sh's last step runs
    python benchmarks/gpu_combine.py --merge-into benchmarks/results/suite_cuda.json NEW.json
                                                                  # lay a rerun of some steps over a run

Targets (one H200/H100; benchmark figures): bf16 >= 30,000 images/s and tf32 >= 15,000 compute-only,
ours / plain-PyTorch AlexNet >= 1.0 in every mode, LMDB end to end >= 80% of compute-only, force
regularization <= 5% of an iteration, every ``pytest -m gpu`` test passing, every supported zoo model
equal on CUDA and CPU within 1e-5 of its output's scale. ``met`` is null where nothing was measured.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

BF16_MODES = ("bf16", "bf16+channels_last+cudnn_benchmark", "bf16+channels_last+cudnn_benchmark+fused")


def read_steps(path: Path) -> dict:
    """steps.tsv (name, status, seconds, time box, note) -> {name: {...}}; the last line of a name wins."""
    steps: dict = {}
    if path.exists():
        for line in path.read_text().splitlines():
            f = line.split("\t")
            if len(f) >= 4:
                steps[f[0]] = {"status": f[1], "seconds": float(f[2]), "time_box_s": float(f[3]),
                               **({"note": f[4]} if len(f) > 4 and f[4] else {})}
    return steps


def read_junit(path: Path) -> dict:
    """Counts and the failing/erroring test ids of a junit XML; ``{}`` when absent or unreadable."""
    if not path.exists():
        return {}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        return {"error": f"unreadable junit XML: {e}"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    out["passed"] = out["tests"] - out["failures"] - out["errors"] - out["skipped"]
    out["time_s"] = round(sum(float(s.get("time", 0)) for s in suites), 1)
    bad, skips = [], {}
    for case in root.iter("testcase"):
        tid = f"{case.get('classname', '')}::{case.get('name', '')}"
        for kind in ("failure", "error"):
            el = case.find(kind)
            if el is not None:
                bad.append({"test": tid, kind: (el.get("message") or "")[:300]})
        el = case.find("skipped")
        if el is not None:
            why = (el.get("message") or "")[:200]
            skips[why] = skips.get(why, 0) + 1
    out["not_passed"] = bad
    out["skip_reasons"] = skips
    return out


def _rate(row: Any) -> float | None:
    return row.get("images_per_s") if isinstance(row, dict) else None


def _target(value: Any, target: float, op: str, **extra: Any) -> dict:
    met = None if value is None else (value >= target if op == ">=" else value <= target)
    return {"value": value, "target": f"{op} {target}", "met": met, **extra}


def targets(suite: dict, pytest: dict, zoo: dict) -> dict:
    """Issue 19's targets from the measured figures (``met`` null where not measured)."""
    modes = suite.get("train", {}).get("modes", {}) if isinstance(suite.get("train"), dict) else {}
    ours = {m: _rate(r.get("neocaffe")) for m, r in modes.items() if isinstance(r, dict)}
    out: dict = {}
    bf16 = {m: ours[m] for m in BF16_MODES if ours.get(m) is not None}
    best = max(bf16, key=bf16.get) if bf16 else None
    out["bf16_images_per_s"] = _target(bf16.get(best) if best else None, 30000, ">=", mode=best, all=bf16)
    out["tf32_images_per_s"] = _target(ours.get("tf32"), 15000, ">=")
    ratios = {m: r["ours_over_torch"] for m, r in modes.items() if isinstance(r, dict) and "ours_over_torch" in r}
    out["ours_over_torch_every_mode"] = _target(min(ratios.values()) if ratios else None, 1.0, ">=", per_mode=ratios)
    e2e = suite.get("e2e", {}).get("modes", {}) if isinstance(suite.get("e2e"), dict) else {}
    shares = {m: round(_rate(r) / ours[m], 3) for m, r in e2e.items() if _rate(r) and ours.get(m)}
    out["lmdb_e2e_share_of_compute"] = _target(min(shares.values()) if shares else None, 0.8, ">=", per_mode=shares)
    force = suite.get("force", {}) if isinstance(suite.get("force"), dict) else {}
    out["force_overhead_pct"] = _target(force.get("force_batched", {}).get("overhead_pct"), 5.0, "<=")
    if pytest and "tests" in pytest:
        bad = pytest["failures"] + pytest["errors"]
        partial = pytest.get("incomplete")
        out["pytest_gpu_all_pass"] = {"value": f"{pytest['passed']} passed, {bad} failed/errors, "
                                               f"{pytest['skipped']} skipped" + (" (run incomplete)" if partial else ""),
                                      "target": "all pass",
                                      "met": None if bad == 0 and (pytest["passed"] == 0 or partial) else bad == 0}
    else:
        out["pytest_gpu_all_pass"] = {"value": None, "target": "all pass", "met": None}
    s = zoo.get("summary")
    target = "every supported model within 1e-5"
    if not s:
        out["zoo_parity"] = {"value": None, "target": target, "met": None}
    elif zoo.get("incomplete"):  # the step stopped part-way: a failure so far counts, a pass cannot yet
        out["zoo_parity"] = {"value": {**s, "incomplete": zoo["incomplete"]}, "target": target,
                             "met": False if s["differs"] or s["error"] else None}
    else:
        out["zoo_parity"] = {"value": s, "target": target, "met": not s["differs"] and not s["error"] and s["ok"] > 0}
    return out


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError as e:
        return {"error": f"unreadable {path.name}: {e}"}


_OUTCOME = re.compile(r"(?:\b(PASSED|FAILED|ERROR|SKIPPED)\b\s+(tests/\S+)|(tests/\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED)\b)")


def read_pytest_text(path: Path) -> dict:
    """Counts from the verbose (``-v``) lines of pytest's output, for a run killed before it wrote its junit
    XML: ``incomplete`` says so; ``{}`` when absent or no outcome line is there."""
    if not path.exists():
        return {}
    seen: dict[str, str] = {}
    for m in _OUTCOME.finditer(path.read_text(errors="replace")):
        outcome, tid = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        seen[tid] = outcome
    if not seen:
        return {}
    outcomes = list(seen.values())
    out = {"tests": len(seen), "passed": outcomes.count("PASSED"), "failures": outcomes.count("FAILED"),
           "errors": outcomes.count("ERROR"), "skipped": outcomes.count("SKIPPED"),
           "not_passed": [{"test": t, o.lower(): ""} for t, o in seen.items() if o in ("FAILED", "ERROR")][:50],
           "incomplete": f"read from {path.name}: the run ended before pytest wrote its junit XML"}
    return out


def combine(out_dir: Path, dry_run: bool) -> dict:
    suite, zoo = _load(out_dir / "suite_parts.json"), _load(out_dir / "zoo_parity.json")
    pytest = read_junit(out_dir / "pytest_gpu.xml") or read_pytest_text(out_dir / "pytest_gpu.txt")
    steps = read_steps(out_dir / "steps.tsv")
    header = {k: suite.get(k, zoo.get(k)) for k in ("device", "cpu", "torch", "cuda", "cudnn", "python", "gpu_memory_gb",
                                                    "multiprocessors", "capability", "date") if k in suite or k in zoo}
    judged = targets(suite, pytest, zoo)
    if dry_run:  # CPU smoke figures: the judgment is shown but nothing is "met"
        judged = {k: {**v, "met": None, "dry_run_would_say": v["met"]} for k, v in judged.items()}
    return {"benchmark": "issue 19's GPU check (benchmarks/gpu_check.sh)", **header,
            "dry_run": dry_run,
            "steps": steps, "pytest_gpu": pytest, "suite": suite, "zoo_parity": zoo, "targets": judged}


def merge(old: dict, new: dict) -> dict:
    """``old`` with the steps that ``new`` ran laid over it; targets recomputed."""
    from run_all import merged

    out = dict(old)
    ran = {k for k, v in new.get("steps", {}).items() if not str(v.get("status", "")).startswith("skipped")}
    out["steps"] = {**old.get("steps", {}), **{k: new["steps"][k] for k in ran}}
    if "pytest" in ran:
        out["pytest_gpu"] = new.get("pytest_gpu", {})
    if ran & {"train", "suite", "compile"} and new.get("suite"):
        out["suite"] = merged(old["suite"], new["suite"]) if old.get("suite") else new["suite"]
    if "zoo" in ran and new.get("zoo_parity"):
        z = dict(old.get("zoo_parity") or new["zoo_parity"])
        z["models"] = {**z.get("models", {}), **new["zoo_parity"].get("models", {})}
        z.pop("incomplete", None)  # the rerun's own completeness decides
        if new["zoo_parity"].get("incomplete"):
            z["incomplete"] = new["zoo_parity"]["incomplete"]
        statuses = [r["status"].split(":")[0] for r in z["models"].values()]
        z["summary"] = {s: statuses.count(s) for s in ("ok", "differs", "error", "unsupported")}
        out["zoo_parity"] = z
    out["targets"] = targets(out.get("suite", {}), out.get("pytest_gpu", {}), out.get("zoo_parity", {}))
    return out


def table(r: dict) -> str:
    lines = [f"{r.get('device', '?')} | torch {r.get('torch', '?')} | "
             + ("DRY RUN: CPU smoke figures, not the GPU targets" if r.get("dry_run") else "CUDA run")]
    for name, s in r.get("steps", {}).items():
        lines.append(f"  step {name:8s} {s['status'][:60]:60s} {s['seconds']:6.0f} s / {s['time_box_s']:.0f}")
    p = r.get("pytest_gpu") or {}
    if "tests" in p:
        lines.append(f"  pytest -m gpu: {p['passed']} passed, {p['failures']} failed, {p['errors']} errors, "
                     f"{p['skipped']} skipped")
        lines += [f"    NOT PASSED {b['test']}" for b in p["not_passed"][:20]]
    modes = (r.get("suite") or {}).get("train", {}).get("modes", {})
    for m, row in modes.items():
        if isinstance(row, dict) and "neocaffe" in row:
            lines.append(f"  train {m:42s} ours {_rate(row['neocaffe'])!s:>10s} img/s  torch "
                         f"{_rate(row.get('torch_nn', {}))!s:>10s}  ours/torch {row.get('ours_over_torch', '-')}")
    for name, t in r.get("targets", {}).items():
        met = {True: "MET", False: "NOT MET", None: "not measured"}[t["met"]]
        if r.get("dry_run"):
            met = {True: "(dry) met", False: "(dry) not met", None: "not measured"}[t.get("dry_run_would_say")]
        lines.append(f"  target {name:28s} {met:13s} {json.dumps(t['value'])[:70]} (target {t['target']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", nargs="?", help="the folder of one gpu_check.sh run")
    ap.add_argument("--dry-run", action="store_true", help="a CPU dry run: write suite_cpu_dryrun.json")
    ap.add_argument("--merge-into", default="", help="a combined JSON to update with NEW.json (given as out_dir)")
    a = ap.parse_args(argv)
    if a.merge_into:
        base, new = Path(a.merge_into), _load(Path(a.out_dir))
        result = merge(_load(base), new) if base.exists() else new
        base.write_text(json.dumps(result, indent=2) + "\n")
        print(table(result))
        print(f"wrote {base}")
        return 0
    out_dir = Path(a.out_dir)
    result = combine(out_dir, a.dry_run)
    dest = out_dir / ("suite_cpu_dryrun.json" if result["dry_run"] else "suite_cuda.json")
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
