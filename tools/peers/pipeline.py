"""A Python peer of `sensei replay`: the same job over the same files, into an equivalent database.

    python tools/peers/pipeline.py --config sensei.toml PATH...

It reads sensei's own config file (the keys the replay pipeline uses, with sensei's defaults) and
does, per file, what sensei does:

1. read the bytes, hash them (sha256) and look the hash up in the file ledger (`files`): content
   already counted is recorded as a duplicate and not counted again;
2. parse and validate `.npz`, `.npy` or `.jsonl` records against the student's inputs (names,
   dtype, shape), rejecting NaN/Infinity under `compare.non_finite = "reject"`, checking ids and
   segments; a bad file is recorded as quarantined with the reason; a record whose id was
   counted in an earlier file is left out (the first arrival counts; sensei's dispatcher has
   spent its sampling token by then, the peer leaves it out before sampling);
3. run the student (ONNX Runtime, 1 intra-op and 1 inter-op thread, all graph optimisations) in
   batches of `student.max_batch`;
4. per record: prediction, confidence, entropy (softmax in float64) and the per-feature input
   means, vectorised per file with NumPy;
5. the sampling decision: sensei's hash of (seed, record id) against the rate, so both pick the
   same records, then the per-minute budget;
6. the teacher on the sampled records, and per sample: top-1 disagreement, KL(teacher || student),
   total variation and the attention KL (mean over heads and query rows);
7. drift detection against the active baseline in the database (none active: no detectors, as in
   sensei): a River Page-Hinkley detector per signal and segment (and over all segments) for the
   confidence, disagreement, KL and attention-KL streams and the error rates of labelled records,
   parameterised from the baseline's CUSUM references; windowed KS / chi-square / PSI rounds
   against the baseline, Holm-corrected across segments and signals;
8. one SQLite transaction per file (WAL, synchronous=NORMAL): the ledger row, the record rows, the
   teacher rows with their outputs, attention and inputs, the per-window sums, the detector states
   and drift events. The schema is sensei's: a new database gets sensei's migrations,
   and the records go to the compact rows behind the `records` view (docs/schema.md).

Late-label files (`*.labels.jsonl`) are outside this peer: they are reported and skipped.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # before the imports below, which are most of the start-up

import argparse
import base64
import hashlib
import io
import json
import math
import pickle
import re
import sqlite3
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
from river import drift
from scipy import special

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "migrations"
ALL_SEGMENTS = "*"
OTHER_SEGMENT = "(other)"
EPS = 1e-12
MAX_ID_BYTES = 256
MAX_FEATURES = 64
MIN_WINDOW_RECORDS = 30
PSI_PSEUDO_COUNT = 0.5
DETECTOR = "page_hinkley"
_ORT = ort.capi.onnxruntime_pybind11_state
INFERENCE_ERRORS = (_ORT.Fail, _ORT.InvalidArgument, _ORT.RuntimeException)
WINDOW_KEY = "window"


class ConfigError(Exception):
    """The config file cannot drive this peer; the message names the key."""


class FileRejected(Exception):
    """A file that sensei would quarantine; the message says what was wrong and where."""


# ------------------------------------------------------------------------------------------------
# Configuration: the keys of sensei's config that the replay pipeline uses, with its defaults.

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_BYTES = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
               "KB": 10**3, "MB": 10**6, "GB": 10**9}


def _duration_ms(value, key: str) -> int:
    m = _DURATION.match(str(value))
    if not m:
        raise ConfigError(f"{key}: expected a duration such as \"15m\", got {value!r}")
    return int(m.group(1)) * _DURATION_MS[m.group(2)]


def _size_bytes(value, key: str) -> int:
    m = _SIZE.match(str(value))
    if not m:
        raise ConfigError(f"{key}: expected a size such as \"64 MiB\", got {value!r}")
    return int(m.group(1)) * _SIZE_BYTES[m.group(2)]


@dataclass
class ModelConfig:
    path: Path
    max_batch: int
    threads: int
    inputs: list[str]
    output: str
    attention: str | None


@dataclass
class Config:
    db: Path
    student: ModelConfig
    teacher: ModelConfig
    rate: float
    seed: int
    max_per_minute: int
    segment_keys: list[str]
    max_segments: int
    window_ms: int
    max_file_bytes: int
    reject_non_finite: bool
    output_kind: str
    window_records: int
    family_alpha: float
    min_ks: float
    min_class_shift: float
    min_psi: float


def load_config(path: Path) -> Config:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from e
    base = path.resolve().parent

    def table(name):
        t = raw.get(name, {})
        if not isinstance(t, dict):
            raise ConfigError(f"{name}: expected a table")
        return t

    def resolve(p) -> Path:
        p = Path(p)
        return p if p.is_absolute() else base / p

    if "state_dir" not in raw:
        raise ConfigError("state_dir: required")
    state_dir = resolve(raw["state_dir"])

    def model(name) -> ModelConfig:
        t = table(name)
        if "path" not in t:
            raise ConfigError(f"{name}.path: required")
        return ModelConfig(resolve(t["path"]), int(t.get("max_batch", 32)), int(t.get("threads", 1)),
                           list(t.get("inputs", [])), t.get("output", "logits"), t.get("attention"))

    sampling, segments, store = table("sampling"), table("segments"), table("store")
    detect, compare, inbox = table("detect"), table("compare"), table("inbox")
    if sampling.get("policy", "uniform") != "uniform":
        raise ConfigError("sampling.policy: this peer implements the uniform policy only")
    if compare.get("task", "classification") != "classification":
        raise ConfigError("compare.task: this peer implements classification only")
    output_kind = compare.get("output_kind", "logits")
    if output_kind not in ("logits", "probabilities"):
        raise ConfigError(f"compare.output_kind: expected \"logits\" or \"probabilities\", got {output_kind!r}")
    return Config(
        db=resolve(store["path"]) if "path" in store else state_dir / "sensei.db",
        student=model("student"),
        teacher=model("teacher"),
        rate=float(sampling.get("rate", 0.1)),
        seed=int(sampling.get("seed", 0)),
        max_per_minute=int(sampling.get("max_per_minute", 600)),
        segment_keys=list(segments.get("keys", [])),
        max_segments=int(segments.get("max_values", 100)),
        window_ms=_duration_ms(store.get("window", "15m"), "store.window"),
        max_file_bytes=_size_bytes(inbox.get("max_file_size", "64 MiB"), "inbox.max_file_size"),
        reject_non_finite=compare.get("non_finite", "reject") == "reject",
        output_kind=output_kind,
        window_records=int(detect.get("window_records", 200)),
        family_alpha=float(detect.get("family_alpha", 0.01)),
        min_ks=float(detect.get("min_ks", 0.15)),
        min_class_shift=float(detect.get("min_class_shift", 0.1)),
        min_psi=float(detect.get("min_psi", 0.2)),
    )


# ------------------------------------------------------------------------------------------------
# Models


@dataclass
class InputSpec:
    name: str
    dtype: np.dtype
    shape: list[int | None]  # per record; None is a dynamic dimension

    def fits(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            got >= 1 if want is None else got == want for want, got in zip(self.shape, shape))

    def display(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


class Model:
    """One ONNX Runtime session with sensei's options, run in batches."""

    def __init__(self, name: str, cfg: ModelConfig):
        self.name = name
        data = cfg.path.read_bytes()
        self.sha12 = hashlib.sha256(data).hexdigest()[:12]
        options = ort.SessionOptions()
        options.intra_op_num_threads = cfg.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.max_batch = cfg.max_batch
        wanted = cfg.inputs or [i.name for i in self.session.get_inputs()]
        by_name = {i.name: i for i in self.session.get_inputs()}
        self.specs = []
        for n in wanted:
            if n not in by_name:
                raise ConfigError(f"{name}.inputs: the model has no input {n!r}")
            i = by_name[n]
            dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64}.get(i.type)
            if dtype is None:
                raise ConfigError(f"{name}: input {n!r} is {i.type}; expected float32 or int64")
            self.specs.append(InputSpec(n, np.dtype(dtype), [d if isinstance(d, int) else None for d in i.shape[1:]]))
        outputs = {o.name for o in self.session.get_outputs()}
        for key, n in (("output", cfg.output), ("attention", cfg.attention)):
            if n is not None and n not in outputs:
                raise ConfigError(f"{name}.{key}: the model has no output {n!r}")
        self.outputs = [cfg.output] + ([cfg.attention] if cfg.attention else [])

    def run(self, inputs: dict[str, np.ndarray]):
        """Outputs over all rows, batch by batch: (output, attention or None, µs per record)."""
        n = len(next(iter(inputs.values())))
        outs, atts, latency = [], [], np.empty(n, dtype=np.int64)
        for start in range(0, n, self.max_batch):
            stop = min(n, start + self.max_batch)
            feed = {k: v[start:stop] for k, v in inputs.items()}
            t = time.perf_counter()
            result = self.session.run(self.outputs, feed)
            latency[start:stop] = int((time.perf_counter() - t) * 1e6) // (stop - start)
            outs.append(result[0])
            if len(result) > 1:
                atts.append(result[1])
        output = np.concatenate(outs).reshape(n, -1)
        attention = np.concatenate(atts) if atts else None
        return output, attention, latency


