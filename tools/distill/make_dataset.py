#!/usr/bin/env python3
"""Write a re-distillation dataset from a field stream.

    python3 tools/distill/make_dataset.py --stream models/demo/streams/gain_drift.jsonl \
        --from-index 200 --teacher models/demo/teacher.onnx --student models/demo/student.onnx \
        --out /tmp/gain_drift.dataset

Takes the stream's records from --from-index (or --from-ts) on, samples them
for the teacher, runs teacher and student with ONNX Runtime, and writes
manifest.json + data.safetensors (docs/dataset-format.md).

Sampling policies (p_i = probability that record i is sent to the teacher;
its weight is 1 / p_i so that weighted means stay unbiased):
  uniform      p_i = r
  uncertainty  p_i = r + (1 - r) * (1 - c_i), c_i the student's top-1 probability
Labels are written only with --with-labels (field labels are usually
unknown; -1 marks unknown).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sensei_distill import data, dataset, onnx_io  # noqa: E402


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def build(stream: Path, teacher: Path, student: Path, out: Path, *, from_index: int = 0, from_ts: str | None = None,
          sample_rate: float = 1.0, policy: str = "uniform", with_labels: bool = False, seed: int = 0,
          reason: str | None = None) -> dict:
    rec = data.read_records(stream)
    keep = np.arange(len(rec)) >= from_index
    if from_ts:
        keep &= rec.ts >= from_ts
    rec = rec.take(np.nonzero(keep)[0])
    if len(rec) == 0:
        raise SystemExit(f"make_dataset: no records in {stream} after the given start")
    s_out = onnx_io.ort_run(onnx_io.ort_session(student), rec.x)
    conf = softmax(s_out["logits"]).max(axis=1)
    if policy == "uniform":
        p = np.full(len(rec), sample_rate)
    elif policy == "uncertainty":
        p = sample_rate + (1.0 - sample_rate) * (1.0 - conf)
    else:
        raise SystemExit(f"make_dataset: unknown policy {policy!r}")
    rng = np.random.default_rng(seed)
    chosen = np.nonzero(rng.random(len(rec)) < p)[0]
    if len(chosen) == 0:
        raise SystemExit("make_dataset: the sampler chose no records; raise --sample-rate")
    rec, p = rec.take(chosen), p[chosen]
    t_out = onnx_io.ort_run(onnx_io.ort_session(teacher), rec.x)
    label = rec.label if with_labels else np.full(len(rec), -1, np.int64)
    ts = sorted(t for t in rec.ts if t)
    dataset.write_dataset(
        out,
        inputs={"x": rec.x},
        teacher_logits=t_out["logits"],
        teacher_attention=t_out.get("attention"),
        student_logits=s_out["logits"][chosen],
        weight=(1.0 / p).astype(np.float32),
        label=label,
        record_ids=[str(i) for i in rec.id],
        time_range=(ts[0], ts[-1]) if ts else ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"),
        teacher_path=teacher,
        student_path=student,
        reason=reason or f"{Path(stream).name}: records from index {from_index}",
    )
    return {"count": len(rec), "records_seen": int(keep.sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stream", required=True, type=Path, help="stream file (.jsonl or .npz)")
    ap.add_argument("--teacher", required=True, type=Path)
    ap.add_argument("--student", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    ap.add_argument("--from-index", type=int, default=0, help="first record index to use (default 0)")
    ap.add_argument("--from-ts", help="use only records with ts >= this RFC 3339 time")
    ap.add_argument("--sample-rate", type=float, default=1.0, help="base teacher sampling rate r in (0, 1]")
    ap.add_argument("--policy", choices=["uniform", "uncertainty"], default="uniform")
    ap.add_argument("--with-labels", action="store_true", help="copy the records' labels (default: -1, unknown)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reason", help="trigger reason written to the manifest")
    a = ap.parse_args(argv)
    if not 0.0 < a.sample_rate <= 1.0:
        ap.error("--sample-rate must be in (0, 1]")
    info = build(a.stream, a.teacher, a.student, a.out, from_index=a.from_index, from_ts=a.from_ts,
                 sample_rate=a.sample_rate, policy=a.policy, with_labels=a.with_labels, seed=a.seed, reason=a.reason)
    print(f"make_dataset: wrote {info['count']} of {info['records_seen']} records to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
