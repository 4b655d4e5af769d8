#!/bin/sh
# Caffe's tools/extra/parse_log.sh, kept at its path: parse_log.sh /path/to/your.log writes <log name>.test
# ('#Iters Seconds TestAccuracy TestLoss') and <log name>.train ('#Iters Seconds TrainingLoss LearningRate')
# in the current folder, columns aligned by `column -t` as Caffe's are. The columns come from
# neocaffe/tools/parse_log_columns.py (this checkout's code; $PYTHON, else python3). A log without a
# "Solving" line is an error naming it (Caffe's script writes headers only, after a traceback).
if [ "$#" -lt 1 ]; then
  echo "Usage parse_log.sh /path/to/your.log"
  exit
fi
DIR=$(cd "$(dirname "$0")" && pwd -P)
LOG=$(basename "$1")
columns() {
  PYTHONPATH="$DIR/../..${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m neocaffe.tools.parse_log_columns "$1" "$2"
}
rows=$(columns test "$1") || exit 1
{ echo '#Iters Seconds TestAccuracy TestLoss'; [ -z "$rows" ] || printf '%s\n' "$rows" | column -t; } > "$LOG.test"
rows=$(columns train "$1") || exit 1
{ echo '#Iters Seconds TrainingLoss LearningRate'; [ -z "$rows" ] || printf '%s\n' "$rows" | column -t; } > "$LOG.train"