# ------------------------------------------------------------------------------------------------
# Reading files


@dataclass
class Records:
    inputs: dict[str, np.ndarray]  # name -> [n, ...record shape]
    ids: list[str | None]
    origins: list[int]  # line numbers (JSON Lines) or indices (NumPy)
    origin_word: str  # "line" or "record"
    ts_ms: list[int | None]
    segments: list[tuple[tuple[str, str], ...]]  # per record, its (key, value) pairs
    labels: list[int | None]

    def __len__(self):
        return len(self.ids)

    def keep(self, mask: list[bool]) -> "Records":
        """The records where `mask` is true, in order."""
        at = [i for i, k in enumerate(mask) if k]
        pick = lambda xs: [xs[i] for i in at]  # noqa: E731
        return Records({k: v[at] for k, v in self.inputs.items()}, pick(self.ids), pick(self.origins),
                       self.origin_word, pick(self.ts_ms), pick(self.segments), pick(self.labels))


def file_kind(name: str) -> str | None:
    if name.endswith((".labels.jsonl", ".labels.ndjson")):
        return "labels"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith(".npz"):
        return "npz"
    return None


def _check_id(text: str, where: str) -> str:
    if not text:
        raise FileRejected(f"{where}, field id: expected a non-empty id, got an empty string")
    if len(text.encode()) > MAX_ID_BYTES:
        raise FileRejected(f"{where}, field id: expected an id of at most {MAX_ID_BYTES} bytes")
    return text


def _parse_ts(text, where: str) -> int:
    if not isinstance(text, str):
        raise FileRejected(f"{where}, field ts: expected an RFC 3339 timestamp string, got {text!r}")
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        t = None
    if t is None or t.tzinfo is None or "T" not in text.upper():
        raise FileRejected(f"{where}, field ts: expected an RFC 3339 timestamp such as "
                           f"\"2024-05-01T12:00:00Z\", got {text[:40]!r}")
    return int(t.timestamp() * 1000)


def _check_finite(name: str, array: np.ndarray, word: str):
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        v = array[tuple(bad)]
        what = "NaN" if np.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
        raise FileRejected(f"{word} {bad[0]}, array {name}: {what} at index {list(bad[1:])}: "
                           "expected finite numbers (this model rejects NaN/Infinity)")


def _input_array(spec: InputSpec, name: str, array: np.ndarray) -> np.ndarray:
    ok = array.dtype == np.float32 if spec.dtype == np.float32 else array.dtype in (np.int64, np.int32)
    if not ok or array.dtype.byteorder == ">":
        want = "float32 (<f4)" if spec.dtype == np.float32 else "int64 (<i8)"
        raise FileRejected(f"array {name}: expected {want}, got {array.dtype.str}")
    if array.ndim < 1 or (len(array) > 0 and not spec.fits(array.shape[1:])):
        raise FileRejected(f"array {name}: expected shape [N, {spec.display()[1:-1]}], "
                           f"got {list(array.shape)}")
    return np.ascontiguousarray(array, dtype=spec.dtype)


def _texts(name: str, array: np.ndarray, n: int) -> list[str]:
    if array.shape != (n,):
        raise FileRejected(f"array {name}: expected shape [{n}] (one per record), got {list(array.shape)}")
    if array.dtype.kind == "U":
        return array.tolist()
    if array.dtype.kind in "iu":
        return [str(v) for v in array.tolist()]
    raise FileRejected(f"array {name}: expected strings (<U) or integers (<i8), got {array.dtype.str}")


def read_npz(data: bytes, specs: list[InputSpec], cfg: Config) -> Records:
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise FileRejected(f"not a valid .npz (zip) archive: {e}") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise FileRejected("not a valid .npz (zip) archive: it holds a single .npy array")
    with archive:
        names = set(archive.files)
        known = {s.name for s in specs} | {"id", "label", "ts"}
        for n in names:
            if n not in known and not (n.startswith("segment.") and len(n) > len("segment.")):
                raise FileRejected(f"unknown array '{n}'; expected model inputs "
                                   f"({', '.join(s.name for s in specs)}) and optional id, label, ts, segment.<key>")
        declared = sum(i.file_size for i in archive.zip.infolist())
        if declared > 4 * cfg.max_file_bytes:
            raise FileRejected(f"archive expands to {declared} bytes: expected at most "
                               f"{4 * cfg.max_file_bytes} bytes (the configured limit)")
        inputs = {}
        for spec in specs:
            if spec.name not in names:
                raise FileRejected(f"missing array '{spec.name}'; the archive has: {', '.join(sorted(names)) or 'nothing'}")
            try:
                inputs[spec.name] = _input_array(spec, spec.name, archive[spec.name])
            except ValueError as e:
                raise FileRejected(f"array {spec.name}: {e}") from e
        lengths = {len(a) for a in inputs.values()}
        if len(lengths) != 1:
            raise FileRejected("the input arrays differ in length: expected one row per record in each")
        n = lengths.pop()
        if n == 0:
            raise FileRejected("empty file: no records")
        if cfg.reject_non_finite:
            for name, a in inputs.items():
                if a.dtype == np.float32:
                    _check_finite(name, a, "record")
        ids = [None] * n
        if "id" in names:
            ids = _texts("id", archive["id"], n)
            for i, v in enumerate(ids):
                _check_id(v, f"record {i}")
        labels = [None] * n
        if "label" in names:
            lab = archive["label"]
            if lab.shape != (n,) or lab.dtype.kind not in "iu":
                raise FileRejected(f"array label: expected {n} integer labels (<i8), got {lab.dtype.str} {list(lab.shape)}")
            labels = lab.astype(np.int64).tolist()
        ts = [None] * n
        if "ts" in names:
            ts = [_parse_ts(t, f"record {i}") for i, t in enumerate(_texts("ts", archive["ts"], n))]
        segment_columns = {n_[len("segment."):]: _texts(n_, archive[n_], n)
                           for n_ in names if n_.startswith("segment.")}
    keys = list(segment_columns)
    segments = [tuple(zip(keys, values)) for values in zip(*segment_columns.values())] if keys else [()] * n
    return Records(inputs, ids, list(range(n)), "record", ts, segments, labels)


