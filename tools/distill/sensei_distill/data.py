"""The demo data: scikit-learn's bundled digits read as an 8x8 sensor array.

Each 8x8 image is a sequence of T=8 rows (time steps) of C=8 channels,
scaled to [0, 1] by dividing by 16.  The split is fixed and seeded:
train (training the teacher and distilling the student), lab (the reference
set for `sensei baseline`) and field (the source of the demo streams).

Field streams start clean and drift from a documented record index; this
module also writes and reads the JSON Lines and NPZ record files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np

SPLIT_SEED = 20260301
FIELD_SIZE = 450
LAB_SIZE = 270
DECIMALS = 4


@dataclasses.dataclass
class Split:
    x: np.ndarray  # float32 [N, 8, 8]
    y: np.ndarray  # int64 [N]


def load_splits() -> dict[str, Split]:
    """train / lab / field, stratified by class, seeded (about 60 / 15 / 25 %)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = quantize(digits.images.astype(np.float32) / 16.0)
    y = digits.target.astype(np.int64)
    x_rest, x_field, y_rest, y_field = train_test_split(
        x, y, test_size=FIELD_SIZE, stratify=y, random_state=SPLIT_SEED
    )
    x_train, x_lab, y_train, y_lab = train_test_split(
        x_rest, y_rest, test_size=LAB_SIZE, stratify=y_rest, random_state=SPLIT_SEED + 1
    )
    return {
        "train": Split(x_train, y_train),
        "lab": Split(x_lab, y_lab),
        "field": Split(x_field, y_field),
    }


def quantize(x: np.ndarray) -> np.ndarray:
    """Round to the precision written to the record files, as float32."""
    return np.round(np.asarray(x, dtype=np.float64), DECIMALS).astype(np.float32)


# ---------------------------------------------------------------- streams

STREAM_LEN = FIELD_SIZE
DRIFT_START = 200
RAMP_LEN = 150  # full strength from record DRIFT_START + RAMP_LEN on
DEAD_CHANNEL = 4


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    name: str
    description: str
    drift_start: int | None
    day: str  # date of the stream's first record


STREAMS = [
    StreamSpec("clean", "no drift", None, "2026-03-02"),
    StreamSpec("gain_drift", "sensor gain falls linearly from 1.0 to 0.25 (x * g)", DRIFT_START, "2026-03-03"),
    StreamSpec("offset_drift", "baseline offset rises linearly from 0 to +0.35, saturating at 1 (min(x + o, 1))", DRIFT_START, "2026-03-04"),
    StreamSpec("noise", "additive Gaussian sensor noise, sigma rising linearly from 0 to 0.35, clipped to [0, 1]", DRIFT_START, "2026-03-05"),
    StreamSpec("dead_channel", f"channel (column) {DEAD_CHANNEL} stuck at 0 from the drift point on (a step, no ramp)", DRIFT_START, "2026-03-06"),
    StreamSpec("line_b_drift", "records of line B only: gain falls from 1.0 to 0.25; line A stays clean", DRIFT_START, "2026-03-07"),
]
STREAM_BY_NAME = {s.name: s for s in STREAMS}


def severity(index: np.ndarray | int, drift_start: int | None) -> np.ndarray:
    """0 before the drift point, ramping linearly to 1 over RAMP_LEN records."""
    idx = np.asarray(index, dtype=np.float64)
    if drift_start is None:
        return np.zeros_like(idx)
    return np.clip((idx - drift_start + 1) / RAMP_LEN, 0.0, 1.0)


