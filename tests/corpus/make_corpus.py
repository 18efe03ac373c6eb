#!/usr/bin/env python3
"""Writes the malformed-file corpus (and a few valid files) for a model with one input `x`,
float32 [8, 8]. Run from anywhere: `python3 tests/corpus/make_corpus.py`. Needs numpy.

Each malformed file and the fragment its rejection message must contain is listed in
EXPECTED.tsv; the unit test `corpus_files_are_rejected_with_their_reason` in
src/format/tests.rs reads every file listed there with a limit of 8 MiB uncompressed
and NaN/Infinity rejected.
"""

import io
import json
import os
import random
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
VALID = os.path.join(HERE, "valid")


def write(name, data, directory=HERE):
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def npy_bytes(array):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def record(i, x=None, **extra):
    if x is None:
        x = (i * 64 + np.arange(64, dtype=np.float32) / 4).reshape(8, 8).tolist()
    out = {"id": f"rec-{i}", "inputs": {"x": x}}
    out.update(extra)
    return json.dumps(out)


def grid(rows=8, cols=8):
    return [[float(r * cols + c) for c in range(cols)] for r in range(rows)]


def records_array(n=3):
    return np.stack([i * 64 + np.arange(64, dtype=np.float32) / 4 for i in range(n)]).reshape(n, 8, 8)


