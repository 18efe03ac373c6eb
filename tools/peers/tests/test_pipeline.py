"""The Python peer (tools/peers/pipeline.py) does the same job as `sensei replay`: run both over the
same demo-stream files with the same config, each into its own database, and compare what they
stored.

Needs a built sensei (`cargo build`, or SENSEI_BIN) and the ONNX Runtime library of
scripts/setup-onnxruntime.sh (or ORT_DYLIB_PATH).
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
PEER = REPO / "tools/peers/pipeline.py"
STREAMS = REPO / "models/demo/streams"
FILES = ["clean.npz", "noise.jsonl", "line_b_drift.npz"]


def sensei_binary() -> Path:
    if os.environ.get("SENSEI_BIN"):
        return Path(os.environ["SENSEI_BIN"])
    built = [p for p in (REPO / "target/release/sensei", REPO / "target/debug/sensei") if p.exists()]
    if not built:
        pytest.fail("no sensei binary: run `cargo build` (or set SENSEI_BIN)")
    return max(built, key=lambda p: p.stat().st_mtime)


def ort_library() -> Path:
    path = Path(os.environ.get("ORT_DYLIB_PATH", REPO / ".ort/libonnxruntime.so.1.32.0"))
    if not path.exists():
        pytest.fail(f"no ONNX Runtime library at {path}: run scripts/setup-onnxruntime.sh")
    return path


def config(state: Path, rate: float) -> str:
    models = REPO / "models/demo"
    return f"""state_dir = "{state}"
[onnxruntime]
library = "{ort_library()}"
[student]
path = "{models / 'student.onnx'}"
attention = "attention"
[teacher]
path = "{models / 'teacher.onnx'}"
attention = "attention"
[sampling]
rate = {rate}
seed = 1
max_per_minute = 100000000
queue = 100000
[segments]
keys = ["line"]

