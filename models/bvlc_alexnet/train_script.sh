#!/usr/bin/env bash
# Feature sparsity: fine-tune a net whose Sparsify layers get coefficient feature_decay.
# Usage: train_script.sh [--mail-to ADDR] base_lr feature_decay device_id template_solver.prototxt \
#        template_network.prototxt [weights.caffemodel|.caffemodel.h5 | state.solverstate|.solverstate.h5]
# device_id -1 trains on the CPU. The run folder <base_lr>_featuredecay_<coef>_<time> is made in
# $NEOCAFFE_RUNS_DIR (default: this folder) and holds net.prototxt, solver.prototxt, train.info,
# loss.info and accu.png.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/common.sh"
parse_args "$@"
set -- "${ARGS[@]}"
base_lr=$1; feature_decay=$2; device_id=$3; template_solver=$4; template_network=$5; init="${6:-}"
check_device_id "$device_id"
for f in "$template_solver" "$template_network"; do [ -f "$f" ] || { echo "error: $f: no such file" >&2; exit 2; }; done

run_dir="${NEOCAFFE_RUNS_DIR:-$here}/${base_lr}_featuredecay_${feature_decay}_$(run_stamp)"
mkdir -p "$run_dir"
"$PY" -m neocaffe.tools.set_layer_param --net_template "$template_network" --layer_type Sparsify \
  --param_name coef --param_value "$feature_decay" --output "$run_dir/net.prototxt"
solver="$run_dir/solver.prototxt"
cat "$template_solver" > "$solver"
{
  echo "net: \"$run_dir/net.prototxt\""
  echo "base_lr: $base_lr"
  echo "snapshot_prefix: \"$run_dir/alexnet\""
  if [ "$device_id" -ne -1 ]; then echo "device_id: $device_id"; echo "solver_mode: GPU"; else echo "solver_mode: CPU"; fi
} >> "$solver"
train_and_report "$run_dir" "$solver" "$init"
