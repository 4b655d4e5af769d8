#!/usr/bin/env bash
# The main job: real handwritten digits -> convert_imageset -> LMDB -> `caffe train` LeNet on CPU.
# Usage: bash examples/digits/run.sh [RUN_DIR]   (default: examples/digits/run)
# Leaves in RUN_DIR: the LMDBs, train.log, snapshots/, and loss_accuracy.png.
set -euo pipefail
# LeNet at batch 64 is too small to gain from a second thread, and OpenMP threads that share busy cores
# spin (measured here: 2 threads 10x slower under load, 1 thread unaffected). Override to taste.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
here="$(cd "$(dirname "$0")" && pwd)"
run="${1:-$here/run}"
mkdir -p "$run/snapshots"
run="$(cd "$run" && pwd)"
cd "$run"
python3 "$here/prepare.py" "$run"
rm -rf digits_train_lmdb digits_test_lmdb
convert_imageset --gray --resize_height=28 --resize_width=28 images/ train.txt digits_train_lmdb
convert_imageset --gray --resize_height=28 --resize_width=28 images/ test.txt digits_test_lmdb
cp "$here/lenet_train_test.prototxt" "$here/lenet_solver.prototxt" .
start=$(date +%s)
caffe train --solver=lenet_solver.prototxt 2>&1 | tee train.log
echo "training took $(( $(date +%s) - start )) s"
plot_training_log train.log loss_accuracy.png
acc=$(grep -E "Test net output #[0-9]+: accuracy = " train.log | tail -n 1 | sed -E 's/.*accuracy = ([0-9.eE+-]+).*/\1/')
echo "final test accuracy: $acc  (run folder: $run)"
