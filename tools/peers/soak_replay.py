"""An in-control soak through the real pipeline under the site-wide false-alarm budget.

Resamples (with replacement, seeded) N records from the demo's clean field stream
(models/demo/streams/clean.jsonl), gives them fresh ids and timestamps `--interval` seconds apart
(the demo stream's own spacing is 1 s), and writes them as files of `--per-file` records. It then
runs `sensei baseline` on models/demo/lab.jsonl and `sensei replay` of those files into a fresh
database with the default detection config (`false_alarms = "1 per 90d"`, teacher rate 0.1) and a
teacher budget large enough that the rate alone decides which records the teacher checks. It
prints the drift events and alarms per signal, the teacher's share of records, the disagreement
detector's ARL0 and threshold from the stored budget, and what the budget predicts:
records / (records per second x period) x events.

    python tools/peers/soak_replay.py [target/debug/sensei] [models/demo] [workdir]
        [--records 200000] [--seed 20] [--interval 1.0] [--per-file 20000] [--arl0 N]

`--arl0 N` sets the expert override `[detect] arl0 = N` for every sequential family instead of
the budget (the configuration before the budget existed, for comparison).
"""

import argparse
import datetime as dt
import json
import os
import sqlite3
import subprocess
import tempfile
import time

import numpy as np

CONFIG = """state_dir = {state!r}
{runtime}
[student]
path = {student!r}
output = "logits"
attention = "attention"
max_batch = 32

[teacher]
path = {teacher!r}
output = "logits"
attention = "attention"
max_batch = 32

[sampling]
max_per_minute = 1000000
queue = 100000

[segments]
keys = ["line"]
{detect}"""

PERIOD_SECONDS = 90 * 86_400.0
BUDGET_EVENTS = 1.0


def resample(source, n, seed, interval, start):
    """n records drawn with replacement from `source`, ids and timestamps renewed."""
    lines = [json.loads(line) for line in open(source) if line.strip()]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(lines), size=n)
    for i, k in enumerate(picks):
        record = dict(lines[k])
        record["id"] = f"soak-{i:07d}"
        ts = start + dt.timedelta(seconds=i * interval)
        record["ts"] = ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        yield record


def write_files(records, directory, per_file):
    os.makedirs(directory, exist_ok=True)
    paths, f, count = [], None, 0
    for record in records:
        if count % per_file == 0:
            if f:
                f.close()
            paths.append(os.path.join(directory, f"soak-{len(paths):04d}.jsonl"))
            f = open(paths[-1], "w")
        f.write(json.dumps(record, separators=(",", ":")) + "\n")
        count += 1
    if f:
        f.close()
    return paths, count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sensei", nargs="?", default="target/debug/sensei")
    ap.add_argument("models", nargs="?", default="models/demo")
    ap.add_argument("work", nargs="?", default=None)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--per-file", type=int, default=20_000)
    ap.add_argument("--arl0", type=int, default=None)
    args = ap.parse_args()
    models = os.path.abspath(args.models)
    work = args.work or tempfile.mkdtemp(prefix="sensei-soak-")
    os.makedirs(work, exist_ok=True)
    state = os.path.join(work, "state")
    runtime = os.environ.get("ORT_DYLIB_PATH")
    config = os.path.join(work, "sensei.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(
            state=state,
            runtime=f"[onnxruntime]\nlibrary = {runtime!r}\n" if runtime else "",
            student=os.path.join(models, "student.onnx"),
            teacher=os.path.join(models, "teacher.onnx"),
            detect=f"\n[detect]\narl0 = {args.arl0}\n" if args.arl0 else "",
        ))
    started = time.time()
    start = dt.datetime(2026, 3, 2, 6, 0, 0, tzinfo=dt.timezone.utc)
    paths, n = write_files(resample(os.path.join(models, "streams", "clean.jsonl"), args.records,
                                    args.seed, args.interval, start),
                           os.path.join(work, "inbox"), args.per_file)
    print(f"wrote {n} records in {len(paths)} files ({time.time() - started:.0f} s)", flush=True)
    out = subprocess.run([args.sensei, "--config", config, "baseline", "--json", os.path.join(models, "lab.jsonl")],
                         check=True, capture_output=True, text=True).stdout
    reference = json.loads(out)["reference"]
    t = time.time()
    replay = subprocess.run([args.sensei, "--config", config, "replay", "-q"] + paths,
                            capture_output=True, text=True)
    print(f"replay exit {replay.returncode} in {time.time() - t:.0f} s", flush=True)
    if replay.stdout.strip():
        print(replay.stdout.strip())
    db = sqlite3.connect(os.path.join(state, "sensei.db"))
    records = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    teacher = db.execute("SELECT COUNT(*) FROM teacher_samples").fetchone()[0]
    events = db.execute("SELECT COUNT(*) FROM drift_events").fetchone()[0]
    alarms = db.execute("SELECT COUNT(*) FROM drift_alarms").fetchone()[0]
    print(f"records {records}, teacher samples {teacher} ({teacher / max(records, 1):.4f} of records)")
    print(f"drift events {events}, drift alarms {alarms}")
    for row in db.execute("SELECT signal, segment, detector, COUNT(*), SUM(alarms), MIN(detected_at_record) "
                          "FROM drift_events GROUP BY signal, segment, detector ORDER BY 1, 2, 3"):
        print("  event", row)
    rate = 1.0 / args.interval
    expected = records / (rate * PERIOD_SECONDS) * BUDGET_EVENTS
    print(f"budget: {BUDGET_EVENTS:g} per 90d at {rate:g} records/s -> {expected:.4f} expected false events "
          f"in {records} records")
    for (json_text,) in db.execute("SELECT state FROM detector_state WHERE detector = 'budget'"):
        allocation = json.loads(json_text).get("allocation") or {}
        print(f"allocation: rate {allocation.get('records_per_second')} ({allocation.get('rate_source')}), "
              f"segments {allocation.get('segments')}")
        for fam in allocation.get("families", []):
            print(f"  {fam['family']}: weight {fam['weight']}, detectors {fam['detectors']}, "
                  f"arl0 {fam.get('arl0')}, alpha {fam.get('alpha')}, expected {fam['expected_events']:.4g}")
    for row in db.execute("SELECT signal, segment, state FROM detector_state "
                          "WHERE signal = 'disagreement' AND segment = '*'"):
        print("disagreement state:", row[2][:400])
    d = reference.get("disagreement", {})
    print(f"baseline disagreement: p0 {d.get('p0')}, p1 {d.get('p1')}, threshold {d.get('threshold')}")
    print(f"total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