[detect]
# The peer runs the windowed rounds at a fixed family-wise level, the expert override; it does
# not spread the site-wide false-alarm budget.
family_alpha = 0.01
"""


@pytest.fixture(scope="module")
def inbox(tmp_path_factory) -> Path:
    """The demo streams, a second copy of one (a duplicate) and two bad files (quarantined)."""
    d = tmp_path_factory.mktemp("inbox")
    for name in FILES:
        shutil.copy(STREAMS / name, d / name)
    shutil.copy(STREAMS / "clean.npz", d / "x-clean-again.npz")
    x = np.zeros((3, 8, 8), dtype=np.float32)
    x[1, 2, 5] = np.nan
    np.savez(d / "x-nan.npz", x=x)
    (d / "x-short.jsonl").write_text(json.dumps({"inputs": {"x": [[0.0] * 8] * 7}}) + "\n")
    return d


def replay(tmp: Path, who: str, rate: float, paths, template: Path | None = None, expect: int = 0) -> Path:
    state = tmp / who
    cfg = tmp / f"{who}.toml"
    cfg.write_text(config(state, rate))
    if template is not None and not (state / "sensei.db").exists():
        state.mkdir(parents=True)
        with sqlite3.connect(template) as a, sqlite3.connect(state / "sensei.db") as b:
            a.backup(b)
    if who == "sensei":
        argv = [sensei_binary(), "--config", cfg, "replay", *paths]
    else:
        argv = [sys.executable, PEER, "--config", cfg, *paths]
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == expect, f"{who} failed:\n{result.stdout}\n{result.stderr}"
    return state / "sensei.db"


def rows(db: Path, sql: str):
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchall()


def close(a, b, rel=1e-6, abs_=1e-9):
    return a is None and b is None or (a is not None and b is not None and abs(a - b) <= abs_ + rel * abs(b))


def test_every_record_and_every_teacher_comparison_match_sensei(tmp_path, inbox):
    s = replay(tmp_path, "sensei", 1.0, [inbox])
    p = replay(tmp_path, "peer", 1.0, [inbox])

    ledger = "SELECT name, sha256, size, kind, status, records FROM files ORDER BY name"
    assert rows(p, ledger) == rows(s, ledger)
    assert {r[4] for r in rows(p, ledger)} == {"done", "duplicate", "quarantined"}

    q = "SELECT seq, record_id, segment, ts, label, prediction, sampled, confidence, entropy FROM records ORDER BY seq"
    sr, pr = rows(s, q), rows(p, q)
    assert len(sr) == 1350 and len(pr) == len(sr)
    assert [r[:7] for r in pr] == [r[:7] for r in sr]
    # Confidence and entropy are kept in millionths: a last-bit difference may round apart.
    assert all(close(a[7], b[7], abs_=1e-6) and close(a[8], b[8], abs_=1e-6) for a, b in zip(pr, sr))

    q = ("SELECT seq, record_id, student_prediction, teacher_prediction, disagreement, kl, total_variation, "
         "attention_kl, length(teacher_output), length(teacher_attention) FROM teacher_samples ORDER BY seq")
    st, pt = rows(s, q), rows(p, q)
    assert len(pt) == len(st) == 1350
    assert [r[:5] + r[8:] for r in pt] == [r[:5] + r[8:] for r in st]
    # The teacher's batches differ (sensei batches across files), so its float outputs may
    # differ in the last bits.
    assert all(close(a[k], b[k], rel=1e-5, abs_=1e-7) for a, b in zip(pt, st) for k in (5, 6, 7))
    disagreements = "SELECT sum(disagreement) FROM teacher_samples"
    assert rows(p, disagreements) == rows(s, disagreements)
    assert 0 < rows(s, disagreements)[0][0] < 1350

    q = "SELECT start, segment, records, teacher_samples, weight_sum, disagreement_wsum FROM windows ORDER BY start, segment"
    assert rows(p, q) == rows(s, q)

    # Replayed again, nothing is counted twice; only the copy under another name is noted as a
    # duplicate once more (each arrival of it is), in both.
    # sensei exits 65 (two files quarantined, nothing new committed); the peer has no such code.
    replay(tmp_path, "sensei", 1.0, [inbox], expect=65)
    replay(tmp_path, "peer", 1.0, [inbox])
    assert rows(p, ledger) == rows(s, ledger)
    assert [r[4] for r in rows(s, ledger)].count("duplicate") == 2 and len(rows(s, ledger)) == 7
    assert rows(p, "SELECT count(*) FROM records") == rows(s, "SELECT count(*) FROM records") == [(1350,)]


def test_the_teacher_samples_the_same_records(tmp_path, inbox):
    s = replay(tmp_path, "sensei", 0.1, [inbox / f for f in FILES])
    p = replay(tmp_path, "peer", 0.1, [inbox / f for f in FILES])
    q = "SELECT record_id, sampled FROM records ORDER BY seq"
    assert rows(p, q) == rows(s, q)
    sampled = sum(r[1] for r in rows(s, q))
    assert 50 < sampled < 300, sampled  # about 10% of 1350
    q = "SELECT seq, teacher_prediction, disagreement FROM teacher_samples ORDER BY seq"
    assert rows(p, q) == rows(s, q)


def test_detectors_run_on_the_active_baseline_and_survive_a_restart(tmp_path, inbox):
    template_dir = tmp_path / "template"
    (tmp_path / "template.toml").write_text(config(template_dir, 1.0))
    result = subprocess.run([sensei_binary(), "--config", tmp_path / "template.toml", "baseline",
                             REPO / "models/demo/lab.npz"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    template = template_dir / "sensei.db"

    s = replay(tmp_path, "sensei", 1.0, [inbox / f for f in FILES], template)
    # The peer in two processes: the second must continue the detectors and windows of the first.
    replay(tmp_path, "peer", 1.0, [inbox / FILES[0]], template)
    p = replay(tmp_path, "peer", 1.0, [inbox / f for f in FILES[1:]], template)

    q = "SELECT samples FROM detector_state WHERE signal = ? AND segment = ? AND detector = ?"
    with sqlite3.connect(p) as c:
        for signal in ("confidence", "disagreement", "kl", "attention_kl", "student_error", "teacher_error"):
            for segment in ("*", "line=A", "line=B"):
                n = c.execute(q, (signal, segment, "page_hinkley")).fetchone()
                assert n is not None and n[0] > 0, (signal, segment)
        peer_confidence = c.execute(q, ("confidence", "*", "page_hinkley")).fetchone()[0]
    with sqlite3.connect(s) as c:
        sensei_confidence = c.execute(q, ("confidence", "*", "cusum")).fetchone()[0]
    assert peer_confidence == sensei_confidence == 1350

    # Windowed tests: the same rounds over the same windows give the same Holm-adjusted p-values,
    # and so the same margins towards an alarm (the stored statistic).
    q = ("SELECT signal, segment, detector, samples, statistic, state FROM detector_state "
         "WHERE detector LIKE 'windowed:%' ORDER BY signal, segment")
    sw, pw = rows(s, q), rows(p, q)
    assert len(sw) == 3 * (1 + 1 + 8) and [r[:4] for r in pw] == [r[:4] for r in sw]
    assert all(close(a[4], b[4], rel=1e-6, abs_=1e-12) for a, b in zip(pw, sw)), list(zip(pw, sw))
    assert [r[5] for r in pw] == [r[5] for r in sw]
    q = ("SELECT signal, segment, detector, detected_at_record, p_value, effect_size FROM drift_events "
         "WHERE detector IN ('ks', 'chi_square', 'psi') ORDER BY id")
    se, pe = rows(s, q), rows(p, q)
    assert len(se) > 0 and [r[:4] for r in pe] == [r[:4] for r in se]
    assert all(close(a[k], b[k], rel=1e-6, abs_=1e-12) for a, b in zip(pe, se) for k in (4, 5))

    # Sequential detectors: River's Page-Hinkley is not sensei's CUSUM, but both first fire on
    # the noisy stream (records 451-900) for every signal over all segments.
    q = "SELECT signal, min(detected_at_record) FROM drift_events WHERE segment = '*' AND detector = ? GROUP BY signal"
    for db, detector in ((s, "cusum"), (s, "bernoulli_cusum"), (p, "page_hinkley")):
        for signal, first in rows(db, q.replace("?", f"'{detector}'")):
            assert 451 <= first <= 900, (detector, signal, first)
    fired = "SELECT DISTINCT signal FROM drift_events WHERE segment = '*' AND detector = 'page_hinkley'"
    assert {r[0] for r in rows(p, fired)} == {"confidence", "disagreement", "kl", "attention_kl",
                                              "student_error", "teacher_error"}
