import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import DISTILL
from sensei_distill import data, dataset


@pytest.fixture(scope="module")
def splits():
    return data.load_splits()


def test_split_sizes_and_scaling(splits):
    sizes = {k: len(v.y) for k, v in splits.items()}
    assert sizes == {"train": 1077, "lab": 270, "field": 450}
    for sp in splits.values():
        assert sp.x.dtype == np.float32 and sp.x.shape[1:] == (8, 8)
        assert sp.x.min() >= 0.0 and sp.x.max() <= 1.0
        assert set(np.unique(sp.y)) == set(range(10))


def test_split_is_seeded(splits):
    again = data.load_splits()
    assert np.array_equal(again["field"].x, splits["field"].x)
    assert np.array_equal(again["lab"].y, splits["lab"].y)


def test_streams_start_clean_then_drift(splits):
    clean = data.make_stream(data.STREAM_BY_NAME["clean"], splits["field"], 5)
    start = data.DRIFT_START
    for spec in data.STREAMS[1:]:
        rec = data.make_stream(spec, splits["field"], 5)  # same seed: same order and lines as `clean`
        assert np.array_equal(rec.x[:start], clean.x[:start]), spec.name
        assert not np.array_equal(rec.x[start:], clean.x[start:]), spec.name
        assert rec.id[0] == f"{spec.name}-000000"
    dead = data.make_stream(data.STREAM_BY_NAME["dead_channel"], splits["field"], 5)
    assert (dead.x[start:, :, data.DEAD_CHANNEL] == 0).all()
    assert dead.x[:start, :, data.DEAD_CHANNEL].any()
    lb = data.make_stream(data.STREAM_BY_NAME["line_b_drift"], splits["field"], 5)
    on_a = lb.line == "A"
    assert np.array_equal(lb.x[on_a], clean.x[on_a])
    assert not np.array_equal(lb.x[~on_a][start:], clean.x[~on_a][start:])


def test_severity_ramps():
    s = data.severity(np.arange(data.STREAM_LEN), data.DRIFT_START)
    assert s[data.DRIFT_START - 1] == 0 and 0 < s[data.DRIFT_START] < 0.05
    assert np.all(np.diff(s) >= 0) and s[-1] == 1.0