def read_npy(data: bytes, specs: list[InputSpec], cfg: Config) -> Records:
    if len(specs) != 1:
        raise FileRejected(f".npy files carry one array, but the model has {len(specs)} inputs: send .npz")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as e:
        raise FileRejected(f"not a valid .npy array: {e}") from e
    x = _input_array(specs[0], specs[0].name, array)
    n = len(x)
    if n == 0:
        raise FileRejected("empty file: no records")
    if cfg.reject_non_finite and x.dtype == np.float32:
        _check_finite(specs[0].name, x, "record")
    return Records({specs[0].name: x}, [None] * n, list(range(n)), "record",
                   [None] * n, [()] * n, [None] * n)


def _reject_constant(token):
    raise ValueError(f"found {token}, but NaN/Infinity are not valid JSON numbers")


def _segment_value(v, where: str, key: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (str, int, float)):
        return str(v)
    raise FileRejected(f"{where}, field segment.{key}: expected a string, number or bool, got {type(v).__name__}")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def read_jsonl(data: bytes, specs: list[InputSpec]) -> Records:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise FileRejected(f"line {line}: invalid UTF-8: expected UTF-8 encoded JSON text") from e
    ids, origins, ts, segments, labels = [], [], [], [], []
    tensors: dict[str, list] = {s.name: [] for s in specs}
    spec_names = {s.name for s in specs}
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        where = f"line {number}"
        try:
            obj = _JSON.decode(raw)
        except ValueError as e:
            raise FileRejected(f"{where}: invalid JSON: {e}") from e
        if not isinstance(obj, dict):
            raise FileRejected(f"{where}: expected a JSON object {{\"inputs\": ...}}, got {type(obj).__name__}")
        rid = obj.get("id")
        if rid is not None:
            if isinstance(rid, bool) or not isinstance(rid, (str, int)):
                raise FileRejected(f"{where}, field id: expected a string or integer id, got {rid!r}")
            rid = _check_id(str(rid), where)
        t = obj.get("ts")
        seg = obj.get("segment")
        if seg is None:
            seg = ()
        elif not isinstance(seg, dict):
            raise FileRejected(f"{where}, field segment: expected an object such as {{\"line\": \"A\"}}")
        else:
            seg = tuple((k, _segment_value(v, where, k)) for k, v in seg.items())
        label = obj.get("label")
        if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
            raise FileRejected(f"{where}, field label: expected an integer (int64) label, got {label!r}")
        inputs = obj.get("inputs")
        if not isinstance(inputs, dict):
            raise FileRejected(f"{where}: missing \"inputs\": expected an object of the model's inputs")
        unknown = set(inputs) - spec_names
        if unknown:
            raise FileRejected(f"{where}, field inputs.{sorted(unknown)[0]}: unknown input")
        for s in specs:
            if s.name not in inputs:
                raise FileRejected(f"{where}, field inputs.{s.name}: missing input (expected {s.display()})")
            tensors[s.name].append(inputs[s.name])
        ids.append(rid)
        origins.append(number)
        ts.append(None if t is None else _parse_ts(t, where))
        segments.append(seg)
        labels.append(label)
    if not ids:
        raise FileRejected("empty file: no records")
    arrays = {}
    for s in specs:
        # One conversion per file; only when it fails is the bad line looked for.
        try:
            a = np.array(tensors[s.name], dtype=s.dtype)
            ok = a.ndim == len(s.shape) + 1 and s.fits(a.shape[1:])
        except (ValueError, TypeError):
            ok = False
        if not ok:
            for line, value in zip(origins, tensors[s.name]):
                try:
                    one = np.array(value, dtype=s.dtype)
                except (ValueError, TypeError) as e:
                    raise FileRejected(f"line {line}, field inputs.{s.name}: {e}") from e
                if not s.fits(one.shape):
                    raise FileRejected(f"line {line}, field inputs.{s.name}: expected shape "
                                       f"{s.display()}, got {list(one.shape)}")
            raise FileRejected(f"field inputs.{s.name}: records differ in shape")
        arrays[s.name] = a
    return Records(arrays, ids, origins, "line", ts, segments, labels)


# ------------------------------------------------------------------------------------------------
# Statistics


def probabilities(output: np.ndarray, kind: str) -> np.ndarray:
    x = output.astype(np.float64)
    if kind == "probabilities":
        return x
    x -= x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return x


def entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)


def kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) along the last axis, q clamped at EPS (as sensei)."""
    terms = p * (np.log(np.maximum(p, EPS)) - np.log(np.maximum(q, EPS)))
    return np.where(p > 0, terms, 0.0).sum(axis=-1)


def input_features(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Per record, the mean of each channel (last axis) of the float inputs, in input-name order."""
    parts = []
    for name in sorted(inputs):
        a = inputs[name]
        if a.dtype != np.float32 or a.ndim < 2:
            continue
        width = a.shape[-1] if a.ndim > 1 else 1
        parts.append(a.reshape(len(a), -1, width).astype(np.float64).mean(axis=1))
    if not parts:
        return np.zeros((len(next(iter(inputs.values()))), 0))
    return np.concatenate(parts, axis=1)[:, :MAX_FEATURES]


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


_TRAILING_DIGITS = re.compile(r"[0-9]+\Z")


def numbered(rid: str) -> tuple[str, int, int] | None:
    """An id as (prefix, number, digits), as sensei keeps it: 1 to 18 trailing ASCII digits,
    `digits` 0 when written plainly, else the zero-padded width; None for any other id."""
    m = _TRAILING_DIGITS.search(rid)
    if m is None or len(m.group()) > 18:
        return None
    text = m.group()
    padded = len(text) > 1 and text.startswith("0")
    return rid[:m.start()], int(text), len(text) if padded else 0


