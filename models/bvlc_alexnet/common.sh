# Shared by train_script.sh and train_script_force.sh (sourced, not run).
# Runs `caffe train` for a generated solver in a run folder, then writes loss.info, accu.png and
# sends the completion notice. Settings for the notice come from the environment (NEOCAFFE_MAIL_TO,
# NEOCAFFE_SMTP_*) or --mail-to ADDR given before the positional arguments.

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