def test_record_files_round_trip(splits, tmp_path):
    rec = data.make_stream(data.STREAM_BY_NAME["noise"], splits["field"], 9)
    data.write_jsonl(tmp_path / "s.jsonl", rec)
    data.write_npz(tmp_path / "s.npz", rec)
    data.write_labels(tmp_path / "s.labels.jsonl", rec)
    first = json.loads((tmp_path / "s.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "ts", "segment", "inputs", "label"}
    assert first["ts"].endswith("Z") and len(first["inputs"]["x"]) == 8 and len(first["inputs"]["x"][0]) == 8
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        assert z["x"].dtype == np.float32 and z["x"].shape == (450, 8, 8)
        assert z["label"].dtype == np.int64
        for key in ("id", "ts", "segment.line"):
            assert z[key].dtype.kind == "U", key
    a, b = data.read_jsonl(tmp_path / "s.jsonl"), data.read_npz(tmp_path / "s.npz")
    assert np.array_equal(a.x, b.x) and np.array_equal(a.x, rec.x)
    assert list(a.id) == list(b.id) and list(a.ts) == list(b.ts) and list(a.line) == list(b.line)
    assert list(a.ts) == sorted(a.ts)
    labels = [json.loads(line) for line in (tmp_path / "s.labels.jsonl").read_text().splitlines()]
    assert [(d["id"], d["label"]) for d in labels] == list(zip(rec.id.tolist(), rec.label.tolist()))


def _write(tmp_path, n=6, **over):
    rng = np.random.default_rng(0)
    (tmp_path / "t.onnx").write_bytes(b"teacher")
    (tmp_path / "s.onnx").write_bytes(b"student")
    att = rng.random((n, 4, 8, 8)).astype(np.float32)
    kw = dict(inputs={"x": rng.random((n, 8, 8)).astype(np.float32)},
              teacher_logits=rng.normal(size=(n, 10)).astype(np.float32),
              teacher_attention=att / att.sum(-1, keepdims=True),
              student_logits=rng.normal(size=(n, 10)).astype(np.float32),
              weight=np.full(n, 2.0, np.float32), label=np.array([3, -1, 0, 9, -1, 1][:n]),
              record_ids=[f"r-{i}" for i in range(n)], time_range=("2026-03-02T06:00:00Z", "2026-03-02T06:00:05Z"),
              teacher_path=tmp_path / "t.onnx", student_path=tmp_path / "s.onnx", reason="test")
    kw.update(over)
    return dataset.write_dataset(tmp_path / "ds", **kw)


def test_dataset_round_trip(tmp_path):
    d = _write(tmp_path)
    t = load_file(str(d / "data.safetensors"))
    assert t["inputs.x"].dtype == torch.float32 and tuple(t["inputs.x"].shape) == (6, 8, 8)
    assert t["label"].dtype == torch.int64 and t["label"].tolist() == [3, -1, 0, 9, -1, 1]
    m = json.loads((d / "manifest.json").read_text())
    assert m["schema_version"] == 1 and m["count"] == 6 and m["inputs"] == ["x"]
    assert m["models"]["student"]["sha256"] == dataset.sha256_file(tmp_path / "s.onnx")
    ds = dataset.read_dataset(d)
    assert len(ds) == 6 and ds.teacher_attention.shape == (6, 4, 8, 8)
    assert torch.equal(ds.weight, torch.full((6,), 2.0))


def _corrupt_tensor(d, name, value):
    t = load_file(str(d / "data.safetensors"))
    if value is None:
        del t[name]
    else:
        t[name] = value
    save_file(t, str(d / "data.safetensors"))


@pytest.mark.parametrize("case,match", [
    ("no_manifest", "manifest.json: missing"),
    ("bad_json", "not valid JSON"),
    ("schema", "schema_version"),
    ("count", "record_ids"),
    ("no_logits", "missing tensor 'teacher.logits'"),
    ("rows", "rows, manifest count is 6"),
    ("nan", "NaN"),
    ("dtype", "dtype"),
    ("label", "label values"),
    ("weight", "weight must be non-negative"),
    ("ts", "RFC 3339"),
])
def test_malformed_datasets_are_refused(tmp_path, case, match):
    d = _write(tmp_path)
    mpath = d / "manifest.json"
    m = json.loads(mpath.read_text())
    if case == "no_manifest":
        mpath.unlink()
    elif case == "bad_json":
        mpath.write_text("{not json")
    elif case == "schema":
        m["schema_version"] = 2
    elif case == "count":
        m["count"] = 7
    elif case == "ts":
        m["time_range"]["to"] = "yesterday"
    elif case == "no_logits":
        _corrupt_tensor(d, "teacher.logits", None)
    elif case == "rows":
        _corrupt_tensor(d, "weight", torch.ones(5))
    elif case == "nan":
        _corrupt_tensor(d, "teacher.logits", torch.full((6, 10), float("nan")))
    elif case == "dtype":
        _corrupt_tensor(d, "label", torch.zeros(6, dtype=torch.int32))
    elif case == "label":
        _corrupt_tensor(d, "label", torch.full((6,), 10, dtype=torch.int64))
    elif case == "weight":
        _corrupt_tensor(d, "weight", -torch.ones(6))
    if case in ("schema", "count", "ts"):
        mpath.write_text(json.dumps(m))
    with pytest.raises(dataset.DatasetError, match=match):
        dataset.read_dataset(d)


def test_redistill_exits_nonzero_on_malformed_dataset(tmp_path):
    d = _write(tmp_path)
    _corrupt_tensor(d, "teacher.logits", None)
    p = subprocess.run([sys.executable, str(DISTILL / "redistill.py"), "--dataset", str(d), "--teacher",
                        str(tmp_path / "t.onnx"), "--student", str(tmp_path / "s.onnx"), "--out", str(tmp_path / "n.onnx")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "malformed dataset" in p.stderr and "teacher.logits" in p.stderr
    assert not (tmp_path / "n.onnx").exists()
