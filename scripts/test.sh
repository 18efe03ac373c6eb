#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: installs what the tests need (the pinned ONNX
# Runtime library, the Python packages of the reference distiller and the pipeline peer, two
# inference servers, each in its own virtual environment), then
# runs the Rust tests (unit and integration, against the real ONNX Runtime and real SQLite files)
# and the Python tests of tools/distill and tools/peers.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== ONNX Runtime"
scripts/setup-onnxruntime.sh

echo "== Python packages (tools/distill/requirements.txt, tools/peers/requirements-pipeline.txt)"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  -r tools/distill/requirements.txt -r tools/peers/requirements-pipeline.txt

echo "== System tools for the operations tests (promtool, prometheus, chromium, systemd-analyze)"
missing=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "== Receivers for the alert tests (aiosmtpd, Alertmanager)"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore aiosmtpd==1.4.6
if ! command -v prometheus-alertmanager >/dev/null && ! command -v alertmanager >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null
fi

echo "== Inference servers for the remote-teacher tests (KServe's model server, Triton), each in .venv/oip-NAME"
for server in kserve triton; do
  if [ ! -x ".venv/oip-$server/bin/python" ]; then
    python3 -m venv ".venv/oip-$server"
  fi
  ".venv/oip-$server/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "tests/servers/requirements-$server.txt"
done

echo "== nginx, the TLS and token proxy in front of the inference server in the remote-teacher tests"
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx openssl >/dev/null
fi

echo "== Rust: format, lint, tests"
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked

echo "== Python: tools/distill"
python3 -m pytest tools/distill/tests -q

echo "== Python: the pipeline peer against sensei replay (tools/peers)"
python3 -m pytest tools/peers/tests -q
