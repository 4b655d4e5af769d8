"""The larger fuzz run of neocaffe's file readers (issue 13, item 7): valid seed files of every kind
(net and solver prototxts, .caffemodel[.h5], .binaryproto, .solverstate[.h5], LMDB, LevelDB,
HDF5Data lists), plus the real Caffe build's files in ../shared/fixtures when present, mutated
(truncation, bit flips, byte runs, extreme integers, chunk cuts and repeats; token edits of text
files; schema-aware edits of protobuf files: a field set to an extreme value, a repeated element
dropped, repeated or emptied) and each loaded as a training or testing run would load it, in child processes with a
per-case timeout and a memory limit (``tests/fuzz``). The bounded version runs in the test suite
(``tests/io/test_fuzz_inputs.py``).

Counts per kind: inputs, accepted (loaded), rejected (a neocaffe error naming the file), foreign (an
error of another library or of Python's), unnamed (a neocaffe error not naming the file), crash,
hang; and the findings (up to --max-findings, with the mutation that made each).

Run: ``python benchmarks/fuzz_inputs.py [--per-kind 300] [--seed 13] [--timeout 10] [--out PATH]``
→ benchmarks/results/fuzz_inputs.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fuzz.runner import OUTCOMES, make_cases, run_cases, seed_cases, summarize  # noqa: E402
from tests.fuzz.seeds import KINDS, fixture_seeds, make_seeds  # noqa: E402


def _merge(a: dict, b: dict) -> dict:
    return {k: a.get(k, []) + b.get(k, []) for k in KINDS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-kind", type=int, default=300, help="mutated inputs per file kind")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds a case may take before it is a hang")
    ap.add_argument("--memory-mb", type=int, default=3072, help="address-space limit of each child")
    ap.add_argument("--chunk", type=int, default=400, help="cases written to disk at a time")
    ap.add_argument("--shared", default=str(REPO.parent / "shared"), help="the folder holding fixtures/")
    ap.add_argument("--max-findings", type=int, default=300)
    ap.add_argument("--no-schema-edits", action="store_true", help="byte and token edits only")
    ap.add_argument("--data-workers", type=int, default=0,
                    help="NEOCAFFE_DATA_WORKERS for the children (0: data read in process; 1+: in worker processes)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fuzz_inputs.json"))
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    os.environ["NEOCAFFE_DATA_WORKERS"] = str(args.data_workers)
    work = Path(tempfile.mkdtemp(prefix="neocaffe_fuzz_"))
    started = time.time()
    try:
        seeds = make_seeds(work / "seeds")
        fixtures = Path(args.shared) / "fixtures"
        if fixtures.is_dir():
            seeds = _merge(seeds, fixture_seeds(fixtures, work / "fixture_seeds"))
        seeds = {k: seeds[k] for k in kinds}
        base = seed_cases(seeds, work / "seedcheck")
        base_res = run_cases(base, work / "seedcheck", case_timeout=args.timeout, memory_mb=args.memory_mb)
        bad_seeds = {c["path"]: r.get("msg", "crash or hang")[:300] for c, r in zip(base, base_res) if not r.get("ok")}
        unusable = {(c["kind"], c["seed"]) for c, r in zip(base, base_res) if not r.get("ok")}  # mutants prove nothing
        seeds = {k: [s for s in v if (k, s.name) not in unusable] for k, v in seeds.items()}
        all_cases, all_results = [], []
        step = max(1, args.chunk // len(kinds))
        for first in range(0, args.per_kind, step):
            n = min(step, args.per_kind - first)
            folder = work / f"chunk{first:06d}"
            cases = make_cases(seeds, folder, n, seed=args.seed * 1_000_003 + first, first=first * len(kinds),
                               schema_edits=not args.no_schema_edits)
            all_results += run_cases(cases, folder, case_timeout=args.timeout, memory_mb=args.memory_mb)
            all_cases += cases
            shutil.rmtree(folder)
            done = summarize(all_cases, all_results, 0)["total"]
            print(f"{done['inputs']} inputs: " + ", ".join(f"{k} {done[k]}" for k in OUTCOMES), flush=True)
        summary = summarize(all_cases, all_results, args.max_findings)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch

    report = {
        "what": "mutated inputs of every file kind loaded in child processes (tests/fuzz); outcome counts",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
        "settings": {"per_kind": args.per_kind, "seed": args.seed, "timeout_s": args.timeout,
                     "data_workers": args.data_workers, "schema_edits": not args.no_schema_edits,
                     "memory_mb": args.memory_mb, "kinds": kinds},
        "seeds": {k: [s.name for s in v] for k, v in seeds.items()},
        "seeds_not_loading (left out)": bad_seeds,
        "seconds": round(time.time() - started, 1),
        **summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(summary["total"]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
