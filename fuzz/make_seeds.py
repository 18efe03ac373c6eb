#!/usr/bin/env python3
"""Seeds the fuzz corpus: `python3 fuzz/make_seeds.py` (needs numpy) writes into
fuzz/corpus/<target>/ the files fuzzing starts from.

- the malformed-input corpus (tests/corpus/, valid/ included) and tests/fixtures/records.npz;
- small slices of the demo streams (models/demo/streams/): the first lines of each JSON Lines
  and labels file, and the first records of each stream re-saved as .npz;
- the example config (config/sensei.toml) and the minimal one of the config tests;
- hand-written seeds for what those lack: the other model shapes the targets read for (a text
  model with two int64 inputs, a dynamic-length sequence, a scalar input, a zero-width input),
  .npy version 2 headers, int32 and string columns, CRLF line ends and a byte order mark.

Seeds are named `seed-<what>`; files that fuzzing adds are named by their SHA-1. Re-running
overwrites the seeds and leaves the rest alone. After fuzzing, `cargo fuzz cmin <target>`
(scripts/fuzz.sh --cmin) keeps the smallest set that covers as much, seeds included or not.
"""

import io
import json
import os
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")
STREAMS = os.path.join(ROOT, "models", "demo", "streams")

STREAM_LINES = 3
LABEL_LINES = 5


def put(target, name, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.join(CORPUS, target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "seed-" + name), "wb") as f:
        f.write(data)


def read(*parts):
    with open(os.path.join(ROOT, *parts), "rb") as f:
        return f.read()


def npy(array):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_v2(array):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=(2, 0), allow_pickle=False)
    return buf.getvalue()


def npz(members, compressed=False):
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name + ".npy", data)
    return buf.getvalue()


def head(data, lines):
    return b"".join(data.splitlines(keepends=True)[:lines])


def copy_tests_corpus():
    corpus = os.path.join(ROOT, "tests", "corpus")
    for directory, prefix in [(corpus, ""), (os.path.join(corpus, "valid"), "valid-")]:
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                continue
            target = {".jsonl": "jsonl", ".npy": "npy", ".npz": "npz"}.get(
                os.path.splitext(name)[1]
            )
            if target:
                put(target, prefix + name, read(path))
    put("npz", "fixtures-records.npz", read("tests", "fixtures", "records.npz"))


def stream_slices():
    for name in sorted(os.listdir(STREAMS)):
        data = read(STREAMS, name)
        stem = name.split(".")[0]
        if name.endswith(".labels.jsonl"):
            put("labels", f"stream-{stem}.labels.jsonl", head(data, LABEL_LINES))
        elif name.endswith(".jsonl"):
            put("jsonl", f"stream-{stem}.jsonl", head(data, STREAM_LINES))
        elif name.endswith(".npz"):
            archive = np.load(io.BytesIO(data), allow_pickle=False)
            members = {key: npy(archive[key][:STREAM_LINES]) for key in archive.files}
            put("npz", f"stream-{stem}.npz", npz(members, compressed=True))


def hand_written_jsonl():
    text = {
        "inputs": {"input_ids": [101, 2023, 102], "attention_mask": [1, 1, 1]},
        "id": 7,
        "label": 2,
    }
    put("jsonl", "text-model.jsonl", json.dumps(text) + "\n" + json.dumps(text) + "\n")
    sequence = {"inputs": {"x": [[0.5] * 8, [0.25] * 8, [1e-3] * 8]}, "segment": {"line": "A"}}
    put("jsonl", "sequence.jsonl", json.dumps(sequence) + "\n")
    put("jsonl", "scalar.jsonl", '{"inputs": {"x": 1.5}, "ts": null}\n{"inputs": {"x": -2}}\n')
    put("jsonl", "zero-width.jsonl", '{"inputs": {"x": []}}\n')
    full = {
        "id": "a-1",
        "ts": "2026-03-02T06:00:00+01:00",
        "segment": {"line": "B", "shift": 2, "night": True},
        "label": -1,
        "inputs": {"x": [[float(r * 8 + c) / 64 for c in range(8)] for r in range(8)]},
    }
    put("jsonl", "crlf-bom.jsonl", b"\xef\xbb\xbf" + (json.dumps(full) + "\r\n\r\n").encode())


