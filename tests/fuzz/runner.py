"""The parent side: mutated cases from seeds (``make_cases``), run in child processes with a
per-case timeout and a memory limit (``run_cases``; a child that dies or stalls is reported on the
case it was reading and the run goes on from the next one in a new child), judged (``judge``) and
counted (``summarize``).

A case's outcome is ``accepted`` (it loaded), ``rejected`` (a neocaffe error naming the file),
``foreign`` (an error of another library or of Python's), ``unnamed`` (a neocaffe error that does
not name the file), ``crash`` (the child died), ``hang`` (no outcome within the timeout) or
``not_run`` (left after too many crashes and hangs)."""
from __future__ import annotations

import json
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.fuzz.child import MARK
from tests.fuzz.mutate import mutate
from tests.fuzz.seeds import Seed

REPO = Path(__file__).resolve().parents[2]
OUTCOMES = ["accepted", "rejected", "foreign", "unnamed", "crash", "hang", "not_run"]


def _case_name(i: int, seed: Seed, target: Path) -> str:
    return f"c{i:05d}_{seed.name}_{target.name}"


def make_case(rng: random.Random, i: int, seed: Seed, folder: Path, mutated: bool = True,
              schema_edits: bool = True) -> dict:
    """Copy ``seed`` into ``folder`` with one of its files mutated; the case's record.
    ``schema_edits``: protobuf files may also get a schema-aware edit (``mutate.proto_edit``)."""
    target = rng.choice(seed.files)
    case = {"kind": seed.kind, "seed": seed.name, "aux": dict(seed.aux), "op": "none"}
    if seed.path.is_dir():  # a database: copy the folder, mutate one of its files
        dest = folder / _case_name(i, seed, seed.path)
        shutil.copytree(seed.path, dest)
        case["path"] = str(dest)
        out = dest / target.name
    elif seed.kind in ("hdf5data", "imagedata"):  # the list and its files, the list naming the copies
        dest = folder / f"c{i:05d}_{seed.name}"
        dest.mkdir()
        for f in seed.files[1:]:
            shutil.copy(f, dest / f.name)
        listing = dest / seed.path.name
        label = (lambda k: f" {k}") if seed.kind == "imagedata" else (lambda k: "")
        listing.write_text("".join(f"{dest / f.name}{label(k)}\n" for k, f in enumerate(seed.files[1:])))
        case["path"] = str(listing)
        out = dest / target.name
    elif seed.path not in seed.files or len(seed.files) > 1:  # a file read with companions (a solverstate's
        # .resume.pt) or naming files beside it (DenseImageData's pairs): the folder copied
        dest = folder / f"c{i:05d}_{seed.name}"
        dest.mkdir()
        for f in [seed.path, *seed.files]:
            shutil.copy(f, dest / f.name)
        case["path"] = str(dest / seed.path.name)
        out = dest / target.name
    else:
        out = folder / _case_name(i, seed, target)
        shutil.copy(target, out)
        case["path"] = str(out)
    case["mutated"] = str(out)
    if mutated:
        message = None
        if schema_edits and seed.message and target == seed.path:
            from neocaffe.proto import caffe_pb2

            message = getattr(caffe_pb2, seed.message)
        data, case["op"] = mutate(rng, out.read_bytes(), text=target.suffix in (".prototxt", ".txt"),
                                  message_type=message)
        out.write_bytes(data)
    return case


def make_cases(seeds: dict[str, list[Seed]], folder: Path, per_kind: int, seed: int,
               kinds: list[str] | None = None, first: int = 0, schema_edits: bool = True) -> list[dict]:
    """``per_kind`` mutated cases of each kind (its seeds in turn), numbered from ``first``."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cases, i = [], first
    for kind in kinds or list(seeds):
        for k in range(per_kind):
            cases.append(make_case(rng, i, seeds[kind][k % len(seeds[kind])], folder, schema_edits=schema_edits))
            i += 1
    return cases


def seed_cases(seeds: dict[str, list[Seed]], folder: Path) -> list[dict]:
    """Every seed copied unchanged (each must load: the harness's own check)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    return [make_case(rng, 90000 + i, s, folder, mutated=False)
            for i, s in enumerate(s for group in seeds.values() for s in group)]


