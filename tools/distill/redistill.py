#!/usr/bin/env python3
"""Re-distil the student on a re-distillation dataset.

    python3 tools/distill/redistill.py --dataset DIR --teacher T.onnx --student S.onnx --out NEW.onnx

1. Reads and validates DIR (manifest.json + data.safetensors, see
   docs/dataset-format.md); a malformed dataset exits with status 2.
2. Recovers the student's PyTorch weights from the ONNX file itself: the
   architecture is in the ONNX metadata (`sensei.distill.config`), every
   weight is an initializer named after its parameter.  No checkpoint is
   needed, so a student written by an earlier redistill works the same way.
3. Fine-tunes with the distillation loss of sensei_distill/losses.py:
       L = b_at L_AT + b_vr L_VR + g tau^2 KL(teacher || student logits) + a CE
   against the dataset's teacher logits and attention, each record weighted by
   its `weight`.  L_VR needs the teacher's values, which are not an ONNX
   output: they are recomputed from the teacher's weights (recovered the same
   way as the student's); if that is impossible the term is dropped.  CE uses
   the dataset's known labels only (-1 = unknown).
4. Replay: fine-tuning on field data alone makes the student forget the clean
   inputs, so each batch mixes in a share (--replay-share, default 0.5) of
   replay records distilled from the teacher.  --replay auto uses the demo's
   training split (scikit-learn digits, the same seeded split) when the
   student's input is 8x8 with 10 classes; --replay FILE.npz uses the array
   `x` (and `label`, if present) of that file; --replay none disables it.
5. Exports NEW.onnx with the same IO contract and checks it against PyTorch
   with ONNX Runtime.

Exit status: 0 ok, 2 malformed dataset, 3 unusable model, 4 dataset and
model do not fit together.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sensei_distill import data, dataset, onnx_io, train  # noqa: E402
from sensei_distill.losses import LossWeights  # noqa: E402


def fail(code: int, msg: str):
    print(f"redistill: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


def _agreement(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    return float(((a.argmax(1) == b.argmax(1)) * w).sum() / w.sum())


def redistill(ds_dir: Path, teacher_path: Path, student_path: Path, out: Path, *, epochs: int = 40, lr: float = 1e-3,
              batch: int = 64, replay: str = "auto", replay_share: float = 0.5, seed: int = 0,
              lw: LossWeights = LossWeights(), log=print) -> dict:
    train.set_determinism(seed)
    try:
        ds = dataset.read_dataset(ds_dir)
    except dataset.DatasetError as e:
        fail(2, f"malformed dataset: {e}")
    try:
        student = onnx_io.load_torch_from_onnx(student_path)
    except onnx_io.OnnxWeightsError as e:
        fail(3, f"cannot recover the student's weights: {e}")
    cfg = student.cfg
    if ds.manifest["inputs"] != ["x"]:
        fail(4, f"dataset inputs {ds.manifest['inputs']} do not match the student's single input 'x'")
    x = ds.inputs["x"]
    if tuple(x.shape[1:]) != (cfg.seq_len, cfg.channels):
        fail(4, f"dataset inputs.x has shape {list(x.shape)}, the student expects [N, {cfg.seq_len}, {cfg.channels}]")
    if ds.teacher_logits.shape[1] != cfg.classes:
        fail(4, f"teacher.logits has {ds.teacher_logits.shape[1]} classes, the student {cfg.classes}")
    want_sha = ds.manifest.get("models", {}).get("student", {}).get("sha256")
    if want_sha and want_sha != dataset.sha256_file(student_path):
        log(f"redistill: warning: {student_path} is not the student the dataset was exported with (sha256 differs)")

    try:
        teacher = onnx_io.load_torch_from_onnx(teacher_path)
    except onnx_io.OnnxWeightsError as e:
        log(f"redistill: note: teacher weights not recoverable ({e}); value-relation term dropped")
        teacher = None
    if teacher is not None and teacher.cfg.heads != cfg.heads:
        log("redistill: note: teacher and student head counts differ; attention and value-relation terms dropped")
        teacher = None

    att = ds.teacher_attention
    if att is not None and tuple(att.shape[1:]) != (cfg.heads, cfg.seq_len, cfg.seq_len):
        log(f"redistill: note: teacher.attention {list(att.shape)} does not fit the student; attention term dropped")
        att = None
    if att is None and teacher is not None:
        att = train.teacher_targets(teacher, x).attention
    values = train.teacher_targets(teacher, x).values if teacher is not None else None
    main = train.Targets(x, ds.teacher_logits, att, values, ds.label, ds.weight)

    rep = None
    if replay == "auto":
        if (cfg.seq_len, cfg.channels, cfg.classes) == (8, 8, 10):
            tr = data.load_splits()["train"]
            rep_x, rep_y = tr.x, tr.y
        else:
            log("redistill: note: no default replay data for this input shape; fine-tuning without replay")
            rep_x = None
    elif replay == "none":
        rep_x = None
    else:
        try:
            r = data.read_npz(Path(replay))
        except (OSError, KeyError, ValueError) as e:
            fail(2, f"cannot read replay file {replay}: {e}")
        rep_x, rep_y = r.x, r.label
    if rep_x is not None:
        if teacher is not None:
            rep = train.teacher_targets(teacher, rep_x, rep_y)
        else:
            t_out = onnx_io.ort_run(onnx_io.ort_session(teacher_path), rep_x)
            a = t_out.get("attention")
            fits = a is not None and a.shape[1:] == (cfg.heads, cfg.seq_len, cfg.seq_len)
            a = torch.from_numpy(a) if fits else None
            rep = train.Targets(torch.from_numpy(rep_x), torch.from_numpy(t_out["logits"]), a, None,
                                torch.as_tensor(rep_y), torch.ones(len(rep_x)))

    w = ds.weight.numpy()
    before = _agreement(ds.teacher_logits.numpy(), train.predict(student, x.numpy()), w)
    log(f"redistill: {len(ds)} records, replay {0 if rep is None else len(rep)} records (share {replay_share if rep else 0}),"
        f" weighted agreement with teacher before: {before:.4f}")
    hist = train.distill(student, main, lw, epochs=epochs, lr=lr, batch=batch, seed=seed, replay=rep,
                         replay_share=replay_share if rep is not None else 0.0, log=None, tag="redistill")
    after = _agreement(ds.teacher_logits.numpy(), train.predict(student, x.numpy()), w)
    log(f"redistill: loss {hist[0]:.4f} -> {hist[-1]:.4f}; weighted agreement on the dataset after: {after:.4f}")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx_io.export_onnx(student, out, "student", {
        "sensei.distill.parent_sha256": dataset.sha256_file(student_path),
        "sensei.distill.dataset_created": str(ds.manifest.get("created", "")),
        "sensei.distill.dataset_count": str(len(ds)),
    })
    probe = x[: min(len(x), 64)].numpy()
    ort_out = onnx_io.ort_run(onnx_io.ort_session(out), probe)
    with torch.no_grad():
        pt_logits, pt_att = student(torch.from_numpy(probe))
    diff = max(float(np.abs(ort_out["logits"] - pt_logits.numpy()).max()),
               float(np.abs(ort_out["attention"] - pt_att.numpy()).max()))
    if diff > 1e-3:
        fail(3, f"exported model differs from PyTorch by {diff}")
    log(f"redistill: wrote {out} (ONNX Runtime vs PyTorch max abs diff {diff:.2e})")
    return {"count": len(ds), "agreement_before": before, "agreement_after": after,
            "loss_first": hist[0], "loss_last": hist[-1], "max_abs_diff": diff, "out": str(out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, type=Path, help="dataset directory (manifest.json, data.safetensors)")
    ap.add_argument("--teacher", required=True, type=Path, help="teacher ONNX")
    ap.add_argument("--student", required=True, type=Path, help="current student ONNX (weights are recovered from it)")
    ap.add_argument("--out", required=True, type=Path, help="where to write the new student ONNX")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--replay", default="auto", help="auto | none | FILE.npz (default auto)")
    ap.add_argument("--replay-share", type=float, default=0.5, help="share of each batch taken from replay data")
    ap.add_argument("--temperature", type=float, default=LossWeights.temperature)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", type=Path, help="also write a JSON summary here")
    a = ap.parse_args(argv)
    if not 0.0 <= a.replay_share < 1.0:
        ap.error("--replay-share must be in [0, 1)")
    for p, what in ((a.teacher, "teacher"), (a.student, "student")):
        if not p.is_file():
            fail(3, f"{what} model {p} does not exist")
    lw = LossWeights(temperature=a.temperature)
    summary = redistill(a.dataset, a.teacher, a.student, a.out, epochs=a.epochs, lr=a.lr, batch=a.batch,
                        replay=a.replay, replay_share=a.replay_share, seed=a.seed, lw=lw)
    if a.report:
        a.report.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
