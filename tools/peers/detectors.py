"""Peer drift detectors on the same Bernoulli disagreement streams as sensei's benchmark.

Reads the streams written by `cargo bench --bench detectors` (target/peer-streams.bin: 3 change
sizes x 300 streams x 12000 records, one byte per record, change at record 2000), calibrates every
peer's threshold parameter on in-control Bernoulli(0.03) streams to the same in-control average
run length as sensei (ARL0 = 5000 records), then prints median detection delay and false-alarm
rate in the same table format as benches/detectors.rs.

    python tools/peers/detectors.py [target/peer-streams.bin] [--alibi-only] [--alibi-streams N]
"""

import math
import sys
import time

import numpy as np
from river import drift

P0 = 0.03
CHANGES = [0.05, 0.08, 0.15]
STREAMS = 300
CHANGE_AT = 2000
LENGTH = 12_000
ARL0 = 5000.0
CALIBRATION_RECORDS = 300_000


def adwin(delta):
    return drift.ADWIN(delta=delta)


def page_hinkley(threshold):
    # delta = half the smallest shift worth an alert (0.03 -> 0.05), upward changes only.
    return drift.PageHinkley(min_instances=30, delta=0.01, threshold=threshold, mode="up")


def ddm(threshold):
    return drift.binary.DDM(warning_threshold=min(2.0, threshold * 0.9), drift_threshold=threshold)


def hddm_a(confidence):
    return drift.binary.HDDMA(drift_confidence=confidence, warning_confidence=min(0.5, confidence * 5))


# name, factory, parameter bracket, True if a larger parameter means fewer alarms
PEERS = [
    ("River ADWIN (delta)", adwin, (1e-12, 0.5), False),
    ("River PageHinkley (threshold)", page_hinkley, (0.5, 200.0), True),
    ("River DDM (drift_threshold)", ddm, (1.5, 12.0), True),
    ("River HDDM_A (drift_confidence)", hddm_a, (1e-14, 0.5), False),
]


def false_alarm_arl(make, param, stream):
    det = make(param)
    alarms = 0
    for x in stream:
        det.update(float(x))
        if det.drift_detected:
            alarms += 1
    return len(stream) / max(alarms, 0.5), alarms


def calibrate(make, bracket, larger_is_stricter, stream, arl0=ARL0):
    """Log-scale bisection of the parameter until the in-control ARL matches arl0."""
    lo, hi = math.log(bracket[0]), math.log(bracket[1])
    for _ in range(9):
        mid = 0.5 * (lo + hi)
        arl, _ = false_alarm_arl(make, math.exp(mid), stream)
        too_many_alarms = arl < arl0
        if too_many_alarms == larger_is_stricter:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def evaluate(make, param, streams):
    rows = []
    for scenario, change in enumerate(CHANGES):
        delays, missed, false_alarms = [], 0, 0
        for s in streams[scenario]:
            det = make(param)
            detected = None
            for t, x in enumerate(s):
                det.update(float(x))
                if det.drift_detected:
                    if t < CHANGE_AT:
                        false_alarms += 1
                    else:
                        detected = t
                        break
            if detected is None:
                missed += 1
            else:
                delays.append(detected - CHANGE_AT + 1)
        rows.append((change, delays, missed, false_alarms))
    return rows


def alibi_fet(streams, reference, per_scenario=100):
    """alibi-detect's FETDriftOnline: calibrated by its own simulation to an expected run time."""
    from alibi_detect.cd import FETDriftOnline

    t = time.time()
    det = FETDriftOnline(x_ref=reference, ert=ARL0, window_sizes=[100, 400], n_bootstraps=25_000,
                         alternative="greater", verbose=False)
    print(f"(FETDriftOnline configured in {time.time() - t:.0f} s)", file=sys.stderr)
    started = time.time()
    rows = []
    # It is slow (configuration ~10 min, ~0.6 ms per record), so it runs on the first
    # `per_scenario` streams of each change size only.
    for scenario, change in enumerate(CHANGES):
        delays, missed, false_alarms, seen = [], 0, 0, 0
        for s in streams[scenario][:per_scenario]:
            det.reset_state()
            detected = None
            for t, x in enumerate(s):
                out = det.predict(np.array([float(x)]))
                if out["data"]["is_drift"]:
                    if t < CHANGE_AT:
                        false_alarms += 1
                        det.reset_state()
                    else:
                        detected = t
                        break
            seen += 1
            if detected is None:
                missed += 1
            else:
                delays.append(detected - CHANGE_AT + 1)
        print(f"(FETDriftOnline, {P0} -> {change}: {seen} streams, {false_alarms} false alarms in "
              f"{seen * CHANGE_AT} in-control records, {time.time() - started:.0f} s so far)", file=sys.stderr)
        rows.append((change, delays, missed, false_alarms, seen))
    return rows


def print_rows(name, rows, streams_per_scenario=STREAMS):
    for row in rows:
        change, delays, missed, false_alarms = row[:4]
        n = row[4] if len(row) > 4 else streams_per_scenario
        median = float(np.median(delays)) if delays else float("nan")
        mean = float(np.mean(delays)) if delays else float("nan")
        far = 1e4 * false_alarms / (n * CHANGE_AT)
        print(f"| {name} | {P0} → {change} | {median:.0f} | {mean:.0f} | {missed} | {far:.2f} |", flush=True)


def main():
    args = sys.argv[1:]
    alibi_only = "--alibi-only" in args
    alibi_streams = 100
    if "--alibi-streams" in args:
        alibi_streams = int(args[args.index("--alibi-streams") + 1])
        del args[args.index("--alibi-streams"):args.index("--alibi-streams") + 2]
    args = [a for a in args if a != "--alibi-only"]
    path = args[0] if args else "target/peer-streams.bin"
    raw = np.fromfile(path, dtype=np.uint8)
    streams = raw.reshape(len(CHANGES), STREAMS, LENGTH)
    rng = np.random.default_rng(20240601)
    in_control = (rng.random(CALIBRATION_RECORDS) < P0).astype(np.uint8)
    verify = (rng.random(CALIBRATION_RECORDS) < P0).astype(np.uint8)

    print(f"| detector | change | median delay | mean delay | missed | false alarms per 10k in-control records |")
    print("|---|---|---|---|---|---|")
    notes = []
    for name, make, bracket, stricter in ([] if alibi_only else PEERS):
        t = time.time()
        param = calibrate(make, bracket, stricter, in_control)
        arl, alarms = false_alarm_arl(make, param, verify)
        notes.append(f"{name}: parameter {param:.4g}, verified ARL0 {arl:.0f} ({alarms} alarms in "
                     f"{CALIBRATION_RECORDS} fresh in-control records), {time.time() - t:.0f} s")
        print_rows(f"{name} = {param:.3g}", evaluate(make, param, streams))
    try:
        reference = (np.random.default_rng(7).random(5000) < P0).astype(np.float64)
        print_rows("alibi-detect FETDriftOnline (ert = 5000, windows 100, 400)", alibi_fet(streams, reference, alibi_streams))
    except Exception as exc:  # noqa: BLE001 - report and go on: the river rows stand alone
        notes.append(f"alibi-detect FETDriftOnline skipped: {exc!r}")
    print()
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
