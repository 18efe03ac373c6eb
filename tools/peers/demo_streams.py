"""Peer drift detectors on the disagreement stream sensei sees on the demo drifted streams.

For every demo stream (models/demo/streams/*.jsonl) this script runs the real pipeline with the
teacher on every record (sampling rate 1.0): `sensei baseline` on models/demo/lab.jsonl, then
`sensei replay` of the stream into a fresh database. It reads the per-record student/teacher
disagreement (teacher_samples.disagreement ordered by seq) and sensei's own drift events
(drift_events.detected_at_record) back from that database, and runs the River peers of
tools/peers/detectors.py on the same 0/1 sequence. Each peer is calibrated as in detectors.py, but
to the baseline's own in-control rate p0 and to the ARL0 the false-alarm budget gives sensei's
all-segments disagreement detector on that replay (read from the stored allocation, with the
threshold it armed), capped at --peer-arl0 (default 50,000): a River calibration at the budget's
millions of records would take hours.

    python tools/peers/demo_streams.py [target/release/sensei] [models/demo] [workdir] [--peer-arl0 N]

Record numbers count from 0 within the stream; delay = first alarm at or after the documented
drift start (models/demo/metrics.json) - start + 1; alarms before the start are false alarms.
"""

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detectors  # noqa: E402

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
rate = 1.0
seed = 7
max_per_minute = 1000000
queue = 4096

