#!/usr/bin/env bash
# The demo, from a fresh checkout: installs the pinned ONNX Runtime library, builds sensei and
# runs `sensei demo` on the bundled teacher, student and field streams. Extra arguments go to
# `sensei demo` (e.g. --json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-onnxruntime.sh >/dev/null
cargo build --locked --release --quiet
exec target/release/sensei demo "$@"
