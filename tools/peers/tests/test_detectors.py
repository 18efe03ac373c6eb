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


def test_vectorised_run_lengths_match_the_recursion():
    p0, p1, paths, length, seed = 0.03, 0.08, 40, 4000, 3
    hs = [1.0, 2.5, 4.0, 6.0]
    got = detectors.cusum_run_lengths(p0, p1, hs, paths, length, seed, chunk=1000)
    rng = np.random.default_rng(seed)
    draws = np.concatenate([rng.random((paths, 1000)) for _ in range(length // 1000)], axis=1)
    up, down = detectors.cusum_llr(p0, p1)
    for i in range(paths):
        for j, h in enumerate(hs):
            s, at = 0.0, length
            for t in range(length):
                s = max(0.0, s + (up if draws[i, t] < p0 else down))
                if s >= h:
                    at = t + 1
                    break
            assert got[i, j] == at, (i, h)
    # A larger threshold never alarms earlier on the same path.
    assert (np.diff(got, axis=1) >= 0).all()


def test_sensei_first_alarm_rearms_and_counts_alarms_before_the_change():
    stream = np.zeros(detectors.LENGTH, dtype=np.uint8)
    stream[10:13] = 1  # three disagreements in a row: an alarm long before the change
    stream[detectors.CHANGE_AT + 5:detectors.CHANGE_AT + 8] = 1
    at, false_alarms = detectors.sensei_first_alarm(stream, 0.08, 2.5)
    assert false_alarms == 1
    assert at == detectors.CHANGE_AT + 7
