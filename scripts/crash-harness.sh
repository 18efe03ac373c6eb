#!/usr/bin/env bash
# The long crash-consistency run: the daemon is SIGKILLed at 60 seeded random points while it
# works through 2000 files (400k records), restarted each time, and checked at the end (every
# record exactly once, every file done or quarantined, PRAGMA integrity_check); then 60 more
# kills while drifts raise alerts to a webhook and re-distillation jobs run (every notification
# delivered, no episode fired twice, no drift unannounced, every interrupted job recovered, no
# job command left running). The result is recorded in docs/crash.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-onnxruntime.sh >/dev/null
SENSEI_CRASH_KILLS=${SENSEI_CRASH_KILLS:-60} \
SENSEI_CRASH_FILES=${SENSEI_CRASH_FILES:-2000} \
SENSEI_CRASH_RECORDS=${SENSEI_CRASH_RECORDS:-200} \
SENSEI_CRASH_ALERT_RECORDS=${SENSEI_CRASH_ALERT_RECORDS:-50} \
SENSEI_CRASH_SEED=${SENSEI_CRASH_SEED:-20261127} \
  cargo test --locked --release --test tests -- suite::crash:: --test-threads=1 --nocapture