def _child(cases_file: Path, start: int, memory_mb: int, cwd: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", NEOCAFFE_DATA_WORKERS=os.environ.get("NEOCAFFE_DATA_WORKERS", "0"),
               NEOCAFFE_PROGRESS="0", CUDA_VISIBLE_DEVICES="")  # the readers on the CPU, wherever it runs
    return subprocess.Popen([sys.executable, "-m", "tests.fuzz.child", str(cases_file), str(start), str(memory_mb)],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=log.open("ab"),
                            start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: its data workers too
    except ProcessLookupError:
        pass
    proc.wait()


def run_cases(cases: list[dict], folder: Path, *, case_timeout: float = 10.0, start_timeout: float = 120.0,
              memory_mb: int = 3072, max_failures: int | None = None) -> list[dict]:
    """Each case's raw outcome, in order; ``crash``/``hang`` ones carry the child's status. A child
    may map ``memory_mb`` more than it has after importing torch and h5py. After ``max_failures``
    crashes and hangs the rest is not run (``not_run``): a broken reader fails fast, not in hours."""
    cases_file = folder / "cases.json"
    cases_file.write_text(json.dumps(cases))
    log = folder / "child.log"
    results: list[dict | None] = [None] * len(cases)
    start = 0
    while start < len(cases):
        proc = _child(cases_file, start, memory_mb, folder, log)
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        current, buf = None, b""
        deadline = time.monotonic() + start_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(timeout=left):
                if time.monotonic() < deadline:
                    continue
                _kill(proc)
                if current is None:
                    raise RuntimeError(f"the fuzz child did not start within {start_timeout}s; see {log}")
                results[current] = {"i": current, "hang": True, "seconds": case_timeout}
                break
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:  # the child ended
                code = proc.wait()
                if current is not None:
                    results[current] = {"i": current, "crash": True, "status": code}
                elif code != 0 or None in results[start:]:
                    raise RuntimeError(f"the fuzz child failed outside any case (status {code}); see {log}")
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                if not text.startswith(MARK):
                    continue
                rec = json.loads(text[len(MARK):])
                if rec.get("start"):
                    current = rec["i"]
                elif "i" in rec:
                    results[rec["i"]], current = rec, None
                deadline = time.monotonic() + case_timeout
        sel.close()
        proc.stdout.close()
        done = [k for k, r in enumerate(results) if r is not None]
        start = (max(done) + 1) if done else len(cases)
        failures = sum(1 for r in results if r is not None and (r.get("crash") or r.get("hang")))
        if max_failures is not None and failures >= max_failures:
            return [r if r is not None else {"i": k, "not_run": True} for k, r in enumerate(results)]
    return [r if r is not None else {"i": k, "crash": True, "status": None} for k, r in enumerate(results)]


def judge(case: dict, result: dict) -> str:
    """One of OUTCOMES. A rejection must be a neocaffe error (its class defined in neocaffe) whose
    message names the file the user gave or the file that was damaged."""
    if result.get("not_run"):
        return "not_run"
    if result.get("hang"):
        return "hang"
    if result.get("crash"):
        return "crash"
    if result.get("ok"):
        return "accepted"
    if not result["module"].split(".")[0] == "neocaffe":
        return "foreign"
    names = {case["path"], case["mutated"]}
    return "rejected" if any(n in result["msg"] for n in names) else "unnamed"


def summarize(cases: list[dict], results: list[dict], max_findings: int = 200) -> dict:
    """Counts per kind and in total, and the findings (every outcome but accepted/rejected)."""
    per_kind: dict[str, dict[str, int]] = {}
    findings = []
    for case, res in zip(cases, results):
        verdict = judge(case, res)
        counts = per_kind.setdefault(case["kind"], dict.fromkeys(["inputs"] + OUTCOMES, 0))
        counts["inputs"] += 1
        counts[verdict] += 1
        if verdict not in ("accepted", "rejected") and len(findings) < max_findings:
            findings.append({"verdict": verdict, "kind": case["kind"], "seed": case["seed"], "op": case["op"],
                             "file": os.path.basename(case["mutated"]),
                             **{k: res[k] for k in ("type", "module", "msg", "status") if k in res}})
    total = dict.fromkeys(["inputs"] + OUTCOMES, 0)
    for counts in per_kind.values():
        for k, v in counts.items():
            total[k] += v
    return {"per_kind": per_kind, "total": total, "findings": findings}