def main():
    os.makedirs(VALID, exist_ok=True)
    expected = []

    def bad(name, data, fragment):
        write(name, data)
        expected.append((name, fragment))

    # --- JSON Lines -------------------------------------------------------------------------
    line = record(0)
    bad("truncated.jsonl", line + "\n" + line[: len(line) // 2] + "\n",
        "line 2: invalid JSON: the line ends early")
    bad("deep_nesting.jsonl", '{"inputs": {"x": ' + "[" * 1000 + "]" * 1000 + "}}\n",
        "recursion limit exceeded")
    x = grid()
    x[4][2] = 1e39
    bad("huge_number.jsonl", record(0, x) + "\n", "got 1e+39 (outside the float32 range)")
    x = grid()
    x[1][1] = float("nan")
    bad("nan_token.jsonl", record(0) + "\n" + record(1, x) + "\n",
        "line 2: invalid JSON: found NaN, but NaN/Infinity are not valid JSON numbers")
    x = grid()
    x[2][3] = "abc"
    bad("wrong_dtype.jsonl", record(0, x) + "\n",
        'field inputs.x: expected float32 number at index [2, 3], got string "abc"')
    x = grid()
    x[3] = x[3][:7]
    bad("ragged.jsonl", record(0, x) + "\n",
        "ragged array: inputs.x[3] has 7 elements, inputs.x[0] has 8")
    bad("wrong_shape.jsonl", record(0) + "\n" + record(1, grid(8, 7)) + "\n",
        "line 2, field inputs.x: expected shape [8, 8], got [8, 7]")
    bad("missing_input.jsonl", json.dumps({"id": "a", "inputs": {}}) + "\n",
        "missing input 'x' (expected float32 [8, 8])")
    bad("unknown_input.jsonl",
        json.dumps({"inputs": {"x": grid(), "y": [1.0]}}) + "\n",
        "unknown input 'y'; the model's inputs are: x")
    bad("empty.jsonl", "\n\n", "empty file: no records")
    rng = random.Random(7)
    bad("garbage.jsonl", b"\xff" + bytes(rng.randrange(256) for _ in range(512)),
        "line 1: invalid UTF-8")
    bad("invalid_utf8.jsonl",
        (record(0) + "\n" + '{"id": "caf').encode() + b"\xe9" + b'", "inputs": {}}\n',
        "line 2: invalid UTF-8")
    bad("bad_ts.jsonl", record(0, ts="01/05/2024 12:00") + "\n",
        "field ts: expected an RFC 3339 timestamp")
    bad("float_label.jsonl", record(0, label=1.5) + "\n",
        "field label: expected an integer (int64) label, got 1.5")
    bad("not_an_object.jsonl", json.dumps(grid()) + "\n",
        "line 1: expected a JSON object")
    # A key twice: JSON readers disagree on which one counts (json.loads keeps the last).
    x = json.dumps(grid())
    bad("duplicate_key.jsonl", record(0) + "\n"
        + '{"id": "rec-1", "ts": "2026-03-02T06:00:00Z", "ts": "2026-03-02T07:00:00Z", '
        + '"inputs": {"x": ' + x + "}}\n",
        'line 2: duplicate key "ts" at column')
    bad("duplicate_segment_key.jsonl",
        '{"id": "rec-0", "segment": {"line": "A", "line": "B"}, "inputs": {"x": ' + x + "}}\n",
        'line 1: duplicate key "segment.line"')
    bad("duplicate_input.jsonl",
        '{"id": "rec-0", "inputs": {"x": ' + x + ', "x": ' + x + "}}\n",
        'line 1: duplicate key "inputs.x"')
    bad("duplicate_label.labels.jsonl", '{"id": "rec-0", "label": 1, "label": 2}\n',
        'line 1: duplicate key "label"')

    # --- NPY --------------------------------------------------------------------------------
    good = npy_bytes(records_array(3))
    bad("lying_header.npy", good[: len(good) - 68],
        "header says shape (3, 8, 8) = 768 bytes of data, file has 700")
    arr = records_array(3)
    arr[2, 3, 5] = np.nan
    bad("nan.npy", npy_bytes(arr), "record 2, array x: NaN at index [3, 5]")
    arr = records_array(3)
    arr[0, 7, 0] = np.inf
    bad("infinity.npy", npy_bytes(arr), "record 0, array x: Infinity at index [7, 0]")
    bad("big_endian.npy", npy_bytes(records_array(3).astype(">f4")),
        "big-endian data is not accepted: expected little-endian <f4, got >f4")
    bad("float64.npy", npy_bytes(records_array(3).astype("<f8")),
        "expected float32 (<f4), got <f8 (float64); NumPy saves float64 by default: "
        "save the array as float32")
    bad("fortran.npy", npy_bytes(np.asfortranarray(records_array(3))),
        "Fortran-ordered arrays (fortran_order: True) are not accepted")
    bad("wrong_shape.npy", npy_bytes(np.zeros((3, 8, 7), dtype="<f4")),
        "expected shape [N, 8, 8] (N records of float32 [8, 8]), got (3, 8, 7)")
    bad("empty.npy", npy_bytes(np.zeros((0, 8, 8), dtype="<f4")), "empty file: no records")
    bad("not_numpy.npy", b"x,y\n1,2\n", "not a NumPy .npy file")

    # --- NPZ --------------------------------------------------------------------------------
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        # 10 MB of zeros, above the 8 MiB the corpus test allows, in a few kilobytes.
        z.writestr("x.npy", npy_bytes(np.zeros((40000, 8, 8), dtype="<f4")))
    bad("zip_bomb.npz", buf.getvalue(), "archive expands to")

    buf = io.BytesIO()
    np.savez(buf, x=np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    bad("object_dtype.npz", buf.getvalue(), "array x: object arrays (pickled) are not accepted")
    bad("not_a_zip.npz", b"just some text, no archive here\n",
        "not a valid .npz (zip) archive")
    buf = io.BytesIO()
    np.savez(buf, x=records_array(3), foo=np.arange(3))
    bad("unknown_array.npz", buf.getvalue(),
        "unknown array 'foo'; expected model inputs (x) and optional id, label, ts, segment.<key>")
    buf = io.BytesIO()
    np.savez(buf, x=records_array(3), label=np.arange(2))
    bad("mismatched_lengths.npz", buf.getvalue(),
        "array label: expected shape (3,), one value per record like array x, got (2,)")
    buf = io.BytesIO()
    np.savez(buf, label=np.arange(3))
    bad("missing_input.npz", buf.getvalue(), "missing array 'x' (expected float32 [N, 8, 8])")

    # --- Valid files, written the way producers write them ------------------------------------
    write("ok.jsonl", "".join(record(i, label=i % 2, segment={"line": "AB"[i % 2]}) + "\n"
                              for i in range(3)), VALID)
    write("ok.npy", npy_bytes(records_array(3)), VALID)
    columns = {
        "x": records_array(3),
        "id": np.array([f"rec-{i}" for i in range(3)]),
        "label": np.arange(3) % 2,
        "ts": np.array([f"2024-05-01T12:00:0{i}Z" for i in range(3)]),
        "segment.line": np.array(["A", "B", "A"]),
    }
    np.savez(os.path.join(VALID, "ok.npz"), **columns)
    np.savez_compressed(os.path.join(VALID, "ok_compressed.npz"), x=records_array(3))

    with open(os.path.join(HERE, "EXPECTED.tsv"), "w") as f:
        f.write("# file\texpected substring of the rejection message (written by make_corpus.py)\n")
        for name, fragment in expected:
            f.write(f"{name}\t{fragment}\n")


if __name__ == "__main__":
    main()
