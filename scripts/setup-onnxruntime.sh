#!/usr/bin/env bash
# Fetches the official ONNX Runtime shared library from the `onnxruntime` wheel on PyPI
# (pinned version, checksum verified) and places it at DEST (default: .ort/ in the repository).
#
#   scripts/setup-onnxruntime.sh [DEST_DIR]
#
# Prints the full path of the library on its last line. Idempotent: a verified copy is reused.
set -euo pipefail

ORT_VERSION=1.32.0
WHEEL=onnxruntime-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl
WHEEL_SHA256=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d
LIB=libonnxruntime.so.${ORT_VERSION}
LIB_SHA256=6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/.ort}
mkdir -p "$dest"

if [ -f "$dest/$LIB" ] && echo "$LIB_SHA256  $dest/$LIB" | sha256sum --check --status; then
  echo "$dest/$LIB"
  exit 0
fi

case "$(uname -m)" in
  x86_64) ;;
  *) echo "setup-onnxruntime: only x86_64 Linux is pinned here (got $(uname -m))" >&2; exit 1 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.11 --platform manylinux_2_28_x86_64 \
  -d "$work" "onnxruntime==${ORT_VERSION}" >&2
echo "$WHEEL_SHA256  $work/$WHEEL" | sha256sum --check --status \
  || { echo "setup-onnxruntime: checksum mismatch for $WHEEL" >&2; exit 1; }
python3 - "$work/$WHEEL" "onnxruntime/capi/$LIB" "$work/$LIB" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$LIB_SHA256  $work/$LIB" | sha256sum --check --status \
  || { echo "setup-onnxruntime: checksum mismatch for $LIB" >&2; exit 1; }
install -m 0755 "$work/$LIB" "$dest/$LIB"
echo "$dest/$LIB"