def encode_ids(first_seq: int, ids: list[str]):
    """Consecutive ids that continue one prefix and width are one run (first_seq, records, prefix,
    digits, first_number); the others are kept one by one as (seq, id)."""
    runs, single = [], []
    for k, rid in enumerate(ids):
        seq, n = first_seq + k, numbered(rid)
        if n is None:
            single.append((seq, rid))
            continue
        last = runs[-1] if runs else None
        if (last is not None and last[0] + last[1] == seq and (last[2], last[3]) == (n[0], n[2])
                and last[4] + last[1] == n[1]):
            last[1] += 1
        else:
            runs.append([seq, 1, n[0], n[2], n[1]])
    return runs, single


def counted_before(db: sqlite3.Connection, ids: list[str]) -> list[bool]:
    """For each id, whether a kept record already has it."""
    out = []
    for rid in ids:
        n = numbered(rid)
        if n is None:
            hit = db.execute("SELECT 1 FROM record_ids WHERE record_id = ?", (rid,)).fetchone()
        else:
            hit = db.execute(
                "SELECT 1 FROM record_id_runs WHERE prefix = ? AND digits = ? AND first_number <= ? "
                "AND first_number + records > ? ORDER BY first_number DESC LIMIT 1",
                (n[0], n[2], n[1], n[1])).fetchone()
        out.append(hit is not None)
    return out


def unit_hash(seed: int, ids: list[str]) -> np.ndarray:
    """sensei's sampling hash of (seed, id) in [0, 1): FNV-1a then a SplitMix64 finaliser,
    vectorised over the ids of a file (uint64 arithmetic wraps as Rust's wrapping_mul)."""
    raw = [s.encode() for s in ids]
    width = max(len(b) for b in raw)
    lengths = np.fromiter((len(b) for b in raw), dtype=np.int64, count=len(raw))
    buf = np.frombuffer(b"".join(b.ljust(width, b"\0") for b in raw), dtype=np.uint8).reshape(len(raw), width)
    h = np.full(len(raw), _FNV_OFFSET ^ np.uint64((seed * 0x9E3779B97F4A7C15) % (1 << 64)), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(width):
            step = (h ^ buf[:, j].astype(np.uint64)) * _FNV_PRIME
            h = np.where(lengths > j, step, h)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class Budget:
    """Token bucket: `capacity` teacher records per minute (sensei's `sampling.max_per_minute`)."""

    def __init__(self, capacity: int):
        self.capacity = float(capacity)
        self.tokens = float(capacity)
        self.last = None

    def try_take(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.last) * self.capacity / 60.0)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# ------------------------------------------------------------------------------------------------
# Drift detection against the active baseline


@dataclass
class Watch:
    detector: drift.PageHinkley
    baseline_value: float
    open: bool = False
    since_alarm: int = 0
    samples: int = 0


@dataclass
class Window:
    confidence: list = field(default_factory=list)  # arrays of confidences
    classes: np.ndarray | None = None
    features: list = field(default_factory=list)  # per feature, counts per bin
    records: int = 0


def _value_detector(ref) -> tuple[drift.PageHinkley, float] | None:
    # Page-Hinkley accumulates x − mean − delta, the CUSUM's x − μ0 − k: same scale, so the
    # baseline's k and calibrated h carry over (River estimates the mean from the stream).
    if not ref:
        return None
    return drift.PageHinkley(min_instances=30, delta=ref["k"], threshold=ref["threshold"], mode="up"), ref["mean"]


def _rate_detector(ref) -> tuple[drift.PageHinkley, float] | None:
    # The Bernoulli CUSUM's log-likelihood increments are (a + b)·(x − r) with a = ln(p1/p0),
    # b = ln((1 − p0)/(1 − p1)), r = b/(a + b): a CUSUM on x with reference r and threshold
    # h/(a + b), i.e. Page-Hinkley with delta = r − p0.
    if not ref:
        return None
    p0, p1 = ref["p0"], ref["p1"]
    a, b = math.log(p1 / p0), math.log((1 - p0) / (1 - p1))
    return drift.PageHinkley(min_instances=30, delta=b / (a + b) - p0, threshold=ref["threshold"] / (a + b),
                             mode="up"), p0


