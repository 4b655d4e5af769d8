# Shared by train_script.sh and train_script_force.sh (sourced, not run): their argument parsing
# (parse_args, check_device_id, usage) and train_and_report, which runs `caffe train` for a generated
# solver in a run folder, then writes loss.info, accu.png and sends the completion notice. Settings for the notice come from the environment (NEOCAFFE_MAIL_TO,
# NEOCAFFE_SMTP_*) or --mail-to ADDR given before the positional arguments.

# usage: the running script's header comment from its third line (the usage and notes, up to the
# first line that is not a comment) on stderr, then exit status 2
usage() { awk 'NR < 3 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0" >&2; exit 2; }

# parse_args "$@": [--mail-to ADDR] then 5 or 6 positional arguments. Sets script_cmdline, MAIL_TO
# (default $NEOCAFFE_MAIL_TO) and ARGS (the positional arguments); a wrong count prints the usage.
parse_args() {
  script_cmdline="$0 $*"
  MAIL_TO="${NEOCAFFE_MAIL_TO:-}"
  if [ "${1:-}" = "--mail-to" ]; then [ $# -ge 2 ] || usage; MAIL_TO="$2"; shift 2; fi
  if [ "$#" -lt 5 ] || [ "$#" -gt 6 ]; then echo "Illegal number of parameters" >&2; usage; fi
  ARGS=("$@")
}

# check_device_id ID: an integer, -1 for the CPU; otherwise the usage
check_device_id() {
  [[ "$1" =~ ^-?[0-9]+$ ]] || { echo "device_id must be an integer (-1 for CPU); received '$1'" >&2; usage; }
}

PY="${PYTHON:-python3}"
caffe_cmd() { if command -v caffe >/dev/null 2>&1; then caffe "$@"; else "$PY" -m neocaffe.cli.caffe "$@"; fi; }

run_stamp() { local t; t=$(date); t=${t// /_}; echo "${t//:/-}"; }

# train_and_report RUN_DIR SOLVER [WEIGHTS_OR_STATE] ; uses $script_cmdline and $MAIL_TO
train_and_report() {
  local run_dir="$1" solver="$2" init="${3:-}" rc=0 start end
  local args=(train "--solver=$solver")
  if [ -n "$init" ]; then
    if [ ! -e "$init" ]; then echo "error: $init: no such weights or solver-state file" >&2; return 2; fi
    if [[ "$init" == *caffemodel* ]]; then args+=("--weights=$init"); else args+=("--snapshot=$init"); fi
  fi
  start=$(date +%s)
  caffe_cmd "${args[@]}" > "$run_dir/train.info" 2>&1 || rc=$?
  end=$(date +%s)
  # the fork's loss.info: "<regularization> <loss+regularization>" per displayed iteration
  grep 'loss+' "$run_dir/train.info" | awk '{print $8 " " $11}' > "$run_dir/loss.info" || true
  "$PY" -m neocaffe.tools.plot_train_info --traininfo "$run_dir/train.info" || echo "warning: plotting failed" >&2
  local mail_args=(--run-dir "$run_dir" --status "$rc" --duration "$((end - start))" --command "$script_cmdline")
  if [ -n "${MAIL_TO:-}" ]; then mail_args+=(--to "$MAIL_TO"); fi
  "$PY" -m neocaffe.notify "${mail_args[@]}" || true
  echo "run folder: $run_dir (caffe train exit status $rc)"
  return "$rc"
}