def hand_written_labels():
    put(
        "labels",
        "mixed.labels.jsonl",
        '{"id": "a-1", "label": 3}\r\n\n{"id": 12, "label": -4}\n{"label": 0, "id": "x"}',
    )
    put("labels", "float.labels.jsonl", '{"id": "a", "label": 1.0}\n')
    put("labels", "null.labels.jsonl", '{"id": null, "label": 1}\n')


def hand_written_npy():
    put("npy", "text-int64.npy", npy(np.arange(10, dtype="<i8").reshape(2, 5)))
    put("npy", "text-int32.npy", npy(np.arange(6, dtype="<i4").reshape(3, 2)))
    put("npy", "sequence.npy", npy(np.linspace(0, 1, 48, dtype="<f4").reshape(2, 3, 8)))
    put("npy", "scalar.npy", npy(np.array([0.5, -1.5, 3.0], dtype="<f4")))
    put("npy", "zero-width.npy", npy(np.zeros((4, 0), dtype="<f4")))
    put("npy", "v2-digits.npy", npy_v2(np.ones((1, 8, 8), dtype="<f4")))
    put("npy", "unicode.npy", npy(np.array(["a", "bc"], dtype="<U2")))


def hand_written_npz():
    n = 2
    digits = npy(np.linspace(0, 1, n * 64, dtype="<f4").reshape(n, 8, 8))
    put(
        "npz",
        "columns.npz",
        npz(
            {
                "x": digits,
                "id": npy(np.array(["r-1", "r-2"], dtype="<U3")),
                "ts": npy(np.array(["2026-03-02T06:00:00Z"] * n, dtype="<U20")),
                "label": npy(np.array([1, 2], dtype="<i4")),
                "segment.line": npy(np.array([4, 5], dtype="<i8")),
            }
        ),
    )
    put(
        "npz",
        "text-model.npz",
        npz(
            {
                "input_ids": npy(np.array([[101, 7, 102]], dtype="<i8")),
                "attention_mask": npy(np.array([[1, 1, 0]], dtype="<i4")),
            },
            compressed=True,
        ),
    )
    put("npz", "scalar.npz", npz({"x": npy(np.array([1.0, 2.0], dtype="<f4"))}))
    put("npz", "zero-width.npz", npz({"x": npy(np.zeros((3, 0), dtype="<f4"))}))
    put("npz", "empty.npz", npz({}))


def configs():
    put("config", "example.toml", read("config", "sensei.toml"))
    put(
        "config",
        "minimal.toml",
        'state_dir = "/var/lib/sensei"\n[student]\npath = "/models/student.onnx"\n'
        '[teacher]\npath = "/models/teacher.onnx"\n',
    )
    put(
        "config",
        "problems.toml",
        'state_dir = "state"\n[student]\npath = ""\nthreads = 0\nmax_batch = 5000\n'
        'max_wait = "20 parsecs"\n[teacher]\npath = "t.onnx"\noutput = "a"\nattention = "a"\n'
        '[sampling]\nrate = nan\n[inbox]\nmax_file_size = "64 TB"\nquiet = "1ms"\n'
        '[http]\nlisten = "0.0.0.0:80"\n[redistill]\ncommand = ["", "{dataset}", "{oops"]\n'
        "[unknown]\nkey = 1\n",
    )


def main():
    copy_tests_corpus()
    stream_slices()
    hand_written_jsonl()
    hand_written_labels()
    hand_written_npy()
    hand_written_npz()
    configs()


if __name__ == "__main__":
    main()
