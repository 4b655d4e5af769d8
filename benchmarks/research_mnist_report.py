"""The report of benchmarks/research_mnist.py: JSON (every figure), Markdown (method, table against the
targets, every configuration tried) and a PNG plot (accuracy against convolution work, forward speedups)."""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
from pathlib import Path
from typing import Any, Sequence

TARGET_MACS = 2.0     # at least 2x fewer convolution multiply-accumulates
TARGET_SPEED = 1.5    # at least 1.5x faster forward (batch 1 and batch 64)
TARGET_ACC = 0.2      # at most 0.2 points below the baseline


def _layer_text(s: dict, name: str) -> str:
    e = s["layers"].get(name)
    if e is None:
        return "-"
    if "rank" in e:
        return f"{e['filters']} (rank {e['rank']}) x {e['channels']} ch"
    return f"{e['filters']} x {e['channels']} ch"


def rows(results: dict) -> list[dict]:
    """One row per baseline and per configuration (failed ones included), with its ratios and verdicts."""
    entries, out = results["entries"], []
    for key, e in entries.items():
        if e["kind"] == "baseline":
            out.append({"name": f"baseline (seed {e['seed']})", "entry": e, "base": e})
    for i, rec in enumerate(results["records"]):
        e = entries.get(f"arm{i}")
        base = entries[f"baseline/{rec['seed']}"]
        out.append({"name": f"{rec['config']['arm']}: {rec['config']['name']} (seed {rec['seed']})", "entry": e,
                    "base": base, "record": rec})
    for r in out:
        e, b = r["entry"], r["base"]
        if e is None:
            continue
        r["macs_x"] = b["structure"]["conv_macs"] / e["structure"]["conv_macs"]
        r["speed_b1"] = b["forward_b1"]["median_ms"] / e["forward_b1"]["median_ms"]
        r["speed_b64"] = b["forward_b64"]["median_ms"] / e["forward_b64"]["median_ms"]
        r["speed_b1_min"] = b["forward_b1"]["min_ms"] / e["forward_b1"]["min_ms"]
        r["speed_b64_min"] = b["forward_b64"]["min_ms"] / e["forward_b64"]["min_ms"]
        if "forward_b1_no_onednn" in e and "forward_b1_no_onednn" in b:
            r["speed_b1_no_onednn"] = b["forward_b1_no_onednn"]["median_ms"] / e["forward_b1_no_onednn"]["median_ms"]
        r["delta_pts"] = 100 * (e["accuracy"] - b["accuracy"])
        r["met"] = {"macs": r["macs_x"] >= TARGET_MACS, "speed": min(r["speed_b1"], r["speed_b64"]) >= TARGET_SPEED,
                    "accuracy": r["delta_pts"] >= -TARGET_ACC - 1e-9}
    return out


def noise(results: dict) -> dict:
    """Run-to-run noise: binomial standard error of the baseline accuracy on the test set, the spread of the
    baseline's last test evaluations, and the spread across seeds when there are several."""
    base = [e for e in results["entries"].values() if e["kind"] == "baseline"]
    n = results["n_test"]
    p = statistics.mean(e["accuracy"] for e in base)
    out = {"binomial_se_pts": 100 * math.sqrt(p * (1 - p) / n), "n_test": n}
    for seed, b in results["baselines"].items():
        tail = [v for _, v in b["accuracy"][-5:]]
        out[f"last_tests_seed{seed}"] = {"values": tail, "range_pts": 100 * (max(tail) - min(tail))}
    groups: dict[str, list[dict]] = {}  # nets of one architecture (same layers and shapes) time alike
    for e in results["entries"].values():
        groups.setdefault(json.dumps(e["structure"]["layers"], sort_keys=True), []).append(e)
    same = [g for g in groups.values() if len(g) > 1]
    if same:
        out["timing_spread_same_architecture"] = {
            f"b{b}": max(max(e[f"forward_b{b}"]["median_ms"] for e in g) / min(e[f"forward_b{b}"]["median_ms"] for e in g)
                         for g in same) for b in (1, 64)}
        out["timing_same_architecture_groups"] = [len(g) for g in same]
        out["timing_spread_same_architecture_min"] = {
            f"b{b}": max(max(e[f"forward_b{b}"]["min_ms"] for e in g) / min(e[f"forward_b{b}"]["min_ms"] for e in g)
                         for g in same) for b in (1, 64)}
    if len(base) > 1:
        out["seed_std_pts"] = 100 * statistics.stdev(e["accuracy"] for e in base)
        out["seed_accuracies"] = {e["seed"]: e["accuracy"] for e in base}
        # the baselines are one architecture: their forward times' ratio is the timing's own noise
        out["timing_ratio_between_baselines"] = {
            f"b{b}": max(e[f"forward_b{b}"]["median_ms"] for e in base) / min(e[f"forward_b{b}"]["median_ms"] for e in base)
            for b in (1, 64)}
    return out


