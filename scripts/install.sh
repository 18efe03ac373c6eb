#!/usr/bin/env bash
# Installs sensei as a systemd service:
#
#   scripts/install.sh [DESTDIR]        (default: /, the running system)
#
#   DESTDIR/usr/bin/sensei                          the binary (target/release/sensei; built if missing)
#   DESTDIR/usr/lib/sensei/libonnxruntime.so.*      the pinned ONNX Runtime (scripts/setup-onnxruntime.sh)
#   DESTDIR/usr/lib/systemd/system/sensei.service   the unit
#   DESTDIR/usr/lib/sysusers.d/sensei.conf          the sensei user and group
#   DESTDIR/usr/lib/tmpfiles.d/sensei.conf          /var/lib/sensei and its inbox, done, quarantine, models
#   DESTDIR/etc/sensei/sensei.toml                  the example config, only if there is none yet
#   DESTDIR/etc/sensei/http-token                   a random HTTP bearer token (root only), if missing
#   DESTDIR/usr/share/doc/sensei/                   operations.md, alerts.md, schema.md
#   DESTDIR/usr/share/sensei/contrib/               the Grafana dashboard and the Prometheus rules
#                                                   (contrib/grafana, contrib/prometheus)
#   DESTDIR/usr/share/sensei/tools/distill/         the reference distiller the example config's
#                                                   [redistill] command runs (its Python packages:
#                                                   pip install -r …/requirements.txt)
#
# With DESTDIR=/ on a system running systemd it also creates the user and directories and
# reloads systemd; it never starts or enables the service (see the steps it prints).
# Set SENSEI_BIN to install another binary than target/release/sensei.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-/}
dest=${dest%/}
bin=${SENSEI_BIN:-$root/target/release/sensei}

if [ ! -x "$bin" ]; then
  echo "== building $bin"
  (cd "$root" && cargo build --release --locked)
fi

echo "== binary"
install -D -m 0755 "$bin" "$dest/usr/bin/sensei"

echo "== ONNX Runtime"
lib=libonnxruntime.so.1.32.0
lib_sha=$(grep -m1 '^LIB_SHA256=' "$root/scripts/setup-onnxruntime.sh" | cut -d= -f2)
if [ -f "$root/.ort/$lib" ] && echo "$lib_sha  $root/.ort/$lib" | sha256sum --check --status; then
  install -D -m 0644 "$root/.ort/$lib" "$dest/usr/lib/sensei/$lib"
else
  "$root/scripts/setup-onnxruntime.sh" "$dest/usr/lib/sensei" >/dev/null
fi

echo "== systemd unit, sysusers, tmpfiles"
install -D -m 0644 "$root/systemd/sensei.service" "$dest/usr/lib/systemd/system/sensei.service"
install -D -m 0644 "$root/systemd/sensei.sysusers" "$dest/usr/lib/sysusers.d/sensei.conf"
install -D -m 0644 "$root/systemd/sensei.tmpfiles" "$dest/usr/lib/tmpfiles.d/sensei.conf"

echo "== config"
install -d -m 0755 "$dest/etc/sensei"
if [ -e "$dest/etc/sensei/sensei.toml" ]; then
  echo "   $dest/etc/sensei/sensei.toml exists: left as it is (the new example is sensei.toml.example)"
  install -m 0644 "$root/config/sensei.toml" "$dest/etc/sensei/sensei.toml.example"
else
  install -m 0644 "$root/config/sensei.toml" "$dest/etc/sensei/sensei.toml"
fi
if [ ! -e "$dest/etc/sensei/http-token" ]; then
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dest/etc/sensei/http-token")
  echo "   generated $dest/etc/sensei/http-token (used when [http] token_credential = \"http-token\")"
fi

echo "== re-distillation tools"
distill=$dest/usr/share/sensei/tools/distill
install -D -m 0755 "$root/tools/distill/redistill.py" "$distill/redistill.py"
for f in requirements.txt README.md; do
  install -D -m 0644 "$root/tools/distill/$f" "$distill/$f"
done
for f in "$root"/tools/distill/sensei_distill/*.py; do
  install -D -m 0644 "$f" "$distill/sensei_distill/$(basename "$f")"
done

echo "== documentation"
for f in operations.md alerts.md schema.md; do
  install -D -m 0644 "$root/docs/$f" "$dest/usr/share/doc/sensei/$f"
done

echo "== Grafana dashboard and Prometheus rules"
install -D -m 0644 "$root/contrib/grafana/sensei.json" "$dest/usr/share/sensei/contrib/grafana/sensei.json"
for f in sensei-rules.yml sensei-rules.test.yml; do
  install -D -m 0644 "$root/contrib/prometheus/$f" "$dest/usr/share/sensei/contrib/prometheus/$f"
done

if [ "$dest" = "" ] && [ -d /run/systemd/system ]; then
  echo "== user, directories, systemd"
  systemd-sysusers /usr/lib/sysusers.d/sensei.conf
  systemd-tmpfiles --create /usr/lib/tmpfiles.d/sensei.conf
  systemctl daemon-reload
else
  # No running systemd (a package root or a container): lay the state directories out here.
  for d in inbox done quarantine models; do
    install -d -m 0750 "$dest/var/lib/sensei/$d"
  done
  chmod 2770 "$dest/var/lib/sensei/inbox"
fi

cat <<STEPS
== done. Next:
   1. put the models in /var/lib/sensei/models/ (owned by sensei) and edit /etc/sensei/sensei.toml
   2. sensei --config /etc/sensei/sensei.toml check
   3. systemctl enable --now sensei; systemctl status sensei; journalctl -u sensei
   Dashboard: http://127.0.0.1:9477/   Metrics: http://127.0.0.1:9477/metrics
STEPS