class Monitor:
    """The detectors of one baseline version, their persisted state, and the events they raise."""

    def __init__(self, version: int, profile: dict, cfg: Config):
        self.version = version
        self.profile = profile
        self.cfg = cfg
        self.watches: dict[tuple[str, str], Watch] = {}
        self.windows: dict[str, Window] = {}
        self.open_windowed: dict[tuple[str, str], bool] = {}
        self.ref_confidence = np.sort(np.asarray(profile.get("confidence_values", []), dtype=np.float64))
        self.class_counts = np.asarray(profile.get("class_counts", []), dtype=np.int64)
        self.bins = [None if f is None else (np.asarray(f["edges"]), np.asarray(f["counts"], dtype=np.int64))
                     for f in profile.get("features", [])]
        self.makers = {
            "disagreement": lambda: _rate_detector(profile.get("disagreement")),
            "student_error": lambda: _rate_detector(profile.get("student_error")),
            "teacher_error": lambda: _rate_detector(profile.get("teacher_error")),
            "kl": lambda: _value_detector(profile.get("kl")),
            "attention_kl": lambda: _value_detector(profile.get("attention_kl")),
            "confidence": lambda: _value_detector(profile.get("uncertainty")),
        }

    def restore(self, rows):
        for signal, segment, detector, state in rows:
            if detector == WINDOW_KEY:
                w = json.loads(state)
                self.windows[segment] = Window(
                    [np.asarray(w["confidence"])], np.asarray(w["classes"], dtype=np.int64),
                    [np.asarray(c, dtype=np.int64) for c in w["features"]], w["records"])
            elif detector.startswith("windowed:"):
                self.open_windowed[(signal, segment)] = state == "open"
            elif detector == DETECTOR:
                self.watches[(signal, segment)] = pickle.loads(base64.b64decode(state))

    def _watch(self, signal: str, segment: str) -> Watch | None:
        key = (signal, segment)
        w = self.watches.get(key)
        if w is None:
            made = self.makers[signal]()
            if made is None:
                return None
            w = self.watches[key] = Watch(*made)
        return w

    def sequential(self, signal: str, segment: str, values, seqs, now_ms: int, out: "Delta"):
        """Feeds one stream of observations (in record order) to its detector."""
        if not values:
            return
        w = self._watch(signal, segment)
        if w is None:
            return
        det, quiet = w.detector, self.cfg.window_records
        for x, seq in zip(values, seqs):
            det.update(x)
            w.samples += 1
            if det.drift_detected:
                w.since_alarm = 0
                if not w.open:
                    w.open = True
                    current = det._x_mean.get()
                    if signal == "confidence":
                        current, base = 1.0 - current, 1.0 - w.baseline_value
                    else:
                        base = w.baseline_value
                    out.events.append((signal, segment, DETECTOR, now_ms, seq, None,
                                       det._sum_increase - det._min_increase, det.threshold, base, current,
                                       None, None, None, None, self.version))
            else:
                w.since_alarm += 1
                if w.open and w.since_alarm >= quiet:
                    w.open = False
                    out.resolved.append((signal, segment, DETECTOR))
        out.states[(signal, segment, DETECTOR)] = (
            w.samples, float(det._sum_increase - det._min_increase) if det._x_mean.n else 0.0, det.threshold,
            base64.b64encode(pickle.dumps(w)).decode())

    def windowed(self, segments: np.ndarray, names: list[str], confidence, prediction, features,
                 seqs: np.ndarray, now_ms: int, out: "Delta"):
        """Accumulates every record into its segment's window and the all-segments window, and
        runs a round of tests whenever the all-segments window is full."""
        n, start = len(seqs), 0
        while start < n:
            total = self.windows.setdefault(ALL_SEGMENTS, Window())
            stop = min(n, start + max(1, self.cfg.window_records - total.records))
            chunk = slice(start, stop)
            seg_chunk = segments[chunk]
            for code in np.unique(seg_chunk):
                name = names[code]
                mask = seg_chunk == code
                if name != ALL_SEGMENTS:
                    self._accumulate(name, confidence[chunk][mask], prediction[chunk][mask], features[chunk][mask])
            self._accumulate(ALL_SEGMENTS, confidence[chunk], prediction[chunk], features[chunk])
            if self.windows[ALL_SEGMENTS].records >= self.cfg.window_records:
                self._round(int(seqs[stop - 1]), now_ms, out)
            start = stop
        for segment, w in self.windows.items():
            conf = np.concatenate(w.confidence) if w.confidence else np.empty(0)
            out.states[(WINDOW_KEY, segment, WINDOW_KEY)] = (w.records, 0.0, 0.0, json.dumps({
                "confidence": conf.tolist(),
                "classes": [] if w.classes is None else w.classes.tolist(),
                "features": [c.tolist() for c in w.features],
                "records": w.records}))

    def _accumulate(self, segment: str, confidence, prediction, features):
        w = self.windows.setdefault(segment, Window())
        k = len(self.class_counts)
        if w.classes is None or len(w.classes) != k:
            w.classes = np.zeros(k, dtype=np.int64)
        if len(w.features) != len(self.bins):
            w.features = [np.zeros(0 if b is None else len(b[1]), dtype=np.int64) for b in self.bins]
        w.records += len(confidence)
        w.confidence.append(confidence)
        w.classes += np.bincount(np.maximum(prediction, 0), minlength=k)[:k]
        for f, b in enumerate(self.bins):
            if b is not None and f < features.shape[1]:
                edges, counts = b
                w.features[f] += np.bincount(np.searchsorted(edges, features[:, f], side="left"),
                                             minlength=len(counts))[:len(counts)]

    def _round(self, seq: int, now_ms: int, out: "Delta"):
        """One round of windowed tests over every segment's window, Holm-corrected together.
        The statistics are sensei's (KS with Stephens' p-value approximation, chi-square of
        homogeneity, PSI with its chi-square approximation), computed with NumPy and
        scipy.special: scipy.stats' per-call overhead is larger than the tests themselves."""
        tests = []  # (segment, signal, detector, statistic, p, effect, min_effect, n_window)
        ref = self.ref_confidence
        for segment, w in self.windows.items():
            if w.records < MIN_WINDOW_RECORDS:
                continue
            conf = np.sort(np.concatenate(w.confidence))
            if len(ref) and len(conf):
                points = np.concatenate([ref, conf])
                d = float(np.abs(np.searchsorted(ref, points, side="right") / len(ref)
                                 - np.searchsorted(conf, points, side="right") / len(conf)).max())
                ne = len(ref) * len(conf) / (len(ref) + len(conf))
                p = float(special.kolmogorov((math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d))
                tests.append((segment, "confidence", "ks", d, p, d, self.cfg.min_ks, len(conf)))
            nw = int(w.classes.sum())
            if nw > 0:
                b, c = self.class_counts.astype(np.float64), w.classes.astype(np.float64)
                nb = b.sum()
                kept = (b + c) > 0
                b, c = b[kept], c[kept]
                eb, ec = nb * (b + c) / (nb + nw), nw * (b + c) / (nb + nw)
                chi2 = float(((b - eb) ** 2 / eb + (c - ec) ** 2 / ec).sum())
                df = int(kept.sum()) - 1
                p = 1.0 if df < 1 else float(special.chdtrc(df, chi2))
                tv = 0.5 * float(np.abs(c / nw - b / nb).sum())
                tests.append((segment, "class_mix", "chi_square", chi2, p, tv, self.cfg.min_class_shift, nw))
            psi_tests = []
            for f, bins in enumerate(self.bins):
                if bins is None:
                    continue
                counts = bins[1]
                nb, nw_f = counts.sum(), w.features[f].sum()
                if nb == 0 or nw_f == 0:
                    continue
                smooth = PSI_PSEUDO_COUNT * len(counts)
                p_ = (counts + PSI_PSEUDO_COUNT) / (nb + smooth)
                q_ = (w.features[f] + PSI_PSEUDO_COUNT) / (nw_f + smooth)
                psi = float(((q_ - p_) * np.log(q_ / p_)).sum())
                psi_tests.append((f, psi, psi / (1 / nb + 1 / nw_f), len(counts) - 1, int(nw_f)))
            if psi_tests:
                pvalues = special.chdtrc([t[3] for t in psi_tests], [t[2] for t in psi_tests])
                for (f, psi, statistic, _, n_window), p in zip(psi_tests, pvalues.tolist()):
                    tests.append((segment, f"input_psi[{f}]", "psi", statistic, p, psi, self.cfg.min_psi, n_window))
        if tests:
            p = np.nan_to_num(np.array([t[4] for t in tests], dtype=np.float64), nan=1.0).clip(0, 1)
            order = np.argsort(p, kind="stable")
            adjusted = np.empty_like(p)
            adjusted[order] = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
            for (segment, signal, detector, statistic, _, effect, min_effect, n_window), adj in zip(
                    tests, adjusted.tolist()):
                alarm = adj <= self.cfg.family_alpha and effect >= min_effect
                score = margin(adj, effect, min_effect, self.cfg.family_alpha)
                key = (signal, segment)
                was_open = self.open_windowed.get(key, False)
                if alarm and not was_open:
                    out.events.append((signal, segment, detector, now_ms, seq, None, score,
                                       WINDOWED_THRESHOLD, None, float(effect), None, None, adj,
                                       float(effect), self.version))
                elif not alarm and was_open:
                    out.resolved.append((signal, segment, detector))
                self.open_windowed[key] = alarm
                out.states[(signal, segment, f"windowed:{detector}")] = (
                    n_window, score, WINDOWED_THRESHOLD, "open" if alarm else "closed")
        for segment in self.windows:
            self.windows[segment] = Window()


WINDOWED_THRESHOLD = 1.0


def margin(adjusted_p: float, effect: float, min_effect: float, alpha: float) -> float:
    """How far a windowed test stands towards an alarm, as sensei stores it (a statistic against a
    threshold of 1): the smaller of ln p / ln alpha and effect / min_effect."""
    p = min(max(adjusted_p, sys.float_info.min), 1.0)
    by_p = math.log(p) / math.log(alpha) if 0.0 < alpha < 1.0 else float(adjusted_p <= alpha)
    by_effect = max(effect / min_effect, 0.0) if min_effect > 0.0 else math.inf
    m = min(by_p, by_effect)
    return 0.0 if math.isnan(m) else m


@dataclass
class Delta:
    events: list = field(default_factory=list)
    resolved: list = field(default_factory=list)
    states: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class Report:
    files_committed: int = 0
    files_quarantined: int = 0
    files_duplicate: int = 0
    records_committed: int = 0
    teacher_samples: int = 0
    drift_events: int = 0
    files_skipped: int = 0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def open_database(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)  # transactions are explicit
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    migrations = sorted(MIGRATIONS.glob("*.sql"))
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > len(migrations):
        raise RuntimeError(f"database {path}: schema version {current} is newer than the {len(migrations)} "
                           f"migrations in {MIGRATIONS}")
    if current < len(migrations):
        conn.execute("BEGIN")
        for i, m in enumerate(migrations[current:], start=current + 1):
            for statement in _statements(m.read_text()):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {i}")
        conn.execute("COMMIT")
    return conn


def _statements(script: str):
    """The statements of a migration (executescript would commit the open transaction)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf
            buf = ""


class Pipeline:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.student = Model("student", cfg.student)
        self.teacher = Model("teacher", cfg.teacher)
        self.db = open_database(cfg.db)
        self.known_segments = {r[0] for r in self.db.execute(
            "SELECT DISTINCT segment FROM windows WHERE segment != ?", (ALL_SEGMENTS,))}
        self.budget = Budget(cfg.max_per_minute)
        self.monitor = None
        row = self.db.execute("SELECT version, profile FROM baselines WHERE active = 1").fetchone()
        if row is not None:
            self.monitor = Monitor(row[0], json.loads(row[1]), cfg)
            self.monitor.restore(self.db.execute(
                "SELECT signal, segment, detector, state FROM detector_state WHERE baseline_version = ?",
                (row[0],)).fetchall())
        self.report = Report()

    def resolve_segment(self, segment: dict[str, str]) -> str:
        s = ",".join(f"{k}={segment[k]}" for k in self.cfg.segment_keys if k in segment)
        if not s or s in self.known_segments:
            return s
        if len(self.known_segments) >= self.cfg.max_segments:
            return OTHER_SEGMENT
        self.known_segments.add(s)
        return s

    def process(self, path: Path):
        name = path.name
        kind = file_kind(name) or "unknown"
        if kind == "labels":
            print(f"{name}: late-label files are not handled by this peer; skipped", file=sys.stderr)
            self.report.files_skipped += 1
            return
        size = path.stat().st_size
        if size > self.cfg.max_file_bytes:
            return self.quarantine(name, "", size, kind, f"file is {size} bytes, over the limit of "
                                   f"{self.cfg.max_file_bytes} bytes (inbox.max_file_size); it was not read")
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        done = self.db.execute("SELECT id, name FROM files WHERE sha256 = ? AND status = 'done'", (sha,)).fetchone()
        if done is not None:
            return self.duplicate(name, sha, len(data), kind, done)
        try:
            if kind == "npz":
                records = read_npz(data, self.student.specs, self.cfg)
            elif kind == "npy":
                records = read_npy(data, self.student.specs, self.cfg)
            elif kind == "jsonl":
                records = read_jsonl(data, self.student.specs)
            else:
                raise FileRejected("unsupported file type: expected .jsonl, .ndjson, .labels.jsonl, .npy or .npz")
            ids = [rid if rid is not None else f"{sha[:12]}:{o}" for rid, o in zip(records.ids, records.origins)]
            if len(set(ids)) != len(ids):
                seen = set()
                for rid, o in zip(ids, records.origins):
                    if rid in seen:
                        raise FileRejected(f"{records.origin_word} {o}: duplicate record id '{rid}' within the file")
                    seen.add(rid)
        except FileRejected as e:
            return self.quarantine(name, sha, len(data), kind, str(e))
        size = len(data)
        del data
        # A producer's id identifies a record: one counted before (in an earlier file) is left out.
        counted = counted_before(self.db, ids)
        duplicates = sum(counted)
        if duplicates:
            records = records.keep([not c for c in counted])
            ids = [rid for rid, c in zip(ids, counted) if not c]
        try:
            self.commit(name, sha, size, kind, records, ids, duplicates)
        except INFERENCE_ERRORS as e:
            self.quarantine(name, sha, size, kind, f"inference failed: {e}")

    def duplicate(self, name, sha, size, kind, done):
        self.db.execute("BEGIN")
        if done[1] != name:
            self.db.execute(
                "INSERT INTO files (name, sha256, size, kind, status, records, reason, processed_at) "
                "VALUES (?, ?, ?, ?, 'duplicate', 0, ?, ?)",
                (name, sha, size, kind, f"same content as file #{done[0]} ({done[1]})", now_ms()))
        self.db.execute("COMMIT")
        self.report.files_duplicate += 1

    def quarantine(self, name, sha, size, kind, reason):
        print(f"{name}: quarantined: {reason}", file=sys.stderr)
        self.report.files_quarantined += 1
        # The same file quarantined again keeps its one ledger row, as in sensei.
        if self.db.execute("SELECT 1 FROM files WHERE status = 'quarantined' AND name = ? AND sha256 = ? "
                           "AND size = ?", (name, sha, size)).fetchone():
            return
        self.db.execute("BEGIN")
        self.db.execute(
            "INSERT INTO files (name, sha256, size, kind, status, records, reason, processed_at) "
            "VALUES (?, ?, ?, ?, 'quarantined', 0, ?, ?)", (name, sha, size, kind, reason, now_ms()))
        self.db.execute("COMMIT")

    def commit(self, name: str, sha: str, size: int, kind: str, records: Records, ids: list[str],
               duplicates: int):
        cfg, n = self.cfg, len(records)
        received = now_ms()
        ts = np.fromiter((received if t is None else t for t in records.ts_ms), dtype=np.int64, count=n)
        seg_names: list[str] = []
        code_of_name: dict[str, int] = {}
        code_of_pairs: dict[tuple, int] = {}
        codes = []
        for pairs in records.segments:
            code = code_of_pairs.get(pairs)
            if code is None:
                resolved = self.resolve_segment(dict(pairs))
                code = code_of_name.get(resolved)
                if code is None:
                    code = code_of_name[resolved] = len(seg_names)
                    seg_names.append(resolved)
                code_of_pairs[pairs] = code
            codes.append(code)
        seg_codes = np.array(codes, dtype=np.int64)
        segments = [seg_names[c] for c in seg_codes]

        if n == 0:
            db = self.db
            db.execute("BEGIN")
            db.execute(
                "INSERT INTO files (name, sha256, size, kind, status, records, reason, processed_at, "
                "student, ts_base, duplicates, conflicts) VALUES (?, ?, ?, ?, 'done', 0, NULL, ?, ?, 0, ?, 0)",
                (name, sha, size, kind, received, self.student.sha12, duplicates))
            db.execute("COMMIT")
            self.report.files_committed += 1
            return

        # The student, then the label-free statistics of every record.
        logits, attention, latency = self.student.run(records.inputs)
        p = probabilities(logits, cfg.output_kind)
        prediction = p.argmax(axis=1)
        confidence = p[np.arange(n), prediction]
        ent = entropy(p)
        features = input_features(records.inputs)

        # Sampling: the same hash as sensei, then the budget.
        sampled = np.zeros(n, dtype=np.int64)
        if cfg.rate > 0:
            picked = np.flatnonzero(unit_hash(cfg.seed, ids) < cfg.rate)
            now = time.monotonic()
            for i in picked:
                sampled[i] = 1 if self.budget.try_take(now) else 2
        chosen = np.flatnonzero(sampled == 1)

        # The teacher on the sample, and the comparisons.
        teacher_rows, input_rows = [], []
        t_prediction = disagreement = kl = tv = att_kl = None
        if len(chosen):
            t_logits, t_attention, t_latency = self.teacher.run({k: v[chosen] for k, v in records.inputs.items()})
            pt, ps = probabilities(t_logits, cfg.output_kind), p[chosen]
            t_prediction = pt.argmax(axis=1)
            t_confidence = pt[np.arange(len(chosen)), t_prediction]
            disagreement = (t_prediction != prediction[chosen]).astype(np.int64)
            kl = np.maximum(kl_rows(pt, ps), 0.0)
            tv = 0.5 * np.abs(pt - ps).sum(axis=1)
            if t_attention is not None and attention is not None and t_attention.shape[1:] == attention.shape[1:]:
                ta = t_attention.astype(np.float64)
                sa = attention[chosen].astype(np.float64)
                att_kl = np.maximum(kl_rows(ta, sa).reshape(len(chosen), -1).mean(axis=1), 0.0)
            weight = 1.0 / cfg.rate
            output_shape = json.dumps(list(logits.shape[1:]), separators=(",", ":"))
            att_shape = None if t_attention is None else json.dumps(list(t_attention.shape[1:]), separators=(",", ":"))
            input_meta = {k: (str(v.dtype), json.dumps(list(v.shape[1:]), separators=(",", ":")))
                          for k, v in records.inputs.items()}
            t_out = t_logits.astype("<f4")
            s_out = logits[chosen].astype("<f4")
            t_att = None if t_attention is None else t_attention.astype("<f4")
            for j, i in enumerate(chosen.tolist()):
                teacher_rows.append((
                    i, ids[i], int(ts[i]), segments[i], weight, self.teacher.sha12, self.student.sha12,
                    int(prediction[i]), int(t_prediction[j]), float(t_confidence[j]), int(disagreement[j]),
                    float(kl[j]), float(tv[j]), None if att_kl is None else float(att_kl[j]), None, None,
                    int(t_latency[j]), t_out[j].tobytes(), s_out[j].tobytes(), output_shape,
                    None if t_att is None else t_att[j].tobytes(), att_shape, records.labels[i]))
                for k, v in records.inputs.items():
                    input_rows.append((i, k, input_meta[k][0], input_meta[k][1], v[i].astype(v.dtype.newbyteorder("<")).tobytes()))

        # One transaction: ledger row, records, teacher samples, window sums, detectors.
        db = self.db
        db.execute("BEGIN")
        try:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'record_rows'").fetchone()
            first_seq = (row[0] if row else 0) + 1
            seqs = np.arange(first_seq, first_seq + n, dtype=np.int64)
            ts_base = int(ts[0])
            db.execute(
                "INSERT INTO files (name, sha256, size, kind, status, records, reason, processed_at, first_seq, "
                "student, ts_base, duplicates, conflicts) VALUES (?, ?, ?, ?, 'done', ?, NULL, ?, ?, ?, ?, ?, 0)",
                (name, sha, size, kind, n, received, first_seq, self.student.sha12, ts_base, duplicates))
            # The compact layout behind the `records` view: segments numbered, times from the
            # file's first, confidence and entropy in millionths, ids as runs.
            for name_ in sorted(set(segments)):
                db.execute("INSERT OR IGNORE INTO segments (segment) VALUES (?)", (name_,))
            number = dict(db.execute("SELECT segment, id FROM segments"))
            micro = lambda xs: np.floor(np.asarray(xs, dtype=np.float64) * 1e6 + 0.5).astype(np.int64).tolist()  # noqa: E731
            db.executemany(
                "INSERT INTO record_rows (seq, ts, segment, prediction, confidence, entropy, value, latency_us, "
                "sampled, label) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                zip(seqs.tolist(), (ts - ts_base).tolist(), [number[x] for x in segments], prediction.tolist(),
                    micro(confidence), micro(ent), latency.tolist(), sampled.tolist(), records.labels))
            runs, single = encode_ids(first_seq, ids)
            db.executemany("INSERT INTO record_id_runs (first_seq, records, prefix, digits, first_number) "
                           "VALUES (?, ?, ?, ?, ?)", runs)
            db.executemany("INSERT INTO record_ids (seq, record_id) VALUES (?, ?)", single)
            if teacher_rows:
                db.executemany(
                    "INSERT INTO teacher_samples (seq, record_id, ts, segment, weight, teacher, student, "
                    "student_prediction, teacher_prediction, teacher_confidence, disagreement, kl, total_variation, "
                    "attention_kl, cosine_distance, abs_error, teacher_latency_us, teacher_output, student_output, "
                    "output_shape, teacher_attention, attention_shape, label) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    ((first_seq + r[0],) + r[1:] for r in teacher_rows))
                db.executemany(
                    "INSERT INTO teacher_sample_inputs (seq, name, dtype, shape, data) VALUES (?, ?, ?, ?, ?)",
                    ((first_seq + r[0],) + r[1:] for r in input_rows))
            self._windows(ts, seg_codes, seg_names, confidence, ent, latency, sampled, chosen,
                          disagreement, kl, tv, att_kl, teacher_rows)
            if self.monitor is not None:
                self._drift(seqs, seg_codes, seg_names, confidence, prediction, features, chosen,
                            t_prediction, disagreement, kl, att_kl, records.labels, received)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.report.files_committed += 1
        self.report.records_committed += n
        self.report.teacher_samples += len(chosen)

    def _windows(self, ts, seg_codes, seg_names, confidence, ent, latency, sampled, chosen,
                 disagreement, kl, tv, att_kl, teacher_rows):
        start = ts // self.cfg.window_ms * self.cfg.window_ms
        is_chosen = np.zeros(len(ts), dtype=bool)
        is_chosen[chosen] = True
        t_latency = np.zeros(len(ts), dtype=np.int64)
        t_latency[chosen] = [r[16] for r in teacher_rows]
        per = {}
        for name, arr in (("disagreement", disagreement), ("kl", kl), ("tv", tv), ("att", att_kl)):
            full = np.zeros(len(ts))
            if arr is not None:
                full[chosen] = arr
            per[name] = full
        weight = np.where(is_chosen, 1.0 / self.cfg.rate if self.cfg.rate > 0 else 0.0, 0.0)
        att_weight = weight if att_kl is not None else np.zeros(len(ts))
        rows = []
        for s in np.unique(start):
            in_window = start == s
            cells = [(ALL_SEGMENTS, in_window)] + [
                (seg_names[c], in_window & (seg_codes == c)) for c in np.unique(seg_codes[in_window])
                if seg_names[c] != ALL_SEGMENTS]
            for segment, m in cells:
                w = weight[m]
                rows.append((int(s), segment, int(m.sum()), float(confidence[m].sum()), float(ent[m].sum()),
                             int(latency[m].sum()), int(is_chosen[m].sum()), int((sampled[m] == 2).sum()),
                             int((sampled[m] == 3).sum()), float(w.sum()), float((w * per["disagreement"][m]).sum()),
                             float((w * per["kl"][m]).sum()), float((w * per["tv"][m]).sum()),
                             float((att_weight[m] * per["att"][m]).sum()), float(att_weight[m].sum()), 0.0, 0.0,
                             int(t_latency[m].sum()), float((w * w).sum())))
        self.db.executemany(
            "INSERT INTO windows (start, segment, records, confidence_sum, entropy_sum, latency_us_sum, "
            "teacher_samples, skipped_budget, skipped_queue, weight_sum, disagreement_wsum, kl_wsum, "
            "total_variation_wsum, attention_kl_wsum, attention_kl_weight, cosine_distance_wsum, abs_error_wsum, "
            "teacher_latency_us_sum, weight_sq_sum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (start, segment) DO UPDATE SET records = records + excluded.records, "
            "confidence_sum = confidence_sum + excluded.confidence_sum, "
            "entropy_sum = entropy_sum + excluded.entropy_sum, latency_us_sum = latency_us_sum + excluded.latency_us_sum, "
            "teacher_samples = teacher_samples + excluded.teacher_samples, "
            "skipped_budget = skipped_budget + excluded.skipped_budget, "
            "skipped_queue = skipped_queue + excluded.skipped_queue, weight_sum = weight_sum + excluded.weight_sum, "
            "disagreement_wsum = disagreement_wsum + excluded.disagreement_wsum, kl_wsum = kl_wsum + excluded.kl_wsum, "
            "total_variation_wsum = total_variation_wsum + excluded.total_variation_wsum, "
            "attention_kl_wsum = attention_kl_wsum + excluded.attention_kl_wsum, "
            "attention_kl_weight = attention_kl_weight + excluded.attention_kl_weight, "
            "cosine_distance_wsum = cosine_distance_wsum + excluded.cosine_distance_wsum, "
            "abs_error_wsum = abs_error_wsum + excluded.abs_error_wsum, "
            "teacher_latency_us_sum = teacher_latency_us_sum + excluded.teacher_latency_us_sum, "
            "weight_sq_sum = weight_sq_sum + excluded.weight_sq_sum", rows)

    def _drift(self, seqs, seg_codes, seg_names, confidence, prediction, features, chosen,
               t_prediction, disagreement, kl, att_kl, labels, now):
        m, out = self.monitor, Delta()
        uncertainty = 1.0 - confidence
        cells = [(ALL_SEGMENTS, slice(None))] + [
            (seg_names[c], seg_codes == c) for c in range(len(seg_names)) if seg_names[c] != ALL_SEGMENTS]
        chosen_codes = seg_codes[chosen]
        chosen_cells = [(ALL_SEGMENTS, slice(None))] + [
            (seg_names[c], chosen_codes == c) for c in range(len(seg_names)) if seg_names[c] != ALL_SEGMENTS]
        for segment, mask in cells:
            m.sequential("confidence", segment, uncertainty[mask].tolist(), seqs[mask].tolist(), now, out)
        if len(chosen):
            chosen_seqs = seqs[chosen]
            for segment, mask in chosen_cells:
                s = chosen_seqs[mask].tolist()
                if not s:
                    continue
                m.sequential("disagreement", segment, disagreement[mask].astype(float).tolist(), s, now, out)
                m.sequential("kl", segment, kl[mask].tolist(), s, now, out)
                if att_kl is not None:
                    m.sequential("attention_kl", segment, att_kl[mask].tolist(), s, now, out)
        labelled = np.array([label is not None for label in labels])
        if labelled.any():
            lab = np.array([-1 if label is None else label for label in labels], dtype=np.int64)
            student_wrong = (prediction != lab).astype(float)
            for segment, mask in cells:
                sel = labelled if isinstance(mask, slice) else labelled & mask
                m.sequential("student_error", segment, student_wrong[sel].tolist(), seqs[sel].tolist(), now, out)
            if len(chosen):
                sampled_labelled = labelled[chosen]
                teacher_wrong = (t_prediction != lab[chosen]).astype(float)
                for segment, mask in chosen_cells:
                    sel = sampled_labelled if isinstance(mask, slice) else sampled_labelled & mask
                    m.sequential("teacher_error", segment, teacher_wrong[sel].tolist(),
                                 seqs[chosen][sel].tolist(), now, out)
        m.windowed(seg_codes, seg_names, confidence, prediction, features, seqs, now, out)
        db = self.db
        db.executemany(
            "INSERT INTO drift_events (signal, segment, detector, detected_at, detected_at_record, "
            "estimated_change_record, statistic, threshold, baseline_value, current_value, current_low, "
            "current_high, p_value, effect_size, baseline_version) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", out.events)
        db.executemany(
            "UPDATE drift_events SET resolved_at = ? WHERE signal = ? AND segment = ? AND detector = ? "
            "AND resolved_at IS NULL", ((now,) + r for r in out.resolved))
        db.executemany(
            "INSERT INTO detector_state (signal, segment, detector, baseline_version, samples, statistic, "
            "threshold, state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (signal, segment, detector) DO UPDATE SET baseline_version = excluded.baseline_version, "
            "samples = excluded.samples, statistic = excluded.statistic, threshold = excluded.threshold, "
            "state = excluded.state, updated_at = excluded.updated_at",
            (k + (m.version,) + v + (now,) for k, v in out.states.items()))
        self.report.drift_events += len(out.events)


def expand(paths: list[Path]) -> list[Path]:
    """Files named directly, plus the regular files of named directories (sorted, hidden and
    temporary names skipped), as `sensei replay` takes them."""
    out = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and not (
                f.name.startswith(".") or f.name.endswith((".tmp", ".part")))))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="sensei's config file")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        files = expand(args.paths)
        pipeline = Pipeline(cfg)
    except (ConfigError, FileNotFoundError, RuntimeError, sqlite3.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 78 if isinstance(e, ConfigError) else 1
    ready = time.perf_counter()
    for f in files:
        pipeline.process(f)
    pipeline.db.close()
    r = pipeline.report
    if args.json:
        print(json.dumps({**r.__dict__, "startup_seconds": ready - _STARTED,
                          "processing_seconds": time.perf_counter() - ready}))
    else:
        print(f"files: {r.files_committed} committed, {r.files_quarantined} quarantined, "
              f"{r.files_duplicate} duplicate, {r.files_skipped} skipped\n"
              f"records: {r.records_committed}, teacher samples: {r.teacher_samples}, "
              f"drift events: {r.drift_events}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
