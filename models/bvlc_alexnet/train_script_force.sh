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
script_cmdline="$0 $*"
usage() { sed -n '3,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
MAIL_TO="${NEOCAFFE_MAIL_TO:-}"
if [ "${1:-}" = "--mail-to" ]; then [ $# -ge 2 ] || usage; MAIL_TO="$2"; shift 2; fi
if [ "$#" -lt 5 ] || [ "$#" -gt 6 ]; then echo "Illegal number of parameters" >&2; usage; fi
base_lr=$1; force_decay=$2; force_type=$3; device_id=$4; template_solver=$5; init="${6:-}"
case "$force_type" in Degradation|Constant|Gravity|Linear) ;; *)
  echo "force_type must be Degradation, Constant, Gravity or Linear; received '$force_type'" >&2; usage;; esac
[[ "$device_id" =~ ^-?[0-9]+$ ]] || { echo "device_id must be an integer (-1 for CPU); received '$device_id'" >&2; usage; }
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
