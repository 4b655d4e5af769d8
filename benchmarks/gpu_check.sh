#!/usr/bin/env bash
# Issue 19's GPU check: the CUDA tests and the GPU speed figures in one time-boxed run (~8 min on an H200).
#
#   bash benchmarks/gpu_check.sh [--dry-run] [STEP ...]
#
# STEPs (default: all, in this order; `compile` only when the time left allows it):
#   pytest   pytest -m gpu over every test file that has a gpu mark (real-Caffe goldens on CUDA, fused
#            kernels, data-parallel on one GPU)                       -> pytest_gpu.txt, pytest_gpu.xml
#   train    run_all.py --sections train, batch 256: fp32, tf32, bf16, bf16+channels_last+cudnn_benchmark
#            and that +fused, against the plain-PyTorch AlexNet       -> suite_parts.json
#   suite    run_all.py --sections e2e,force,deploy,lrn (LMDB end to end, force regularization, deploy)
#   zoo      zoo_parity.py: every zoo model on CUDA (fp32) against the CPU       -> zoo_parity.json
#   compile  run_all.py train modes compile, compile+cuda_graphs
# `setup` (wheels, the shared copy, versions) runs first and `combine` (gpu_combine.py -> suite_cuda.json
# and a table of the targets) last, every time. Everything goes under $OUT as it happens (gpu_check.log,
# steps.tsv, ...; a temporary folder when $OUT is unset). Each step runs under `timeout`; the whole run
# keeps within GPU_CHECK_BUDGET seconds (default 480).
#
# Without CUDA, or with --dry-run, the CUDA steps are skipped and say so, and their CPU plumbing runs
# instead on tiny settings: pytest -m gpu (collects; every test skips), run_all --quick on the CPU for
# one iteration, zoo_parity --device cpu on two small models, combine. The exit status is 0 when every
# step ran to its end with status 0.
#
# Before a device call: bash benchmarks/gpu_prepare.sh (wheels into .whl/, ../shared's fixtures and zoo
# into .gpu_carry/shared/); the call carries [".whl", ".gpu_carry"]: see benchmarks/README.md.
#
# Settings (environment): GPU_CHECK_BUDGET (480), GPU_CHECK_BOX_<STEP> (seconds per step: PYTEST 120,
# TRAIN 110, SUITE 120, ZOO 90, COMPILE 180; the first four and setup fit the budget), GPU_CHECK_ITERS (10), GPU_CHECK_REPEATS (3),
# GPU_CHECK_WARMUP (3), GPU_CHECK_TRAIN_MODES, GPU_CHECK_ZOO_MODELS (dry run: mtcnn_det1,mtcnn_det2),
# GPU_CHECK_PYTEST_WORKERS (4), PYTHON (python3). A --dry-run has boxes x4 and a budget of 1800 s.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
ALL_STEPS=(pytest train suite zoo compile)

DRY=0
STEPS=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    pytest|train|suite|zoo|compile) STEPS+=("$arg") ;;
    *) echo "gpu_check: unknown argument '$arg' (steps: ${ALL_STEPS[*]}; --dry-run)" >&2; exit 2 ;;
  esac
done
DEFAULT=0
if [[ ${#STEPS[@]} -eq 0 ]]; then STEPS=("${ALL_STEPS[@]}"); DEFAULT=1; fi

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
TSV=$OUT/steps.tsv
: >"$TSV"
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-480}
SCALE=1
RESERVE=15  # kept for combine
ITERS=${GPU_CHECK_ITERS:-10}
REPEATS=${GPU_CHECK_REPEATS:-3}
WARMUP=${GPU_CHECK_WARMUP:-3}
TRAIN_MODES=${GPU_CHECK_TRAIN_MODES:-fp32,tf32,bf16,bf16+channels_last+cudnn_benchmark,bf16+channels_last+cudnn_benchmark+fused}
SUITE_MODES=fp32,tf32,bf16,bf16+channels_last,bf16+channels_last+cudnn_benchmark,bf16+channels_last+cudnn_benchmark+fused
FAILED=0

say() { echo "[gpu_check $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$TSV"; }
left() { echo $((BUDGET - ($(date +%s) - START) - RESERVE)); }

# run_step NAME BOX CMD...: CMD under `timeout` (at most the budget left), its output to the log as it goes
run_step() {
  local name=$1 box=$2; shift 2
  local lft; lft=$(left)
  if ((lft < box)); then box=$lft; fi
  if ((box < 20)); then
    say "step $name: skipped, out of time (${lft}s left of GPU_CHECK_BUDGET=${BUDGET})"
    record "$name" "skipped: out of time" 0 "$box"
    return 0
  fi
  say "step $name: start (time box ${box}s): $*"
  local t0=$SECONDS rc
  timeout -k 10 "$box" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  local dt=$((SECONDS - t0)) status
  case $rc in
    0) status=ok ;;
    124|137) status="timed out after ${box}s"; FAILED=1 ;;
    *) status="failed (exit $rc)"; FAILED=1 ;;
  esac
  say "step $name: $status in ${dt}s"
  record "$name" "$status" "$dt" "$box" "$NOTE"
}