def corrupt(name: str, x: np.ndarray, sev: np.ndarray, lines: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply the stream's corruption at per-record severity `sev` in [0, 1]."""
    x = np.asarray(x, dtype=np.float64).copy()
    s = np.asarray(sev, dtype=np.float64).reshape(-1, 1, 1)
    if name == "clean":
        pass
    elif name == "gain_drift":
        x = x * (1.0 - 0.75 * s)
    elif name == "offset_drift":
        x = np.minimum(x + 0.35 * s, 1.0)
    elif name == "noise":
        x = np.clip(x + rng.normal(0.0, 1.0, size=x.shape) * 0.35 * s, 0.0, 1.0)
    elif name == "dead_channel":
        x[:, :, DEAD_CHANNEL] = np.where(s[:, :, 0] > 0, 0.0, x[:, :, DEAD_CHANNEL])
    elif name == "line_b_drift":
        on_b = (np.asarray(lines) == "B").astype(np.float64).reshape(-1, 1, 1)
        x = x * (1.0 - 0.75 * s * on_b)
    else:
        raise ValueError(f"unknown stream {name!r}")
    return quantize(x)


def rfc3339(day: str, seconds: int) -> str:
    base = dt.datetime.fromisoformat(day + "T06:00:00+00:00")
    return (base + dt.timedelta(seconds=int(seconds))).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class Records:
    """A batch of field records; the column layout of the NPZ files."""

    id: np.ndarray  # <U
    ts: np.ndarray  # <U RFC 3339
    line: np.ndarray  # <U
    x: np.ndarray  # float32 [N, 8, 8]
    label: np.ndarray  # int64 [N], -1 unknown

    def __len__(self) -> int:
        return len(self.id)

    def take(self, idx) -> "Records":
        return Records(self.id[idx], self.ts[idx], self.line[idx], self.x[idx], self.label[idx])


def make_records(prefix: str, day: str, split: Split, seed: int) -> Records:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split.y))
    n = len(order)
    return Records(
        id=np.array([f"{prefix}-{i:06d}" for i in range(n)]),
        ts=np.array([rfc3339(day, i) for i in range(n)]),
        line=np.array(rng.choice(["A", "B"], size=n)),
        x=split.x[order],
        label=split.y[order],
    )


def make_stream(spec: StreamSpec, field: Split, seed: int) -> Records:
    rec = make_records(spec.name, spec.day, field, seed)
    rng = np.random.default_rng(seed + 7)
    sev = severity(np.arange(len(rec)), spec.drift_start)
    rec.x = corrupt(spec.name, rec.x, sev, rec.line, rng)
    return rec


def stream_seed(name: str) -> int:
    return SPLIT_SEED + 100 + [s.name for s in STREAMS].index(name)


# ---------------------------------------------------------------- record files


def _fmt(v: float) -> float:
    r = round(float(v), DECIMALS)
    return 0.0 if r == 0 else r


def write_jsonl(path: Path, rec: Records, input_name: str = "x") -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(len(rec)):
            obj = {
                "id": str(rec.id[i]),
                "ts": str(rec.ts[i]),
                "segment": {"line": str(rec.line[i])},
                "inputs": {input_name: [[_fmt(v) for v in row] for row in rec.x[i]]},
            }
            if rec.label[i] >= 0:
                obj["label"] = int(rec.label[i])
            f.write(json.dumps(obj, separators=(",", ":")) + "\n")


def write_labels(path: Path, rec: Records) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(len(rec)):
            if rec.label[i] >= 0:
                f.write(json.dumps({"id": str(rec.id[i]), "label": int(rec.label[i])}, separators=(",", ":")) + "\n")


def write_npz(path: Path, rec: Records) -> None:
    np.savez_compressed(
        path,
        x=rec.x.astype(np.float32),
        id=rec.id.astype(str),
        label=rec.label.astype(np.int64),
        ts=rec.ts.astype(str),
        **{"segment.line": rec.line.astype(str)},
    )


def read_jsonl(path: Path, input_name: str = "x") -> Records:
    ids, ts, lines, xs, labels = [], [], [], [], []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                x = np.asarray(obj["inputs"][input_name], dtype=np.float32)
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: bad record: {e}") from e
            ids.append(str(obj.get("id", f"{Path(path).stem}-{n}")))
            ts.append(str(obj.get("ts", "")))
            lines.append(str(obj.get("segment", {}).get("line", "")))
            xs.append(x)
            labels.append(int(obj.get("label", -1)))
    return Records(np.array(ids), np.array(ts), np.array(lines), np.stack(xs).astype(np.float32), np.array(labels, dtype=np.int64))


def read_npz(path: Path) -> Records:
    with np.load(path, allow_pickle=False) as z:
        n = z["x"].shape[0]
        return Records(
            id=z["id"] if "id" in z else np.array([f"{Path(path).stem}-{i}" for i in range(n)]),
            ts=z["ts"] if "ts" in z else np.array([""] * n),
            line=z["segment.line"] if "segment.line" in z else np.array([""] * n),
            x=z["x"].astype(np.float32),
            label=z["label"].astype(np.int64) if "label" in z else np.full(n, -1, np.int64),
        )


def read_records(path: Path) -> Records:
    path = Path(path)
    if path.suffix == ".npz":
        return read_npz(path)
    return read_jsonl(path)
