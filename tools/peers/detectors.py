"""Peer drift detectors on the same Bernoulli disagreement streams as sensei's benchmark.

Reads the streams written by `cargo bench --bench detectors` (target/peer-streams.bin: 3 change
sizes x 300 streams x 12000 records, one byte per record, change at record 2000), calibrates every
peer's threshold parameter on in-control Bernoulli(0.03) streams to the same in-control average
run length as sensei (ARL0 = 5000 records), then prints median detection delay and false-alarm
rate in the same table format as benches/detectors.rs.

    python tools/peers/detectors.py [target/peer-streams.bin] [--alibi-only] [--alibi-streams N]

Under the site-wide false-alarm budget (`[detect] false_alarms`), the ARL0 is the one the budget
allocates to the disagreement detector (see `budget_arl0`), and the streams can be generated here
(seeded) instead of read from the bench:

    python tools/peers/detectors.py --generate 20240602 --arl0 50000 --calibration-records 1000000 \
        --budget-arl0 6220800 --no-alibi

`--arl0` is what every peer is calibrated to; sensei's Bernoulli CUSUMs (at p1 = 0.05, 0.08, 0.15:
the oracle for each step) and its bank (`bank_rows`, the recursions of `BernoulliCusum` and
`BernoulliBank`) are run at that ARL0 and, with `--budget-arl0`, at the budget's; the last table
gives their medians against the oracle and the best peer that holds the ARL0.
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


def budget_arl0(events=1.0, period_seconds=90 * 86_400.0, records_per_second=1.0, teacher_share=0.1,
                weights=(4, 1, 1, 1, 2, 1), segments=2, windowed_weight=2.0, family_weight=4.0):
    """The ARL0 (teacher observations) src/drift/budget.rs gives the all-segments disagreement
    detector: observations per period / (events x w / W), W = (segments + 1) x sum of family
    weights + the windowed rounds' weight. Defaults: the demo (two segments, labels, attention,
    windowed rounds), 1 per 90 d, 1 record/s, teacher rate 0.1."""
    total = (segments + 1) * sum(weights) + windowed_weight
    return records_per_second * period_seconds * teacher_share / (events * family_weight / total)


def cusum_llr(p0, p1):
    return math.log(p1 / p0), math.log((1 - p1) / (1 - p0))


# The bank (src/monitor/bank.rs): members at p1 = p0 + m x min shift for these multipliers.
BANK_MULTIPLIERS = (0.5, 1.0, 2.0)
MIN_SHIFT = 0.05


def kl_bernoulli(p0, p1):
    """KL(Bernoulli(p0) || Bernoulli(p1)): the in-control drift of the LLR CUSUM p0 -> p1."""
    return p0 * math.log(p0 / p1) + (1 - p0) * math.log((1 - p0) / (1 - p1))


def bank_members(p0=P0, shift=MIN_SHIFT, multipliers=BANK_MULTIPLIERS):
    """(p1, offset) per member, as `BankShape` in src/monitor/bank.rs: offset d = ln(KL / KL_min),
    so that before the overshoot (Siegmund, theta = 1) every member has the same ARL0 at h = d + t."""
    p1s = [min(p0 + m * shift, 0.999) for m in multipliers]
    kls = [kl_bernoulli(p0, p1) for p1 in p1s]
    low = min(kls)
    return [(p1, math.log(k / low)) for p1, k in zip(p1s, kls)]


def bank_run_lengths(p0, members, ts, paths, max_len, seed, chunk=4000, shrink=True):
    """In-control run lengths of the bank statistic M = max_j (S_j - d_j) for every t in ts (the
    bank alarms when any member reaches d_j + t), on common random numbers; with `shrink`, only
    paths that have not yet reached the largest t are extended (otherwise every chunk draws
    (paths, chunk) uniforms). Page's CUSUM is W_t - min(0, min_s W_s), with W the running sum of
    increments, so a chunk is a cumsum. Censored at max_len."""
    ts = np.asarray(ts, dtype=float)
    incs = [cusum_llr(p0, p1) for p1, _ in members]
    k = len(members)
    rng = np.random.default_rng(seed)
    first = np.full((paths, len(ts)), float(max_len))
    w_end = np.zeros((k, paths))
    w_min = np.zeros((k, paths))
    m_max = np.zeros(paths)
    alive = np.arange(paths)
    done = 0
    while done < max_len and alive.size:
        n = min(chunk, max_len - done)
        ones = rng.random((alive.size, n)) < p0
        big = None
        for j, ((up, down), (_, d)) in enumerate(zip(incs, members)):
            w = w_end[j, alive][:, None] + np.cumsum(np.where(ones, up, down), axis=1)
            m = np.minimum(w_min[j, alive][:, None], np.minimum.accumulate(w, axis=1))
            w_end[j, alive], w_min[j, alive] = w[:, -1], m[:, -1]
            s = w - m - d
            big = s if big is None else np.maximum(big, s)
        big = np.maximum(np.maximum.accumulate(big, axis=1), m_max[alive][:, None])
        for jt, t in enumerate(ts):
            hit = (first[alive, jt] >= max_len) & (big[:, -1] >= t)
            if hit.any():
                rows = np.flatnonzero(hit)
                first[alive[rows], jt] = done + np.argmax(big[rows] >= t, axis=1) + 1
        m_max[alive] = big[:, -1]
        done += n
        if shrink:
            alive = alive[m_max[alive] < ts[-1]]
    return first


def bank_threshold(p0, members, arl0, paths=1000, seed=11):
    """The common offset t with simulated in-control bank ARL0 = arl0 (log-linear interpolation on
    a grid of t)."""
    ts = np.linspace(0.5, math.log(arl0) + 1.0, 60)
    arl = bank_run_lengths(p0, members, ts, paths, int(10 * arl0), seed).mean(axis=0)
    j = min(max(int(np.searchsorted(arl, arl0)), 1), len(ts) - 1)
    f = (math.log(arl0) - math.log(arl[j - 1])) / (math.log(arl[j]) - math.log(arl[j - 1]))
    return float(ts[j - 1] + f * (ts[j] - ts[j - 1]))


# Beyond its simulated range the bank's level grows by this much per unit of ln ARL0
# (`SLOPE_BEYOND` in src/monitor/bank.rs; measured from 10^4 to 10^6: 1.06-1.07).
BANK_SLOPE_BEYOND = 1.1


def bank_extrapolated(level, arl0, target):
    """The bank's level beyond its simulated range, as `BankReference::level` in
    src/monitor/bank.rs (without its Bonferroni cap, which does not bind below ~10^9)."""
    return level + BANK_SLOPE_BEYOND * math.log(target / arl0)


def bank_first_alarm(stream, members, t, p0=P0):
    """Loop version of the bank (every member re-armed at an alarm, as src/monitor/bank.rs does)."""
    incs = [cusum_llr(p0, p1) for p1, _ in members]
    s = [0.0] * len(members)
    false_alarms = 0
    for i, x in enumerate(stream):
        fired = False
        for j, (up, down) in enumerate(incs):
            s[j] = max(0.0, s[j] + (up if x else down))
            fired = fired or s[j] >= members[j][1] + t
        if fired:
            if i < CHANGE_AT:
                false_alarms += 1
                s = [0.0] * len(members)
            else:
                return i, false_alarms
    return None, false_alarms


def bank_rows(streams, members, t, p0=P0):
    """Median-delay rows of the bank. Vectorised over streams; a stream whose first alarm falls
    before the change (a false alarm, then a re-arm) is replayed by `bank_first_alarm`."""
    rows = []
    for scenario, change in enumerate(CHANGES):
        x = streams[scenario]
        hit = np.zeros(x.shape, dtype=bool)
        for p1, d in members:
            up, down = cusum_llr(p0, p1)
            w = np.cumsum(np.where(x == 1, up, down), axis=1)
            s = w - np.minimum(0.0, np.minimum.accumulate(w, axis=1))
            hit |= s >= d + t
        any_hit = hit.any(axis=1)
        first = np.where(any_hit, np.argmax(hit, axis=1), -1)
        delays, missed, false_alarms = [], 0, 0
        for i in range(x.shape[0]):
            at, fa = (first[i], 0) if first[i] >= CHANGE_AT else (None, 0)
            if first[i] != -1 and first[i] < CHANGE_AT:
                at, fa = bank_first_alarm(x[i], members, t, p0)
            false_alarms += fa
            if at is None:
                missed += 1
            else:
                delays.append(at - CHANGE_AT + 1)
        rows.append((change, delays, missed, false_alarms))
    return rows


def cusum_threshold_fast(p0, p1, arl0, paths=1000, seed=11):
    """A single CUSUM is a bank of one member with offset 0."""
    return bank_threshold(p0, [(p1, 0.0)], arl0, paths, seed)


def generate_streams(seed):
    rng = np.random.default_rng(seed)
    out = np.empty((len(CHANGES), STREAMS, LENGTH), dtype=np.uint8)
    for i, change in enumerate(CHANGES):
        p = np.where(np.arange(LENGTH) < CHANGE_AT, P0, change)
        out[i] = rng.random((STREAMS, LENGTH)) < p
    return out


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


# Bisection steps per peer (default 9). HDDM_A's in-control ARL0 is steep in drift_confidence on
# these streams (300,000 records: 37 alarms at 0.0467, 4 at 0.046, 1 at 0.0455), so its
# bisection over 1e-14..0.5 needs 16 steps (0.05 % of the value) instead of 9 (3 %).
BISECTION_STEPS = {"River HDDM_A (drift_confidence)": 16}


def false_alarm_arl(make, param, stream):
    det = make(param)
    alarms = 0
    for x in stream:
        det.update(float(x))
        if det.drift_detected:
            alarms += 1
    return len(stream) / max(alarms, 0.5), alarms


def calibrate(make, bracket, larger_is_stricter, stream, arl0=ARL0, steps=9):
    """Log-scale bisection of the parameter until the in-control ARL matches arl0."""
    lo, hi = math.log(bracket[0]), math.log(bracket[1])
    for _ in range(steps):
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


def option(args, name, default, kind):
    if name in args:
        i = args.index(name)
        value = kind(args[i + 1])
        del args[i:i + 2]
        return value
    return default


def main():
    args = sys.argv[1:]
    alibi_only = "--alibi-only" in args
    no_alibi = "--no-alibi" in args
    alibi_streams = option(args, "--alibi-streams", 100, int)
    arl0 = option(args, "--arl0", ARL0, float)
    calibration_records = option(args, "--calibration-records", CALIBRATION_RECORDS, int)
    generate = option(args, "--generate", None, int)
    budget = option(args, "--budget-arl0", None, float)
    # --peers TEXT: only the peers whose name contains TEXT; --no-sensei: no sensei rows.
    only = option(args, "--peers", None, str)
    no_sensei = "--no-sensei" in args
    args = [a for a in args if a not in ("--alibi-only", "--no-alibi", "--no-sensei")]
    if generate is not None:
        streams = generate_streams(generate)
    else:
        path = args[0] if args else "target/peer-streams.bin"
        raw = np.fromfile(path, dtype=np.uint8)
        streams = raw.reshape(len(CHANGES), STREAMS, LENGTH)
    rng = np.random.default_rng(20240601)
    in_control = (rng.random(calibration_records) < P0).astype(np.uint8)
    verify = (rng.random(calibration_records) < P0).astype(np.uint8)

    print(f"| detector | change | median delay | mean delay | missed | false alarms per 10k in-control records |")
    print("|---|---|---|---|---|---|")
    notes = []
    medians = {}  # (detector, ARL0) -> [median delay per change]
    if generate is not None and not no_sensei:
        targets = [arl0] + ([budget] if budget else [])
        # Single CUSUMs: p1 = 0.08 is the default (p0 + min_shift_disagreement); each of 0.05,
        # 0.08, 0.15 is the oracle for the step to that rate.
        singles = [("sensei Bernoulli CUSUM p1 = %.2f" % p1, [(p1, 0.0)]) for p1 in CHANGES]
        bank = ("sensei bank, p1 = " + ", ".join(f"{p1:.3f}" for p1, _ in bank_members()), bank_members())
        for name, members in singles + [bank]:
            t = time.time()
            level = bank_threshold(P0, members, arl0)
            for target in targets:
                if target == arl0:
                    h, how = level, "simulated"
                elif len(members) > 1:
                    h = bank_extrapolated(level, arl0, target)
                    how = f"simulated at {arl0:.0f}, + {BANK_SLOPE_BEYOND} x ln(ARL0 / {arl0:.0f})"
                else:
                    # The LLR CUSUM's ARL0, and the bank's, grow as e^h (Siegmund, theta = 1):
                    # extrapolated from the level simulated at --arl0, as src/monitor/curve.rs does
                    # beyond its points.
                    h = level + math.log(target / arl0)
                    how = f"simulated at {arl0:.0f}, + ln(ARL0 / {arl0:.0f})"
                label = f"{name}, ARL0 {target:.0f}, " + ("h" if len(members) == 1 else "level t") + f" = {h:.2f}"
                rows = bank_rows(streams, members, h)
                medians[(name, target)] = [float(np.median(r[1])) if r[1] else math.inf for r in rows]
                print_rows(label, rows)
                notes.append(f"{label} ({how}), {time.time() - t:.0f} s")
    peer_medians = []
    peers = [p for p in PEERS if only is None or only.lower() in p[0].lower()]
    for name, make, bracket, stricter in ([] if alibi_only else peers):
        t = time.time()
        param = calibrate(make, bracket, stricter, in_control, arl0, BISECTION_STEPS.get(name, 9))
        arl, alarms = false_alarm_arl(make, param, verify)
        notes.append(f"{name}: parameter {param:.4g}, verified ARL0 {arl:.0f} ({alarms} alarms in "
                     f"{calibration_records} fresh in-control records), {time.time() - t:.0f} s")
        rows = evaluate(make, param, streams)
        print_rows(f"{name} = {param:.3g}, ARL0 {arl0:.0f}", rows)
        print(notes[-1], file=sys.stderr, flush=True)
        # A peer is compared if it holds the ARL0 (verified at >= 0.8 x target) and its false
        # alarms before the change are at most twice the target's rate.
        before = sum(r[3] for r in rows) / (len(rows) * STREAMS * CHANGE_AT)
        fair = arl >= 0.8 * arl0 and before <= 2.0 / arl0
        peer_medians.append((name, fair, [float(np.median(r[1])) if r[1] else math.inf for r in rows]))
    if medians:
        print()
        print("| detector | ARL0 | " + " | ".join(f"{P0} → {c}" for c in CHANGES) + " |")
        print("|---|---|" + "---|" * len(CHANGES))
        fair = [m for _, ok, m in peer_medians if ok]
        best = [min(m[i] for m in fair) for i in range(len(CHANGES))] if fair else None
        if best:
            names = [next(n for n, ok, m in peer_medians if ok and m[i] == best[i]) for i in range(len(CHANGES))]
            print(f"| best fair peer ({', '.join(names)}) | {arl0:.0f} | " + " | ".join(f"{b:.0f}" for b in best) + " |")
        for target in targets:
            oracle = [medians[(singles[i][0], target)][i] for i in range(len(CHANGES))]
            print(f"| oracle CUSUM (p1 = the step's rate) | {target:.0f} | " + " | ".join(f"{o:.0f}" for o in oracle) + " |")
            for name, _ in singles[1:2] + [bank]:
                m = medians[(name, target)]
                cells = []
                for i in range(len(CHANGES)):
                    cell = f"{m[i]:.0f}: {m[i] / oracle[i]:.2f} x oracle"
                    if best and target == arl0:
                        cell += f", {m[i] / best[i]:.2f} x best peer"
                    cells.append(cell)
                print(f"| {name} | {target:.0f} | " + " | ".join(cells) + " |")
    if not no_alibi:
        try:
            reference = (np.random.default_rng(7).random(5000) < P0).astype(np.float64)
            print_rows("alibi-detect FETDriftOnline (ert = 5000, windows 100, 400)",
                       alibi_fet(streams, reference, alibi_streams))
        except Exception as exc:  # noqa: BLE001 - report and go on: the river rows stand alone
            notes.append(f"alibi-detect FETDriftOnline skipped: {exc!r}")
    print()
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