# -- setup: packages, the shared copy, versions ------------------------------------------------------
export PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO:$REPO/pycaffe_compat${PYTHONPATH:+:$PYTHONPATH}"  # no pip install of the repo needed
NOTE=""
setup_t0=$SECONDS
say "output folder: $OUT; steps: ${STEPS[*]}"
CUDA=0
if [[ $DRY -eq 0 ]] && "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  CUDA=1
fi
if [[ $CUDA -eq 0 ]]; then
  SCALE=4  # a dry run's time boxes x4 and budget 1800 s: a small shared CPU is slow, and its timings mean nothing
  BUDGET=${GPU_CHECK_BUDGET:-1800}
  why=$([[ $DRY -eq 1 ]] && echo "--dry-run" || echo "CUDA is not available")
  say "DRY RUN ($why): the CUDA steps are skipped; their CPU plumbing runs on tiny settings instead"
fi

# wheels (.whl, carried): each only where the image's own package is missing or too old
need=()
if ! "$PY" -c 'import lmdb' 2>/dev/null; then need+=(lmdb); fi
if ! "$PY" -c 'import sys
from google.protobuf import __version__ as v
sys.exit(0 if tuple(int(x) for x in v.split(".")[:3]) >= (6, 31, 1) else 1)' 2>/dev/null; then need+=(protobuf); fi
if [[ ${#need[@]} -gt 0 ]]; then
  wheels=()
  for n in "${need[@]}"; do
    w=$(ls "$REPO"/.whl/"$n"-*.whl 2>/dev/null | head -1)
    if [[ -n $w ]]; then wheels+=("$w"); else say "setup: $n is missing here and no .whl/$n-*.whl was carried (bash benchmarks/gpu_prepare.sh)"; fi
  done
  if [[ ${#wheels[@]} -gt 0 && $CUDA -eq 1 ]]; then
    site=/tmp/neocaffe_site
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}" 2>&1 | tee -a "$LOG"; then
      export PYTHONPATH="$site:$PYTHONPATH"
      say "setup: installed ${wheels[*]##*/} into $site"
    else
      say "setup: pip install of ${wheels[*]##*/} FAILED"
    fi
  elif [[ ${#wheels[@]} -gt 0 ]]; then
    say "setup: dry run: would install ${wheels[*]##*/} (cp312 wheels; not installed off the GPU machine)"
  fi
else
  say "setup: lmdb and protobuf >= 6.31.1 are already installed"
fi

# ../shared: the carried copy, else the folder beside the repository
if [[ -d "$REPO/.gpu_carry/shared" ]]; then
  export NEOCAFFE_SHARED="$REPO/.gpu_carry/shared"
  if [[ ! -e "$REPO/../shared" ]]; then  # for code that reads ../shared itself
    ln -s "$NEOCAFFE_SHARED" "$REPO/../shared" 2>/dev/null && say "setup: linked ../shared -> $NEOCAFFE_SHARED"
  fi
elif [[ -d "$REPO/../shared" ]]; then
  export NEOCAFFE_SHARED; NEOCAFFE_SHARED=$(cd "$REPO/../shared" && pwd)
else
  say "setup: no .gpu_carry/shared and no ../shared: the tests that read them will skip"
fi
say "setup: NEOCAFFE_SHARED=${NEOCAFFE_SHARED:-}"

if [[ $CUDA -eq 1 ]]; then nvidia-smi -L 2>&1 | tee -a "$LOG"; fi
TRAIN_MODES=$TRAIN_MODES SUITE_MODES=$SUITE_MODES "$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, platform
import torch
print(f"python {platform.python_version()} torch {torch.__version__} cuda {torch.version.cuda} "
      f"device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}")
for name in ("google.protobuf", "lmdb", "triton", "cv2", "h5py", "numpy", "pytest", "xdist", "pytest_timeout", "torchvision"):
    try:
        m = importlib.import_module(name)
        print(f"  {name} {getattr(m, '__version__', getattr(m, 'version', '?'))} {getattr(m, '__file__', '')}")
    except Exception as e:  # noqa: BLE001
        print(f"  {name}: not importable ({type(e).__name__}: {e})")
import neocaffe, caffe  # noqa: E401,F401  the repository itself, from PYTHONPATH
print(f"  neocaffe from {neocaffe.__file__}")
import os, sys
sys.path.insert(0, "benchmarks")
import run_all  # the CUDA steps' modes and sections are known names (an unknown one exits here, in a dry run too)
for modes, sections in ((os.environ["TRAIN_MODES"], "train"), (os.environ["SUITE_MODES"], "e2e,force,deploy,lrn"),
                        ("compile,compile+cuda_graphs", "train")):
    run_all.parse(["--modes", modes, "--sections", sections, "--frameworks", "torch_nn"])
EOF
setup_rc=${PIPESTATUS[0]}
NOTE=$([[ $CUDA -eq 1 ]] && echo cuda || echo "dry run")
if [[ $setup_rc -ne 0 ]]; then FAILED=1; fi
record setup "$([[ $setup_rc -eq 0 ]] && echo ok || echo "failed (exit $setup_rc)")" $((SECONDS - setup_t0)) 0 "$NOTE"

# -- the steps ---------------------------------------------------------------------------------------
box() { local v="GPU_CHECK_BOX_${1^^}"; echo "${!v:-$(($2 * SCALE))}"; }
if [[ $CUDA -eq 1 ]]; then
  RUN_ALL=("$PY" benchmarks/run_all.py --device cuda --merge --out "$OUT/suite_parts.json" --frameworks torch_nn
           --iters "$ITERS" --repeats "$REPEATS" --warmup "$WARMUP")
else
  RUN_ALL=("$PY" benchmarks/run_all.py --device cpu --quick --merge --out "$OUT/suite_parts.json" --frameworks torch_nn)
fi

for step in "${STEPS[@]}"; do
  case $step in
    pytest)
      mapfile -t files < <(grep -rl --include='test_*.py' -e 'pytest.mark.gpu' tests | sort)
      # -v: a line per test as it ends, so a run stopped by its time box still says what passed and failed
      # (gpu_combine reads pytest_gpu.txt when the junit XML, written at the end, is missing)
      args=(-m gpu -v -p no:cacheprovider -rfEs --junitxml="$OUT/pytest_gpu.xml")
      if [[ $CUDA -eq 1 ]]; then
        "$PY" -c 'import xdist' 2>/dev/null && args+=(-n "${GPU_CHECK_PYTEST_WORKERS:-4}")
        "$PY" -c 'import pytest_timeout' 2>/dev/null && args+=(--timeout 60)
      else
        NOTE="dry run: CUDA tests collected, every one skips without CUDA"
      fi
      export OUT_TXT="$OUT/pytest_gpu.txt"
      run_step pytest "$(box pytest 120)" bash -c '"$0" -m pytest "$@" 2>&1 | tee "$OUT_TXT"; exit ${PIPESTATUS[0]}' \
        "$PY" "${args[@]}" "${files[@]}"
      ;;
    train)
      if [[ $CUDA -eq 1 ]]; then
        NOTE="batch 256, modes $TRAIN_MODES"
        run_step train "$(box train 110)" "${RUN_ALL[@]}" --sections train --modes "$TRAIN_MODES"
      else
        NOTE="dry run: CPU --quick, fp32 only (CUDA modes skipped)"
        run_step train "$(box train 110)" "${RUN_ALL[@]}" --sections train --modes fp32
      fi
      ;;
    suite)
      if [[ $CUDA -eq 1 ]]; then
        NOTE="e2e, force, deploy, lrn"
        run_step suite "$(box suite 120)" "${RUN_ALL[@]}" --sections e2e,force,deploy,lrn --modes "$SUITE_MODES" \
          --lmdb-images 2048
      else
        NOTE="dry run: CPU --quick, fp32, one data worker; lrn skips without CUDA"
        run_step suite "$(box suite 120)" "${RUN_ALL[@]}" --sections e2e,force,deploy,lrn --modes fp32 \
          --data-workers 1
      fi
      ;;
    zoo)
      if [[ $CUDA -eq 1 ]]; then
        NOTE="every zoo model, CUDA fp32 against the CPU"
        run_step zoo "$(box zoo 90)" "$PY" benchmarks/zoo_parity.py --device cuda --out "$OUT/zoo_parity.json" \
          ${GPU_CHECK_ZOO_MODELS:+--models "$GPU_CHECK_ZOO_MODELS"}
      else
        NOTE="dry run: --device cpu (CPU against CPU), small models only"
        run_step zoo "$(box zoo 90)" "$PY" benchmarks/zoo_parity.py --device cpu --out "$OUT/zoo_parity.json" \
          --models "${GPU_CHECK_ZOO_MODELS:-mtcnn_det1,mtcnn_det2}"
      fi
      ;;
    compile)
      if [[ $CUDA -eq 0 ]]; then
        say "step compile: skipped: needs CUDA (inductor on a small CPU takes minutes)"
        record compile "skipped: needs CUDA" 0 0
      elif [[ $DEFAULT -eq 1 && $(left) -lt 90 ]]; then
        say "step compile: skipped, $(left)s left: run it alone (bash benchmarks/gpu_check.sh compile)"
        record compile "skipped: out of time" 0 0
      else
        NOTE="compile modes, only if time remained"
        run_step compile "$(box compile 180)" "${RUN_ALL[@]}" --sections train --modes compile,compile+cuda_graphs
      fi
      ;;
  esac
  NOTE=""
done

# -- combine -------------------------------------------------------------------------------------------
say "combine"
"$PY" benchmarks/gpu_combine.py $([[ $CUDA -eq 0 ]] && echo --dry-run) "$OUT" 2>&1 | tee -a "$LOG"
if [[ ${PIPESTATUS[0]} -ne 0 ]]; then FAILED=1; fi
say "done in $(($(date +%s) - START))s; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exit $FAILED
