#!/usr/bin/env bash
# Prepare what travels to the GPU machine beside the repository, for benchmarks/gpu_check.sh.
#
# Run it here (a machine with pip and ../shared), in the checkout that the device tool sends (the
# session's own checkout: a helper's worktree is not what travels). It fills two git-ignored folders
# that the device call names in `carry`:
#   .whl/                  wheels the GPU image lacks or has too old (CPython 3.12, manylinux x86_64):
#                          lmdb (Data layers, the e2e section), protobuf (our caffe_pb2 needs >= 6.31.1);
#                          gpu_check.sh installs each only where the image's own is missing or too old
#   .gpu_carry/shared/     what the check reads of ../shared: fixtures/ (the real-Caffe goldens of
#                          `pytest -m gpu`) and realdata/zoo_public_2026/ (zoo_parity.py)
# and prints the size of everything that travels (tracked + untracked-not-ignored files + the two
# folders), which must stay under the tool's 64 MiB.
#
# Usage: bash benchmarks/gpu_prepare.sh [--no-wheels]   (NEOCAFFE_SHARED=... to read another shared folder)
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(lmdb==3.0.0 protobuf==6.33.6)
SHARED_PARTS=(fixtures realdata/zoo_public_2026)
SRC=${NEOCAFFE_SHARED:-../shared}
LIMIT=$((64 * 1024 * 1024))
PY=${PYTHON:-python3}

if [[ "${1:-}" != "--no-wheels" ]]; then
  rm -rf .whl && mkdir -p .whl
  # the device README's recipe: binary wheels for CPython 3.12 on manylinux x86_64, no dependencies
  # (neither wheel has any), one version of each
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}" 2>&1 \
    | grep -v "^WARNING: Location" || true
  n=$(ls .whl/*.whl 2>/dev/null | wc -l)
  if [[ $n -ne ${#WHEELS[@]} ]]; then
    echo "gpu_prepare: expected ${#WHEELS[@]} wheels in .whl, found $n" >&2
    exit 1
  fi
fi

if [[ ! -d "$SRC" ]]; then
  echo "gpu_prepare: no shared folder at $SRC (set NEOCAFFE_SHARED)" >&2
  exit 1
fi
if [[ -d .gpu_carry ]]; then chmod -R u+w .gpu_carry; fi
rm -rf .gpu_carry/shared
for part in "${SHARED_PARTS[@]}"; do
  mkdir -p ".gpu_carry/shared/$(dirname "$part")"
  cp -rL "$SRC/$part" ".gpu_carry/shared/$part"
done
cp -L "$SRC"/*.md .gpu_carry/shared/ 2>/dev/null || true
chmod -R u+w .gpu_carry  # ../shared is read-only; the copy must be removable and may be written in

# what the device tool sends: tracked and untracked-not-ignored files, plus the carried folders
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
whl=$(du -sb .whl 2>/dev/null | cut -f1); whl=${whl:-0}
carry=$(du -sb .gpu_carry | cut -f1)
total=$((tree + whl + carry))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "gpu_prepare: working tree $(mib "$tree") + .whl $(mib "$whl") + .gpu_carry $(mib "$carry") = $(mib "$total") (limit 64 MiB)"
ls .whl 2>/dev/null | sed 's/^/  wheel: /'
for part in "${SHARED_PARTS[@]}"; do echo "  shared: $part $(mib "$(du -sb ".gpu_carry/shared/$part" | cut -f1)")"; done
if [[ $total -ge $LIMIT ]]; then
  echo "gpu_prepare: over the 64 MiB the device tool sends" >&2
  exit 1
fi
if ! git check-ignore -q .whl/x || ! git check-ignore -q .gpu_carry/x; then
  echo "gpu_prepare: .whl/ and .gpu_carry/ must be git-ignored (they travel only through carry)" >&2
  exit 1
fi
