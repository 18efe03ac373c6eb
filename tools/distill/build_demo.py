#!/usr/bin/env python3
"""Regenerate the demo models, data and model card in models/demo/.

    python3 tools/distill/build_demo.py

Trains the teacher, distils the student, exports both to ONNX, writes the lab
reference split and the field streams, measures accuracy, agreement,
latency and per-stream disagreement, re-distils the student on every drifted
stream, and writes MODEL_CARD.md and metrics.json with the measured numbers.
Seeded and single-threaded: models and data come out the same on every run
(latencies are measured, so they vary).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sensei_distill import data, onnx_io, train  # noqa: E402
from sensei_distill.losses import LossWeights  # noqa: E402
from sensei_distill.model import EncoderClassifier, ModelConfig, param_count  # noqa: E402

SEED = 1234
TEACHER = ModelConfig(dim=96, heads=4, layers=4, ffn=192)
STUDENT = ModelConfig(dim=32, heads=4, layers=2, ffn=64)
TINY_TEACHER = ModelConfig(dim=16, heads=2, layers=2, ffn=32)
TINY_STUDENT = ModelConfig(dim=8, heads=2, layers=1, ffn=16)
LOSS = LossWeights(attention=1.0, value_relation=1.0, kd=1.0, ce=0.5, temperature=2.0)
REDISTILL_RATE = 0.5  # base teacher sampling rate for the redistill datasets (uncertainty policy)


def log(msg: str) -> None:
    print(msg, flush=True)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def disagreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) != b.argmax(1)).mean()) if len(a) else float("nan")


def latency_ms(path: Path, batch: int, threads: int | None, reps: int, warmup: int) -> float:
    sess = onnx_io.ort_session(path, threads)
    x = np.random.default_rng(0).random((batch, 8, 8), dtype=np.float32)
    for _ in range(warmup):
        sess.run(None, {"x": x})
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, {"x": x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def full_strength(spec: data.StreamSpec, rec: data.Records) -> np.ndarray:
    """The stream's corruption at full strength applied to the given records."""
    rng = np.random.default_rng(data.stream_seed(spec.name) + 99)
    return data.corrupt(spec.name, rec.x, np.ones(len(rec)), rec.line, rng)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE.parent.parent / "models" / "demo")
    ap.add_argument("--teacher-epochs", type=int, default=60)
    ap.add_argument("--student-epochs", type=int, default=80)
    ap.add_argument("--redistill-epochs", type=int, default=40)
    ap.add_argument("--latency-reps", type=int, default=500)
    ap.add_argument("--tiny", action="store_true", help="tiny models (for tests)")
    ap.add_argument("--streams", nargs="*", help="redistill only these drifted streams (default: all)")
    a = ap.parse_args(argv)
    t_start = time.time()
    out: Path = a.out
    (out / "streams").mkdir(parents=True, exist_ok=True)
    train.set_determinism(SEED)
    splits = data.load_splits()
    tr, lab, field = splits["train"], splits["lab"], splits["field"]
    tcfg, scfg = (TINY_TEACHER, TINY_STUDENT) if a.tiny else (TEACHER, STUDENT)

    # ---- teacher
    torch.manual_seed(SEED)
    teacher = EncoderClassifier(tcfg)
    t0 = time.time()
    train.train_teacher(teacher, tr.x, tr.y, epochs=a.teacher_epochs, lr=2e-3, seed=SEED, log=log)
    t_teacher = time.time() - t0

    # ---- student
    torch.manual_seed(SEED + 1)
    student = EncoderClassifier(scfg)
    targets = train.teacher_targets(teacher, tr.x, tr.y)
    t0 = time.time()
    train.distill(student, targets, LOSS, epochs=a.student_epochs, lr=3e-3, seed=SEED + 1, log=log)
    t_student = time.time() - t0

    # ---- export and verify
    tpath, spath = out / "teacher.onnx", out / "student.onnx"
    onnx_io.export_onnx(teacher, tpath, "teacher", {"sensei.distill.dataset": "sklearn-digits-8x8"})
    onnx_io.export_onnx(student, spath, "student", {"sensei.distill.dataset": "sklearn-digits-8x8"})
    probe = np.concatenate([lab.x, field.x])
    diffs = {}
    for name, model, path in (("teacher", teacher, tpath), ("student", student, spath)):
        ort_out = onnx_io.ort_run(onnx_io.ort_session(path), probe)
        with torch.no_grad():
            lg, at = model(torch.from_numpy(probe))
        diffs[name] = {"logits": float(np.abs(ort_out["logits"] - lg.numpy()).max()),
                       "attention": float(np.abs(ort_out["attention"] - at.numpy()).max())}
    log(f"ONNX Runtime vs PyTorch max abs diff: {diffs}")
    t_sess, s_sess = onnx_io.ort_session(tpath), onnx_io.ort_session(spath)

    def both(x):
        return onnx_io.ort_run(t_sess, x)["logits"], onnx_io.ort_run(s_sess, x)["logits"]

    # ---- lab reference split
    lab_rec = data.make_records("lab", "2026-03-01", lab, data.SPLIT_SEED + 50)
    data.write_jsonl(out / "lab.jsonl", lab_rec)
    data.write_npz(out / "lab.npz", lab_rec)

    metrics: dict = {"params": {"teacher": param_count(teacher), "student": param_count(student)},
                     "config": {"teacher": json.loads(tcfg.to_json()), "student": json.loads(scfg.to_json())},
                     "loss": LOSS.__dict__, "split_sizes": {k: len(v.y) for k, v in splits.items()},
                     "train_seconds": {"teacher": round(t_teacher, 1), "student": round(t_student, 1)},
                     "epochs": {"teacher": a.teacher_epochs, "student": a.student_epochs},
                     "onnx_max_abs_diff": diffs}
    acc = {}
    for split_name, sp in (("train", tr), ("lab", lab), ("field", field)):
        tl, sl = both(sp.x)
        acc[split_name] = {"teacher": accuracy(tl, sp.y), "student": accuracy(sl, sp.y),
                           "agreement": 1 - disagreement(tl, sl)}
    metrics["accuracy"] = acc
    log(f"accuracy: {acc}")

    # ---- streams
    streams = {}
    stream_rec = {}
    for spec in data.STREAMS:
        rec = data.make_stream(spec, field, data.stream_seed(spec.name))
        stream_rec[spec.name] = rec
        base = out / "streams" / spec.name
        data.write_jsonl(base.with_suffix(".jsonl"), rec)
        data.write_npz(base.with_suffix(".npz"), rec)
        data.write_labels(Path(str(base) + ".labels.jsonl"), rec)
        tl, sl = both(rec.x)
        start = spec.drift_start if spec.drift_start is not None else data.DRIFT_START
        full = start + data.RAMP_LEN
        pre, post, late = slice(0, start), slice(start, None), slice(full, None)
        m = {"description": spec.description, "records": len(rec), "drift_start": spec.drift_start,
             "full_strength_from": full if spec.drift_start is not None else None,
             "first_ts": str(rec.ts[0]), "last_ts": str(rec.ts[-1]),
             "disagreement": {"before": disagreement(tl[pre], sl[pre]), "after": disagreement(tl[post], sl[post]),
                              "full_strength": disagreement(tl[late], sl[late])},
             "teacher_accuracy": {"before": accuracy(tl[pre], rec.label[pre]), "full_strength": accuracy(tl[late], rec.label[late])},
             "student_accuracy": {"before": accuracy(sl[pre], rec.label[pre]), "full_strength": accuracy(sl[late], rec.label[late])}}
        if spec.name == "line_b_drift":
            for line in ("A", "B"):
                sel = np.nonzero(rec.line[late] == line)[0] + full
                m[f"disagreement_full_strength_line_{line}"] = disagreement(tl[sel], sl[sel])
        streams[spec.name] = m
        log(f"stream {spec.name}: disagreement before {m['disagreement']['before']:.3f} "
            f"after {m['disagreement']['after']:.3f} full {m['disagreement']['full_strength']:.3f}")
    metrics["streams"] = streams

    # ---- latency
    lat = {}
    for threads_name, threads in (("1_thread", 1), ("default_threads", None)):
        for batch in (32, 1):
            key = f"{threads_name}_batch_{batch}"
            lat[key] = {m: latency_ms(p, batch, threads, a.latency_reps, max(20, a.latency_reps // 10))
                        for m, p in (("teacher", tpath), ("student", spath))}
            lat[key]["speedup"] = lat[key]["teacher"] / lat[key]["student"]
            log(f"latency {key}: {lat[key]}")
    metrics["latency_ms_median"] = lat

    # ---- redistill on every drifted stream
    red = {}
    names = a.streams if a.streams is not None else [s.name for s in data.STREAMS if s.drift_start is not None]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            spec = data.STREAM_BY_NAME[name]
            rec = stream_rec[name]
            ds_dir, new = Path(tmp) / f"{name}.dataset", Path(tmp) / f"{name}.student.onnx"
            report = Path(tmp) / f"{name}.json"
            env = dict(os.environ, PYTHONHASHSEED="0")
            subprocess.run([sys.executable, str(HERE / "make_dataset.py"), "--stream", str(out / "streams" / f"{name}.jsonl"),
                            "--from-index", str(spec.drift_start), "--teacher", str(tpath), "--student", str(spath),
                            "--out", str(ds_dir), "--policy", "uncertainty", "--sample-rate", str(REDISTILL_RATE),
                            "--seed", str(SEED), "--reason", f"demo: {name} drift"], check=True, env=env)
            subprocess.run([sys.executable, str(HERE / "redistill.py"), "--dataset", str(ds_dir), "--teacher", str(tpath),
                            "--student", str(spath), "--out", str(new), "--epochs", str(a.redistill_epochs),
                            "--seed", str(SEED), "--report", str(report)], check=True, env=env)
            rep = json.loads(report.read_text())
            n_sess = onnx_io.ort_session(new)
            start = spec.drift_start
            late = slice(start + data.RAMP_LEN, None)
            held = rec.take(np.arange(start))  # never in the dataset, in any form
            held_x = full_strength(spec, held)
            tl_late = onnx_io.ort_run(t_sess, rec.x[late])["logits"]
            tl_held = onnx_io.ort_run(t_sess, held_x)["logits"]
            tl_field = onnx_io.ort_run(t_sess, field.x)["logits"]
            r = {"dataset_records": rep["count"]}
            for tag, sess in (("old", s_sess), ("new", n_sess)):
                r[tag] = {
                    "disagreement_stream_full_strength": disagreement(tl_late, onnx_io.ort_run(sess, rec.x[late])["logits"]),
                    "disagreement_heldout_drifted": disagreement(tl_held, onnx_io.ort_run(sess, held_x)["logits"]),
                    "accuracy_heldout_drifted": accuracy(onnx_io.ort_run(sess, held_x)["logits"], held.label),
                    "accuracy_field_clean": accuracy(onnx_io.ort_run(sess, field.x)["logits"], field.y),
                    "agreement_field_clean": 1 - disagreement(tl_field, onnx_io.ort_run(sess, field.x)["logits"]),
                }
            r["teacher_accuracy_heldout_drifted"] = accuracy(tl_held, held.label)
            red[name] = r
            log(f"redistill {name}: {r}")
    metrics["redistill"] = red

    # ---- sizes and card
    sizes = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name not in ("MODEL_CARD.md", "metrics.json"):
            sizes[str(p.relative_to(out))] = p.stat().st_size
    metrics["file_sizes"] = sizes
    metrics["build_seconds"] = round(time.time() - t_start, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    from card import render_card

    (out / "MODEL_CARD.md").write_text(render_card(metrics), encoding="utf-8")
    log(f"done in {metrics['build_seconds']} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