[segments]
keys = ["line"]
"""


def run_stream(sensei, models, work, name):
    state = os.path.join(work, name)
    runtime = os.environ.get("ORT_DYLIB_PATH")
    config = os.path.join(work, f"{name}.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(
            state=state,
            runtime=f"[onnxruntime]\nlibrary = {runtime!r}\n" if runtime else "",
            student=os.path.join(models, "student.onnx"),
            teacher=os.path.join(models, "teacher.onnx"),
        ))
    out = subprocess.run([sensei, "--config", config, "baseline", "--json", os.path.join(models, "lab.jsonl")],
                         check=True, capture_output=True, text=True).stdout
    reference = json.loads(out)["reference"]
    subprocess.run([sensei, "--config", config, "replay", os.path.join(models, "streams", f"{name}.jsonl")],
                   check=True, capture_output=True, text=True)
    db = sqlite3.connect(os.path.join(state, "sensei.db"))
    records = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    rows = db.execute("SELECT seq, disagreement FROM teacher_samples ORDER BY seq").fetchall()
    if len(rows) != records:
        raise RuntimeError(f"{name}: {len(rows)} teacher comparisons for {records} records")
    flags = np.array([int(d) for _, d in rows], dtype=np.uint8)
    # A fresh database numbers the stream's records from 1.
    events = db.execute(
        "SELECT signal, segment, detected_at_record - 1 FROM drift_events ORDER BY detected_at_record"
    ).fetchall()
    budget = json.loads(db.execute(
        "SELECT state FROM detector_state WHERE signal = 'budget' AND detector = 'budget'").fetchone()[0])
    family = next(f for f in budget["allocation"]["families"] if f["family"] == "disagreement")
    armed = db.execute(
        "SELECT threshold, state FROM detector_state WHERE signal = 'disagreement' AND segment = '*'"
    ).fetchone()
    return reference, flags, events, (family["arl0"], armed)


def first_alarm(make, param, flags, start):
    det = make(param)
    false_alarms = 0
    for t, x in enumerate(flags):
        det.update(float(x))
        if det.drift_detected:
            if start is None or t < start:
                false_alarms += 1
            else:
                return t, false_alarms
    return None, false_alarms


def describe(at, start, false_alarms):
    if start is None:
        return f"{false_alarms} alarms" if false_alarms else "none"
    text = "none" if at is None else (f"{at} (delay {at - start + 1})" if start is not None else str(at))
    if false_alarms:
        text += f"; {false_alarms} before the start"
    return text


def main():
    args = sys.argv[1:]
    peer_cap = detectors.option(args, "--peer-arl0", 50_000.0, float)
    sensei = args[0] if len(args) > 0 else "target/release/sensei"
    models = os.path.abspath(args[1] if len(args) > 1 else "models/demo")
    work = args[2] if len(args) > 2 else tempfile.mkdtemp(prefix="sensei-demo-peers-")
    os.makedirs(work, exist_ok=True)
    starts = {k: v["drift_start"] for k, v in json.load(open(os.path.join(models, "metrics.json")))["streams"].items()}
    names = sorted(n[:-6] for n in os.listdir(os.path.join(models, "streams"))
                   if n.endswith(".jsonl") and not n.endswith(".labels.jsonl"))
    names.sort(key=lambda n: n != "clean")

    streams = {name: run_stream(sensei, models, work, name) for name in names}
    reference = streams[names[0]][0]
    p0 = reference["disagreement"]["p0"]
    d = reference["disagreement"]
    budget_arl0, (armed_threshold, armed_state) = streams[names[0]][3]
    kind = "bank" if '"Bank"' in armed_state else "single CUSUM"
    print(f"baseline: p0 = {p0:.4f}, p1 = {d['p1']:.4f}; the budget's ARL0 for the all-segments "
          f"disagreement detector: {budget_arl0:.0f} teacher observations, armed as a {kind} "
          f"(threshold of its member nearest to alarm {armed_threshold:.3f} at the end of {names[0]})")
    arl0 = min(float(budget_arl0), peer_cap)
    print(f"peers calibrated to ARL0 {arl0:.0f}" + (f" (the budget's, capped at --peer-arl0 {peer_cap:.0f})"
                                                    if arl0 < budget_arl0 else " (the budget's)"))

    # About 20 alarms per bisection step: 300,000 records at ARL0 10,000, 1,000,000 at 50,000.
    records = max(detectors.CALIBRATION_RECORDS, int(20 * arl0))
    rng = np.random.default_rng(20240601)
    in_control = (rng.random(records) < p0).astype(np.uint8)
    verify = (rng.random(records) < p0).astype(np.uint8)
    peers = []
    for name, make, bracket, stricter in detectors.PEERS:
        t = time.time()
        param = detectors.calibrate(make, bracket, stricter, in_control, arl0,
                                    detectors.BISECTION_STEPS.get(name, 9))
        measured, alarms = detectors.false_alarm_arl(make, param, verify)
        print(f"{name}: parameter {param:.4g}, verified ARL0 {measured:.0f} ({alarms} alarms in "
              f"{records} fresh in-control records), {time.time() - t:.0f} s")
        peers.append((name.split(" (")[0], make, param))
    print()

    header = ["stream", "drift from", "disagreements before / from the start",
              "sensei disagreement detector", "sensei, first event on any signal"] + [p[0] for p in peers]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in names:
        _, flags, events, _ = streams[name]
        start = starts.get(name)
        before = int(flags[:start].sum()) if start is not None else int(flags.sum())
        after = f"{int(flags[start:].sum())}/{len(flags) - start}" if start is not None else "—"
        counts = f"{before}/{start if start is not None else len(flags)}, {after}"
        own = [e[2] for e in events if e[0] == "disagreement" and e[1] == "*"]
        own_at = own[0] if own else None
        own_fa = 0
        if start is not None:
            own_fa = sum(1 for r in own if r < start)
            own_at = next((r for r in own if r >= start), None)
        any_at = events[0][2] if events else None
        cells = [name, str(start) if start is not None else "—", counts,
                 describe(own_at, start, own_fa if start is not None else len(own)),
                 "none" if any_at is None else f"{any_at} ({events[0][0]} on {events[0][1]})"]
        for _, make, param in peers:
            at, fa = first_alarm(make, param, flags, start)
            cells.append(describe(at, start, fa))
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
