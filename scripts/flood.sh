#!/usr/bin/env bash
# A flood of small files through a real daemon: FLOOD_FILES (default 100000) one-record JSON
# Lines files, made from the demo lab records, are renamed into the inbox of a running
# `sensei run` (release build, demo models, the teacher on half the records) as fast as one
# process can rename them. Prints the wall time from the first rename until the inbox is empty
# and every file is in the ledger, files/s, the records counted (and how many distinct ids),
# the daemon's peak RSS and how often the inotify queue overflowed. The result is recorded in
# docs/operations.md ("Faults").
#
#   scripts/flood.sh                     # 100000 files in a fresh temporary directory
#   FLOOD_FILES=20000 FLOOD_DIR=/srv/x scripts/flood.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
files=${FLOOD_FILES:-100000}
lib=$(scripts/setup-onnxruntime.sh | tail -n 1)
cargo build --release --locked --bin sensei >&2
bin=$root/target/release/sensei

dir=${FLOOD_DIR:-$(mktemp -d)}
mkdir -p "$dir/staging" "$dir/state/inbox"
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    if [ -z "${FLOOD_DIR:-}" ]; then rm -rf "$dir"; fi
}
trap cleanup EXIT

cat > "$dir/sensei.toml" <<EOF
state_dir = "state"
[onnxruntime]
library = "$lib"
[inbox]
quiet = "300ms"
[student]
path = "$root/models/demo/student.onnx"
output = "logits"
attention = "attention"
max_batch = 32
[teacher]
path = "$root/models/demo/teacher.onnx"
output = "logits"
attention = "attention"
max_batch = 32
[sampling]
rate = 0.5
seed = 7
max_per_minute = 1000000
queue = 4096
[segments]
keys = ["line"]
EOF

echo "writing $files one-record files under $dir/staging" >&2
python3 - "$root/models/demo/lab.jsonl" "$dir/staging" "$files" <<'EOF'
import json, os, sys
lab, staging, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
records = [json.loads(line) for line in open(lab) if line.strip()]
for i in range(n):
    rec = dict(records[i % len(records)])
    rec["id"] = f"flood-{i:06d}"
    with open(os.path.join(staging, f"f{i:06d}.jsonl"), "w") as f:
        f.write(json.dumps(rec) + "\n")
EOF

SENSEI_LOG=info,ort=warn "$bin" --config "$dir/sensei.toml" run 2> "$dir/daemon.log" &
pid=$!
until grep -q "Watching the inbox" "$dir/daemon.log"; do
    kill -0 "$pid" 2>/dev/null || { cat "$dir/daemon.log" >&2; exit 1; }
    sleep 0.2
done

echo "flooding the inbox" >&2
python3 - "$dir" "$files" "$pid" <<'EOF'
import os, sqlite3, sys, time
d, n, pid = sys.argv[1], int(sys.argv[2]), sys.argv[3]
staging, inbox = os.path.join(d, "staging"), os.path.join(d, "state", "inbox")
start = time.monotonic()
for name in sorted(os.listdir(staging)):
    os.rename(os.path.join(staging, name), os.path.join(inbox, name))
renamed = time.monotonic() - start
# Done when the inbox is empty (every file committed and moved) and the ledger has them all.
def ledger():
    c = sqlite3.connect(os.path.join(d, "state", "sensei.db"), timeout=30)
    try:
        return c.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    finally:
        c.close()
while True:
    with os.scandir(inbox) as it:
        empty = next(it, None) is None
    if empty and ledger() >= n:
        break
    time.sleep(0.5)
wall = time.monotonic() - start
with open(f"/proc/{pid}/status") as f:
    hwm = next(l.split()[1] for l in f if l.startswith("VmHWM:"))
c = sqlite3.connect(os.path.join(d, "state", "sensei.db"), timeout=30)
records, distinct = c.execute("SELECT COUNT(*), COUNT(DISTINCT record_id) FROM records").fetchone()
done, quarantined = c.execute(
    "SELECT SUM(status = 'done'), SUM(status = 'quarantined') FROM files").fetchone()
samples = c.execute("SELECT COUNT(*) FROM teacher_samples").fetchone()[0]
overflows = sum("queue overflowed" in l for l in open(os.path.join(d, "daemon.log")))
print(f"files:            {n} ({done} done, {quarantined} quarantined)")
print(f"renamed in:       {renamed:.1f} s")
print(f"all counted in:   {wall:.1f} s")
print(f"files/s:          {n / wall:.0f}")
print(f"records counted:  {records} ({distinct} distinct ids); teacher samples: {samples}")
print(f"peak RSS:         {int(hwm) / 1024:.0f} MiB")
print(f"inotify overflow: {overflows} rescans")
EOF
kill -TERM "$pid"
wait "$pid"
pid=
grep '"Stopped."' "$dir/daemon.log" >&2 || true
