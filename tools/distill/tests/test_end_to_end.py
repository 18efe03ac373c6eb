"""Tiny distil + re-distil, all in a temporary directory (models/demo is not touched)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import DISTILL
from sensei_distill import data, onnx_io, train
from sensei_distill.losses import LossWeights
from sensei_distill.model import EncoderClassifier, ModelConfig, param_count

DEMO = DISTILL.parent.parent / "models" / "demo"


def _snapshot():
    return {p: p.stat().st_mtime_ns for p in DEMO.rglob("*") if p.is_file()} if DEMO.exists() else {}


def _agreement(a, b):
    return float((a.argmax(1) == b.argmax(1)).mean())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    before = _snapshot()
    tmp = tmp_path_factory.mktemp("e2e")
    train.set_determinism(7)
    sp = data.load_splits()
    tr = sp["train"]
    teacher = EncoderClassifier(ModelConfig(dim=32, heads=2, layers=2, ffn=64))
    train.train_teacher(teacher, tr.x[:500], tr.y[:500], epochs=6, lr=3e-3, seed=7)
    student = EncoderClassifier(ModelConfig(dim=8, heads=2, layers=1, ffn=16))
    targets = train.teacher_targets(teacher, tr.x[:500], tr.y[:500])
    hist = train.distill(student, targets, LossWeights(), epochs=12, lr=1e-2, seed=8)
    onnx_io.export_onnx(teacher, tmp / "teacher.onnx", "teacher")
    onnx_io.export_onnx(student, tmp / "student.onnx", "student")
    rec = data.make_stream(data.STREAM_BY_NAME["gain_drift"], sp["field"], 3)
    data.write_jsonl(tmp / "gain_drift.jsonl", rec)
    yield {"tmp": tmp, "splits": sp, "teacher": teacher, "student": student, "hist": hist, "rec": rec}
    assert _snapshot() == before, "the end-to-end test must not write to models/demo"


def _run(script, *args):
    p = subprocess.run([sys.executable, str(DISTILL / script), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p


def test_distillation_learns(tiny):
    sp, teacher, student = tiny["splits"], tiny["teacher"], tiny["student"]
    assert tiny["hist"][-1] < tiny["hist"][0]
    assert param_count(student) * 4 <= param_count(teacher)
    t_acc = float((train.predict(teacher, sp["lab"].x).argmax(1) == sp["lab"].y).mean())
    agree = _agreement(train.predict(teacher, sp["lab"].x), train.predict(student, sp["lab"].x))
    assert t_acc > 0.5 and agree > 0.3  # far above chance (0.1) after a few epochs


def test_make_dataset_and_redistill_twice(tiny):
    tmp, rec = tiny["tmp"], tiny["rec"]
    ds = tmp / "ds"
    _run("make_dataset.py", "--stream", tmp / "gain_drift.jsonl", "--from-index", data.DRIFT_START, "--teacher",
         tmp / "teacher.onnx", "--student", tmp / "student.onnx", "--out", ds, "--policy", "uncertainty",
         "--sample-rate", 0.5)
    m = json.loads((ds / "manifest.json").read_text())
    assert 0 < m["count"] <= len(rec) - data.DRIFT_START
    assert all(i >= f"gain_drift-{data.DRIFT_START:06d}" for i in m["record_ids"])

    reports = []
    student = tmp / "student.onnx"
    for round_ in (1, 2):  # the second round starts from the first round's ONNX output
        out, report = tmp / f"student.r{round_}.onnx", tmp / f"r{round_}.json"
        _run("redistill.py", "--dataset", ds, "--teacher", tmp / "teacher.onnx", "--student", student, "--out", out,
             "--epochs", 6, "--lr", 5e-3, "--replay", "none", "--report", report)
        reports.append(json.loads(report.read_text()))
        student = out
    assert reports[0]["agreement_after"] > reports[0]["agreement_before"]
    assert reports[1]["agreement_before"] == pytest.approx(reports[0]["agreement_after"], abs=1e-6)
    assert all(r["max_abs_diff"] < 1e-3 for r in reports)

    # the re-distilled ONNX keeps the IO contract and agrees with the teacher more on the drifted records
    x = rec.x[data.DRIFT_START:]
    t = onnx_io.ort_run(onnx_io.ort_session(tmp / "teacher.onnx"), x)["logits"]
    old = onnx_io.ort_run(onnx_io.ort_session(tmp / "student.onnx"), x)
    new = onnx_io.ort_run(onnx_io.ort_session(student), x)
    assert new["logits"].shape == old["logits"].shape and new["attention"].shape == old["attention"].shape
    assert _agreement(t, new["logits"]) > _agreement(t, old["logits"])
    meta = onnx_io.read_metadata(student)
    assert meta["sensei.distill.parent_sha256"] != meta.get("sensei.distill.dataset_count")
    assert onnx_io.load_torch_from_onnx(student).cfg == tiny["student"].cfg


def test_redistill_replay_npz(tiny):
    tmp = tiny["tmp"]
    ds = tmp / "ds"
    if not ds.exists():
        pytest.skip("needs the dataset of the previous test")
    lab = data.make_records("lab", "2026-03-01", tiny["splits"]["lab"], 1)
    data.write_npz(tmp / "lab.npz", lab)
    p = _run("redistill.py", "--dataset", ds, "--teacher", tmp / "teacher.onnx", "--student", tmp / "student.onnx",
             "--out", tmp / "replayed.onnx", "--epochs", 2, "--replay", tmp / "lab.npz")
    assert f"replay {len(lab)} records" in p.stdout
    assert (tmp / "replayed.onnx").stat().st_size > 0
