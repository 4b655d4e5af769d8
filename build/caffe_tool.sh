#!/bin/sh
# Caffe's built-tool paths (build/tools/caffe, build/tools/caffe.bin, build/examples/mnist/convert_mnist_data.bin,
# ...) are links to this script, so scripts written for Caffe run unchanged from this folder's parent.
# It runs neocaffe's tool of the invoked name (neocaffe/cli/build_paths.py) with the arguments given.
# Interpreter: $PYTHON, else python3. This checkout comes first on PYTHONPATH, so its tools run even where
# another copy of neocaffe (or none) is installed; neocaffe's dependencies must be installed.
real=$(readlink -f "$0") || exit 2
root=$(dirname "$(dirname "$real")")
PYTHONPATH="$root:$root/pycaffe_compat${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" -m neocaffe.cli.build_paths "$0" "$@"