def _fmt_row(r: dict) -> str:
    e, rec = r["entry"], r.get("record", {})
    if e is None:
        return f"| {r['name']} | failed: {rec.get('error', '?')[-200:].replace('|', '/')} |" + " |" * 9
    s = e["structure"]
    acc = f"{100 * e['accuracy']:.2f}%"
    comp = f"{100 * rec['accuracy_compressed']:.2f}%" if "accuracy_compressed" in rec else "-"
    met = r.get("met")
    verdict = "(reference)" if "record" not in r else ", ".join(
        f"{k} {'met' if v else 'NOT met'}" for k, v in met.items())
    return (f"| {r['name']} | {_layer_text(s, 'conv1')} | {_layer_text(s, 'conv2')} | {s['layers']['ip1']['inputs']} | "
            f"{s['conv_macs'] / 1e3:.0f}k ({r['macs_x']:.2f}x) | {acc} ({r['delta_pts']:+.2f}) | {comp} | "
            f"{e['forward_b1']['median_ms']:.3f} ({r['speed_b1']:.2f}x) | "
            f"{e['forward_b64']['median_ms']:.2f} ({r['speed_b64']:.2f}x) | {verdict} |")


def plot(table: list[dict], path: Path, n_test: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in table:
        e = r["entry"]
        if e is None:
            continue
        kind = e["kind"]
        mark = {"baseline": "ks", "force": "o", "ssl": "^"}[kind]
        ax1.plot(e["structure"]["conv_macs"] / 1e3, 100 * e["accuracy"], mark, label=r["name"][:48])
        ax2.plot(r["speed_b1"], r["speed_b64"], mark)
    base = [r for r in table if r["entry"] is not None and r["entry"]["kind"] == "baseline"][0]["entry"]
    ax1.axhline(100 * base["accuracy"] - TARGET_ACC, ls="--", c="gray", lw=0.8)
    ax1.axvline(base["structure"]["conv_macs"] / 1e3 / TARGET_MACS, ls="--", c="gray", lw=0.8)
    ax1.set_xlabel("convolution multiply-accumulates per image (thousands)")
    ax1.set_ylabel(f"test accuracy, {n_test:,} images (%)")
    ax1.legend(fontsize=6, loc="lower right")
    ax2.axvline(TARGET_SPEED, ls="--", c="gray", lw=0.8)
    ax2.axhline(TARGET_SPEED, ls="--", c="gray", lw=0.8)
    ax2.set_xlabel("forward speedup, batch 1 (x)")
    ax2.set_ylabel("forward speedup, batch 64 (x)")
    ax1.set_title("accuracy vs convolution work (dashed: targets)")
    ax2.set_title("measured CPU forward speedup vs baseline")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict, out_json: Path, out_doc: Path, a: argparse.Namespace,
                 argv: Sequence[str] = ()) -> None:
    import torch

    results["n_test"] = 100 * a.test_iter
    table = rows(results)
    results["noise"] = noise(results)
    results["settings"] = {k: v for k, v in vars(a).items()}
    from benchmarks.machine import cpu_name

    results["machine"] = {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "python": platform.python_version(),
                          "torch": torch.__version__, "threads": a.threads}
    results["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results["summary"] = [{"name": r["name"], **{k: r.get(k) for k in ("macs_x", "speed_b1", "speed_b64", "speed_b1_min",
                                                                       "speed_b64_min", "speed_b1_no_onednn",
                                                                       "delta_pts", "met")}}
                          for r in table]
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, indent=1, default=str))
    png = out_doc.with_suffix(".png")
    if any(r["entry"] is not None for r in table):
        plot(table, png, results["n_test"])
    nz = results["noise"]
    lines = [
        "# The fork's research recipes on real MNIST: SSL + prune and force + lowrank, each fine-tuned",
        "",
        f"Generated by `python benchmarks/research_mnist.py {' '.join(results.setdefault('argv', list(argv)))}`".rstrip() + f" on {results['date']} "
        f"({results['machine']['cpu']}, {results['machine']['logical_cpus']} logical CPUs shared with other jobs, "
        f"torch {results['machine']['torch']}, {a.threads} thread(s); this run {results['total_seconds']:.0f} s, "
        f"its stages cached in `--work`). Raw numbers: `{out_json.name}` in benchmarks/results; plot: `{png.name}`.",
        "",
        "## What ran",
        "",
        f"- Data: MNIST's IDX files (../shared/realdata/mnist_idx_pypi) through our `convert_mnist_data` into LMDBs; "
        f"test accuracy over {results['n_test']:,} test images.",
        f"- Baseline: BVLC's `examples/mnist/lenet_train_test.prototxt` and `lenet_solver.prototxt` unchanged but for "
        f"the LMDB paths, `solver_mode: CPU`, `random_seed` (seeds {a.seeds}) and `max_iter: {a.base_iters}` "
        f"(Caffe's recipe is 10,000), trained by our `caffe train`; "
        + "; ".join(f"seed {sd}: {b['seconds']:.0f} s ({1e3 * b['seconds'] / b['iters']:.0f} ms per iteration with its "
                    f"tests, on 2 cores shared with other jobs)" for sd, b in results["baselines"].items()) + ".",
        f"- Each arm starts from the baseline weights: {a.reg_iters} iterations of the same solver with the "
        f"regularizer (on conv1 and conv2), then compression, then {a.ft_iters} iterations of fine-tuning of the "
        f"smaller net with the plain solver (`caffe train --weights`) at `base_lr: {a.ft_lr:g}` (the `inv` policy "
        "from iteration 0); rows named \"fine-tune 4000\" fine-tuned 4000 iterations, rows named \"fine-tune lr 0.01 "
        "x 1000\" (the first recipe tried) the solver's own `base_lr: 0.01` for 1000 iterations.",
        "  - force + lowrank: `force_type`/`force_decay` in the solver and `force_mult: 1` on conv1/conv2 weights; "
        "then `lowrank --rank_config` (the given ranks, or each conv layer's rank at 95% PCA energy where that "
        "lowers its multiply-accumulates); the control decomposes the unregularized baseline.",
        "  - SSL + prune: `breadth_decay` and `kernel_shape_decay` in the solver, `breadth_decay_mult`/"
        "`kernel_shape_decay_mult: 1` on conv1/conv2; then `prune` at the threshold named in the row.",
        "- Convolution work: multiply-accumulates per image of every Convolution layer (the low-rank pair counted "
        "both). Forward: pycaffe `net.forward()` of the deploy net (Input to Softmax) at batch 1 and 64, "
        f"{a.threads} torch thread(s), every net timed in the same {a.timing_rounds} interleaved rounds (each round "
        "runs every net in turn, so the shared machine's load falls on all alike), median milliseconds per forward; "
        "load averages (1, 5, 15 min) " + ", ".join(f"{k.replace('_', ' ')}: {v[0]:.2f} {v[1]:.2f} {v[2]:.2f}"
                                                 for k, v in results["load_average"].items()) + ".",
        f"- Targets (issue 17): conv work >= {TARGET_MACS:g}x fewer, forward >= {TARGET_SPEED:g}x faster (both "
        f"batch sizes), accuracy at most {TARGET_ACC:g} points below the same seed's baseline.",
        "",
        "## Result",
        "",
        "| configuration | conv1 filters x channels | conv2 filters x channels | ip1 inputs | conv MACs/image "
        "(fewer) | test accuracy (points vs baseline) | after compression, before fine-tuning | forward batch 1 "
        "ms (speedup) | forward batch 64 ms (speedup) | targets |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_fmt_row(r) for r in table]
    lines += ["", "Noise: the binomial standard error of an accuracy near the baseline's on "
              f"{nz['n_test']:,} images is {nz['binomial_se_pts']:.2f} points"]
    for k, v in nz.items():
        if k.startswith("last_tests"):
            lines[-1] += (f"; the baseline's last {len(v['values'])} test evaluations (seed {k[15:]}) span "
                          f"{v['range_pts']:.2f} points")
    if "seed_std_pts" in nz:
        lines[-1] += f"; across seeds the baseline's accuracy has a standard deviation of {nz['seed_std_pts']:.2f} points"
    lines[-1] += ". A difference of 0.2 points is at the edge of this noise."
    if "timing_spread_same_architecture" in nz:
        tr = nz["timing_spread_same_architecture"]
        lines[-1] += (f" Timing noise: nets of one architecture (groups of {nz['timing_same_architecture_groups']} "
                      f"nets: the seeds' baselines, the configurations ending at the same ranks or pruned shapes) "
                      f"should time alike; their median forward times differ by up to {tr['b1']:.2f}x at batch 1 "
                      f"and {tr['b64']:.2f}x at batch 64.")
    if "timing_spread_same_architecture_min" in nz:
        tm = nz["timing_spread_same_architecture_min"]
        lines += ["", "The speedups use medians; the JSON also holds each net's fastest round (`min_ms`), which on this "
                  f"shared machine scatters more (nets of one architecture differ by up to {tm['b1']:.2f}x at batch 1 "
                  f"and {tm['b64']:.2f}x at batch 64 in it)."]
    extra = [r for r in table if r.get("speed_b1_no_onednn") is not None]
    if extra:
        b0 = [r for r in extra if "record" not in r][0]["entry"]
        lines += ["", "### Batch 1 with oneDNN off", "",
                  "Is oneDNN's (mkldnn's) per-call cost what keeps the batch-1 speedups small? The same nets timed again "
                  "at batch 1, interleaved the same way, with `torch.backends.mkldnn.flags(enabled=False)` (PyTorch's "
                  "own convolution kernels; not neocaffe's default, not part of the verdict): the baseline takes "
                  f"{b0['forward_b1_no_onednn']['median_ms']:.3f} ms there against {b0['forward_b1']['median_ms']:.3f} "
                  "ms by default.", "",
                  "| configuration | conv MACs (fewer) | batch 1, oneDNN off, ms (speedup) | default batch 1 speedup |",
                  "|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['macs_x']:.2f}x | {r['entry']['forward_b1_no_onednn']['median_ms']:.3f} "
                  f"({r['speed_b1_no_onednn']:.2f}x) | {r['speed_b1']:.2f}x |" for r in extra]
    lines += ["", "## Verdict against the targets", ""]
    for r in table:
        if "record" in r:
            if r["entry"] is None:
                lines.append(f"- {r['name']}: did not run to the end ({r['record'].get('error', '?')[-400:]}).")
            else:
                m = r["met"]
                allm = all(m.values())
                lines.append(f"- {r['name']}: {'all targets met' if allm else 'targets not all met'} "
                             f"(conv work {r['macs_x']:.2f}x fewer, forward {r['speed_b1']:.2f}x at batch 1 and "
                             f"{r['speed_b64']:.2f}x at batch 64, accuracy {r['delta_pts']:+.2f} points).")
    lines += ["", "## Per arm", ""]
    for arm in ("force", "ssl"):
        seen: dict[str, list[dict]] = {}
        for r in table:
            if "record" in r and r["record"]["config"]["arm"] == arm:
                seen.setdefault(r["record"]["config"]["name"], []).append(r)
        passing = [n for n, rs in seen.items() if all(r["entry"] is not None and all(r["met"].values()) for r in rs)]
        label = {"force": "force + lowrank + fine-tune", "ssl": "SSL + prune + fine-tune"}[arm]
        lines.append(f"- {label}: {len(seen)} configuration(s) tried; meeting every target on every seed run: "
                     + (", ".join(f"{n} (seeds {', '.join(str(r['record']['seed']) for r in seen[n])})"
                                  for n in passing) if passing else "none") + ".")
    out_doc.parent.mkdir(parents=True, exist_ok=True)
    out_doc.write_text("\n".join(lines) + "\n")
