#!/usr/bin/env bash
# Regenerate neocaffe/proto/caffe_pb2.py from proto/caffe.proto.
#
# Needs grpcio-tools (it bundles protoc): pip install grpcio-tools
#
# The Python gencode of protoc is a serialized FileDescriptorProto plus calls
# to the runtime's builder; it only differs between protoc releases in the
# version it stamps into its runtime check. We stamp the project's protobuf
# floor (6.31.1) so the committed module imports on every supported runtime.
# (protoc 31.1, i.e. grpcio-tools 1.74, writes this very file unchanged.)
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
FLOOR="${PROTOBUF_FLOOR:-6.31.1}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$PYTHON" -m grpc_tools.protoc -Iproto --python_out="$tmp" proto/caffe.proto

"$PYTHON" - "$tmp/caffe_pb2.py" "$FLOOR" <<'PY'
import re
import sys

path, floor = sys.argv[1], sys.argv[2]
major, minor, patch = (int(x) for x in floor.split("."))
text = open(path, encoding="utf-8").read()

gate = re.compile(
    r"(_runtime_version\.ValidateProtobufRuntimeVersion\(\n"
    r"\s*_runtime_version\.Domain\.PUBLIC,\n)"
    r"\s*(\d+),\n\s*(\d+),\n\s*(\d+),\n")
m = gate.search(text)
if m is None:
    sys.exit("gen_proto.sh: runtime version gate not found in the gencode; "
             "check the protoc output by hand")
text = (text[:m.start()] + m.group(1)
        + f"    {major},\n    {minor},\n    {patch},\n" + text[m.end():])
text = re.sub(r"^# Protobuf Python Version: .*$",
              f"# Protobuf Python Version: {floor}", text, count=1, flags=re.M)
open(path, "w", encoding="utf-8").write(text)
PY

mkdir -p neocaffe/proto
cp "$tmp/caffe_pb2.py" neocaffe/proto/caffe_pb2.py
echo "wrote neocaffe/proto/caffe_pb2.py (runtime floor $FLOOR)"
