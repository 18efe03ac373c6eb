"""Replay throughput of sensei against its Python peer (tools/peers/pipeline.py), in one run.

    cargo build --release
    python3 tools/peers/bench_pipeline.py                 # 100k records, 3 rounds
    python3 tools/peers/bench_pipeline.py --records 20000 --rounds 1

1. Writes N records of the demo clean stream (cycled, as benches/support does) as 1000-record
   .npz files and as the same records in .jsonl files: `x` [n, 8, 8], `id`, `segment.line`
   alternating A/B.
2. Runs `sensei baseline models/demo/lab.npz` once into a template database, so the drift
   detectors of both run (without an active baseline neither runs any).
3. Per round, for each format and each teacher rate (0, and 0.1 by default): `sensei replay`
   and the peer, each as its own process over the same files into a fresh copy of the template
   database; the order of the two alternates between rounds. Wall time includes start-up (model
   loading, imports) and is checked against the records each database holds afterwards.
4. Prints a Markdown table: records/s of each (medians over rounds) and sensei/peer as the median
   of the per-round ratios; and the same with the peer's start-up (imports, sessions, database;
   its own clock, `--json`) taken out of the peer's time, though not out of sensei's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PEER = Path(__file__).resolve().parent / "pipeline.py"
FILE_RECORDS = 1000


def field_rows() -> np.ndarray:
    """The demo field records (the clean stream), [n, 8, 8] float32."""
    with np.load(REPO / "models/demo/streams/clean.npz") as z:
        return np.ascontiguousarray(z["x"], dtype=np.float32)


def write_files(rows: np.ndarray, records: int, npz_dir: Path, jsonl_dir: Path, prefix: str = "b"):
    npz_dir.mkdir(parents=True, exist_ok=True)
    jsonl_dir.mkdir(parents=True, exist_ok=True)
    for f, first in enumerate(range(0, records, FILE_RECORDS)):
        idx = np.arange(first, min(records, first + FILE_RECORDS))
        x = rows[idx % len(rows)]
        ids = np.array([f"{prefix}{n}" for n in idx], dtype="<U16")
        lines = np.where(idx % 2 == 0, "A", "B").astype("<U1")
        np.savez(npz_dir / f"part-{f:05}.npz", **{"x": x, "id": ids, "segment.line": lines})
        with open(jsonl_dir / f"part-{f:05}.jsonl", "w") as out:
            for n, rec, line in zip(idx.tolist(), x.tolist(), lines.tolist()):
                out.write(json.dumps({"id": f"{prefix}{n}", "segment": {"line": line}, "inputs": {"x": rec}},
                                     separators=(",", ":")) + "\n")


def config(state: Path, rate: float, library: Path) -> str:
    """The config of benches/support/mod.rs (`config_toml`)."""
    models = REPO / "models/demo"
    return f"""state_dir = "{state}"
