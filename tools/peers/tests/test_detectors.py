"""The budget-derived ARL0 and the vectorised Bernoulli CUSUM of tools/peers/detectors.py."""

import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import detectors  # noqa: E402


def test_budget_arl0_follows_the_allocation_of_the_demo():
    # W = 3 detectors x (4 + 1 + 1 + 1 + 2 + 1) + 2 = 32; disagreement's detector has 4/32 of one
    # event per 90 d, and sees 0.1 of 1 record/s.
    expected = 90 * 86_400 * 0.1 / (4 / 32)
    assert math.isclose(detectors.budget_arl0(), expected)
    assert math.isclose(detectors.budget_arl0(records_per_second=100.0), 100 * expected)
    # Without segments the same budget is spread over fewer detectors: a smaller ARL0 each.
    assert detectors.budget_arl0(segments=0) < expected


def test_vectorised_bank_run_lengths_match_the_recursion():
    p0, paths, length, seed = 0.03, 40, 4000, 3
    members = detectors.bank_members(p0, 0.05, (0.5, 2.0))
    ts = [1.0, 2.5, 4.0, 6.0]
    got = detectors.bank_run_lengths(p0, members, ts, paths, length, seed, chunk=1000, shrink=False)
    rng = np.random.default_rng(seed)
    draws = np.concatenate([rng.random((paths, 1000)) for _ in range(length // 1000)], axis=1)
    incs = [detectors.cusum_llr(p0, p1) for p1, _ in members]
    for i in range(paths):
        for j, t in enumerate(ts):
            s, at = [0.0, 0.0], length
            for k in range(length):
                one = draws[i, k] < p0
                s = [max(0.0, x + (up if one else down)) for x, (up, down) in zip(s, incs)]
                if any(x >= d + t for x, (_, d) in zip(s, members)):
                    at = k + 1
                    break
            assert got[i, j] == at, (i, t)
    # A larger level never alarms earlier on the same path.
    assert (np.diff(got, axis=1) >= 0).all()


def test_bank_offsets_give_the_large_member_the_higher_threshold():
    members = detectors.bank_members()
    assert members[0][1] == 0.0
    assert all(b[1] > a[1] for a, b in zip(members, members[1:]))


def test_bank_first_alarm_rearms_and_counts_alarms_before_the_change():
    stream = np.zeros(detectors.LENGTH, dtype=np.uint8)
    stream[10:13] = 1  # three disagreements in a row: an alarm long before the change
    stream[detectors.CHANGE_AT + 5:detectors.CHANGE_AT + 8] = 1
    at, false_alarms = detectors.bank_first_alarm(stream, [(0.08, 0.0)], 2.5)
    assert false_alarms == 1
    assert at == detectors.CHANGE_AT + 7
    # The vectorised rows agree with the loop, the false alarm and re-arm included.
    streams = np.zeros((len(detectors.CHANGES), 2, detectors.LENGTH), dtype=np.uint8)
    streams[:, 0] = stream
    streams[:, 1, detectors.CHANGE_AT + 100:detectors.CHANGE_AT + 104] = 1
    rows = detectors.bank_rows(streams, [(0.08, 0.0)], 2.5)
    assert rows[0][1] == [8, 103] and rows[0][3] == 1
