"""Re-distillation dataset: a directory with manifest.json and data.safetensors.

See docs/dataset-format.md for the format.  `read_dataset` validates
everything it reads and raises DatasetError with a message that names the
file and the field at fault.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
DATA = "data.safetensors"


class DatasetError(Exception):
    pass


@dataclasses.dataclass
class Dataset:
    manifest: dict
    inputs: dict[str, torch.Tensor]  # name -> f32 [N, ...]
    teacher_logits: torch.Tensor  # f32 [N, K]
    teacher_attention: torch.Tensor | None  # f32 [N, H, T, T]
    student_logits: torch.Tensor | None  # f32 [N, K]
    weight: torch.Tensor  # f32 [N]
    label: torch.Tensor  # i64 [N], -1 unknown

    def __len__(self) -> int:
        return int(self.weight.shape[0])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_dataset(
    out_dir: Path,
    *,
    inputs: dict[str, np.ndarray],
    teacher_logits: np.ndarray,
    teacher_attention: np.ndarray | None,
    student_logits: np.ndarray | None,
    weight: np.ndarray,
    label: np.ndarray,
    record_ids: list[str],
    time_range: tuple[str, str],
    teacher_path: Path,
    student_path: Path,
    reason: str,
    created: str | None = None,
) -> Path:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(record_ids)
    tensors = {f"inputs.{k}": torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in inputs.items()}
    tensors["teacher.logits"] = torch.from_numpy(np.ascontiguousarray(teacher_logits, dtype=np.float32))
    if teacher_attention is not None:
        tensors["teacher.attention"] = torch.from_numpy(np.ascontiguousarray(teacher_attention, dtype=np.float32))
    if student_logits is not None:
        tensors["student.logits"] = torch.from_numpy(np.ascontiguousarray(student_logits, dtype=np.float32))
    tensors["weight"] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
    tensors["label"] = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
    for k, t in tensors.items():
        if t.shape[0] != n:
            raise ValueError(f"{k} has {t.shape[0]} rows, expected {n}")
    save_file(tensors, str(out_dir / DATA))
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created": created or now_rfc3339(),
        "inputs": list(inputs),
        "models": {
            "teacher": {"path": str(teacher_path), "sha256": sha256_file(teacher_path)},
            "student": {"path": str(student_path), "sha256": sha256_file(student_path)},
        },
        "record_ids": [str(r) for r in record_ids],
        "time_range": {"from": time_range[0], "to": time_range[1]},
        "trigger": {"reason": reason},
        "count": n,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise DatasetError(msg)


def _check_rfc3339(value, where: str) -> None:
    _need(isinstance(value, str), f"{where} must be an RFC 3339 string, got {value!r}")
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise DatasetError(f"{where} is not an RFC 3339 timestamp: {value!r}") from None


def read_dataset(path: Path) -> Dataset:
    """Load and validate a re-distillation dataset directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    _need(path.is_dir(), f"{path}: not a directory")
    mpath, dpath = path / MANIFEST, path / DATA
    _need(mpath.is_file(), f"{mpath}: missing")
    _need(dpath.is_file(), f"{dpath}: missing")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{mpath}: not valid JSON: {e}") from None
    _need(isinstance(manifest, dict), f"{mpath}: top level must be an object")
    for key in ("schema_version", "created", "inputs", "models", "record_ids", "time_range", "trigger", "count"):
        _need(key in manifest, f"{mpath}: missing key {key!r}")
    _need(manifest["schema_version"] == SCHEMA_VERSION,
          f"{mpath}: schema_version {manifest['schema_version']!r} is not supported (expected {SCHEMA_VERSION})")
    _check_rfc3339(manifest["created"], f"{mpath}: created")
    models = manifest["models"]
    _need(isinstance(models, dict), f"{mpath}: models must be an object")
    for role in ("teacher", "student"):
        m = models.get(role)
        _need(isinstance(m, dict) and isinstance(m.get("path"), str) and isinstance(m.get("sha256"), str),
              f"{mpath}: models.{role} must be an object with string 'path' and 'sha256'")
    trig = manifest["trigger"]
    _need(isinstance(trig, dict) and isinstance(trig.get("reason"), str), f"{mpath}: trigger.reason must be a string")
    inputs = manifest["inputs"]
    _need(isinstance(inputs, list) and inputs and all(isinstance(s, str) for s in inputs),
          f"{mpath}: inputs must be a non-empty list of input names")
    n = manifest["count"]
    _need(isinstance(n, int) and not isinstance(n, bool) and n > 0, f"{mpath}: count must be a positive integer, got {n!r}")
    ids = manifest["record_ids"]
    _need(isinstance(ids, list) and len(ids) == n, f"{mpath}: record_ids must be a list of count={n} ids")
    tr = manifest["time_range"]
    _need(isinstance(tr, dict) and "from" in tr and "to" in tr, f"{mpath}: time_range must have 'from' and 'to'")
    _check_rfc3339(tr["from"], f"{mpath}: time_range.from")
    _check_rfc3339(tr["to"], f"{mpath}: time_range.to")
    try:
        t = load_file(str(dpath))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DatasetError(f"{dpath}: cannot read safetensors: {e}") from None

    def tensor(name: str, dtype: torch.dtype, ndim: int | None, required: bool = True):
        if name not in t:
            _need(not required, f"{dpath}: missing tensor {name!r} (has: {sorted(t)})")
            return None
        v = t[name]
        _need(v.dtype == dtype, f"{dpath}: tensor {name!r} has dtype {v.dtype}, expected {dtype}")
        if ndim is not None:
            _need(v.dim() == ndim, f"{dpath}: tensor {name!r} has shape {list(v.shape)}, expected {ndim} dimensions")
        _need(v.shape[0] == n, f"{dpath}: tensor {name!r} has {v.shape[0]} rows, manifest count is {n}")
        if v.dtype.is_floating_point:
            _need(bool(torch.isfinite(v).all()), f"{dpath}: tensor {name!r} contains NaN or infinite values")
        return v

    xs = {name: tensor(f"inputs.{name}", torch.float32, None) for name in inputs}
    tl = tensor("teacher.logits", torch.float32, 2)
    ta = tensor("teacher.attention", torch.float32, 4, required=False)
    if ta is not None:
        _need(ta.shape[2] == ta.shape[3], f"{dpath}: teacher.attention must be [N, H, T, T], got {list(ta.shape)}")
        rows = ta.sum(-1)
        _need(bool(((rows - 1).abs() < 1e-3).all()) and bool((ta >= 0).all()),
              f"{dpath}: teacher.attention rows must be probability distributions (non-negative, sum 1)")
    sl = tensor("student.logits", torch.float32, 2, required=False)
    if sl is not None:
        _need(sl.shape[1] == tl.shape[1], f"{dpath}: student.logits has {sl.shape[1]} classes, teacher.logits {tl.shape[1]}")
    w = tensor("weight", torch.float32, 1)
    _need(bool((w >= 0).all()) and float(w.sum()) > 0, f"{dpath}: weight must be non-negative and not all zero")
    lab = tensor("label", torch.int64, 1)
    k = tl.shape[1]
    _need(bool(((lab >= -1) & (lab < k)).all()), f"{dpath}: label values must be -1 (unknown) or in [0, {k})")
    return Dataset(manifest, xs, tl, ta, sl, w, lab)
