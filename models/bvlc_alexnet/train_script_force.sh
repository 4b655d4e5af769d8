#!/usr/bin/env bash
# Force regularization: train the split net with force_decay of type force_type.
# Usage: train_script_force.sh [--mail-to ADDR] base_lr force_decay force_type device_id \
#        template_solver.prototxt [weights.caffemodel|.caffemodel.h5 | state.solverstate|.solverstate.h5]
# force_type: Degradation, Constant, Gravity or Linear; device_id -1 trains on the CPU. The run folder
# <base_lr>_forcedecay_<decay>_<type>_<time> is made in $NEOCAFFE_RUNS_DIR (default: this folder) and
# holds solver.prototxt, train.info, loss.info and accu.png.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/common.sh"
parse_args "$@"
set -- "${ARGS[@]}"
base_lr=$1; force_decay=$2; force_type=$3; device_id=$4; template_solver=$5; init="${6:-}"
case "$force_type" in Degradation|Constant|Gravity|Linear) ;; *)
  echo "force_type must be Degradation, Constant, Gravity or Linear; received '$force_type'" >&2; usage;; esac
check_device_id "$device_id"
[ -f "$template_solver" ] || { echo "error: $template_solver: no such file" >&2; exit 2; }

run_dir="${NEOCAFFE_RUNS_DIR:-$here}/${base_lr}_forcedecay_${force_decay}_${force_type}_$(run_stamp)"
mkdir -p "$run_dir"
solver="$run_dir/solver.prototxt"
cat "$template_solver" > "$solver"
{
  echo "base_lr: $base_lr"
  echo "force_decay: $force_decay"
  echo "force_type: \"$force_type\""
  echo "snapshot_prefix: \"$run_dir/alexnet\""
  if [ "$device_id" -ne -1 ]; then echo "device_id: $device_id"; echo "solver_mode: GPU"; else echo "solver_mode: CPU"; fi
} >> "$solver"
train_and_report "$run_dir" "$solver" "$init"