[onnxruntime]
library = "{library}"
[student]
path = "{models / 'student.onnx'}"
attention = "attention"
max_batch = 32
threads = 1
[teacher]
path = "{models / 'teacher.onnx'}"
attention = "attention"
max_batch = 32
threads = 1
[sampling]
rate = {rate}
seed = 1
max_per_minute = 100000000
queue = 100000
[segments]
keys = ["line"]
"""


def copy_database(src: Path, dst: Path):
    dst.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


def committed(db: Path) -> int:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT count(*) FROM records").fetchone()[0]


def run(argv: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(map(str, argv))} failed with exit code {result.returncode}; see {log}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.1, help="teacher rate of the second workload")
    parser.add_argument("--sensei", type=Path, default=REPO / "target/release/sensei")
    parser.add_argument("--library", type=Path, default=REPO / ".ort/libonnxruntime.so.1.32.0",
                        help="ONNX Runtime shared library for sensei")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the peer")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = parser.parse_args()
    for p, what in ((args.sensei, "sensei binary (cargo build --release)"), (args.library, "ONNX Runtime library")):
        if not p.exists():
            sys.exit(f"missing {what}: {p}")

    work = args.keep or Path(tempfile.mkdtemp(prefix="sensei-peer-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        write_files(field_rows(), args.records, work / "npz", work / "jsonl")
        print(f"wrote {args.records} records as .npz and .jsonl in {time.perf_counter() - t:.1f} s: {work}",
              file=sys.stderr)
        template = work / "template"
        (work / "template.toml").write_text(config(template, args.rate, args.library))
        run([args.sensei, "--config", work / "template.toml", "baseline", REPO / "models/demo/lab.npz"],
            work / "baseline.log")

        workloads = [(fmt, rate) for rate in (0.0, args.rate) for fmt in ("npz", "jsonl")]
        speeds = {(w, who): [] for w in workloads for who in ("sensei", "peer")}
        ratios = {w: [] for w in workloads}
        peer_steady = {w: [] for w in workloads}
        peer_startup = []
        steady_ratios = {w: [] for w in workloads}
        for r in range(args.rounds):
            for fmt, rate in workloads:
                walls = {}
                order = ("sensei", "peer") if r % 2 == 0 else ("peer", "sensei")
                for who in order:
                    state = work / f"state-{who}"
                    shutil.rmtree(state, ignore_errors=True)
                    copy_database(template / "sensei.db", state / "sensei.db")
                    cfg = work / f"{who}.toml"
                    cfg.write_text(config(state, rate, args.library))
                    if who == "sensei":
                        argv = [args.sensei, "--config", cfg, "replay", work / fmt]
                    else:
                        argv = [args.python, PEER, "--config", cfg, "--json", work / fmt]
                    walls[who] = run(argv, work / f"{who}.log")
                    if who == "peer":
                        summary = json.loads((work / "peer.log").read_text().splitlines()[-1])
                        peer_steady[(fmt, rate)].append(args.records / summary["processing_seconds"])
                        peer_startup.append(summary["startup_seconds"])
                    got = committed(state / "sensei.db")
                    if got != args.records:
                        sys.exit(f"{who} committed {got} of {args.records} records ({fmt}, rate {rate})")
                    speeds[((fmt, rate), who)].append(args.records / walls[who])
                ratios[(fmt, rate)].append(walls["peer"] / walls["sensei"])
                steady_ratios[(fmt, rate)].append(args.records / walls["sensei"] / peer_steady[(fmt, rate)][-1])
                print(f"round {r + 1}: {fmt}, teacher rate {rate}: sensei {walls['sensei']:.2f} s, "
                      f"peer {walls['peer']:.2f} s, ratio {walls['peer'] / walls['sensei']:.2f}",
                      file=sys.stderr, flush=True)

        print(f"records: {args.records} in {FILE_RECORDS}-record files; {args.rounds} interleaved rounds; "
              "records/s are medians over rounds of wall time including start-up; ratios are medians of "
              "per-round ratios")
        print(f"peer start-up (imports, models, database) before the first file: median "
              f"{statistics.median(peer_startup):.2f} s; the last two columns leave it out of the peer's "
              "time (not out of sensei's)\n")
        print("| workload | sensei records/s | Python peer records/s | sensei / peer | "
              "peer records/s after start-up | sensei / peer after start-up |")
        print("|---|---:|---:|---:|---:|---:|")
        for fmt, rate in workloads:
            w = (fmt, rate)
            teacher = "teacher off" if rate == 0 else f"teacher rate {rate}"
            print(f"| .{fmt}, {teacher} | {statistics.median(speeds[(w, 'sensei')]):.0f} | "
                  f"{statistics.median(speeds[(w, 'peer')]):.0f} | {statistics.median(ratios[w]):.2f} | "
                  f"{statistics.median(peer_steady[w]):.0f} | {statistics.median(steady_ratios[w]):.2f} |")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
