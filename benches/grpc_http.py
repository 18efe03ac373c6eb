"""Triton's gRPC endpoint against its HTTP one with binary tensors, from the same Python client
loop: would gRPC pay for itself as a transport for sensei's remote teacher?

    .venv/oip-triton/bin/python benches/grpc_http.py [--batches N] [--rounds N]

Starts NVIDIA Triton (tests/servers/triton_teacher.py, .venv/oip-triton, installed by
scripts/test.sh with tritonclient) on loopback with both endpoints, serving
models/demo/teacher.onnx, and sends batches of 32 demo records (models/demo/streams/clean.npz),
one request at a time, asking for `logits` [10] and `attention` [4, 8, 8] as sensei does:

- http: tritonclient.http, inputs and outputs in Triton's binary tensor extension;
- grpc: tritonclient.grpc, the same tensors in protobuf.

Both read the answer into numpy arrays. Rounds interleave the two; prints each round's
milliseconds per batch, the gRPC/HTTP ratio per round and the medians, as Markdown.
"""

import argparse
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

REPO = pathlib.Path(__file__).resolve().parent.parent
BATCH = 32


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_batch():
    x = np.load(REPO / "models/demo/streams/clean.npz")["x"].astype(np.float32)
    return np.ascontiguousarray(x[:BATCH])


def http_loop(client, x, n):
    started = time.perf_counter()
    for _ in range(n):
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        outputs = [
            httpclient.InferRequestedOutput("logits", binary_data=True),
            httpclient.InferRequestedOutput("attention", binary_data=True),
        ]
        result = client.infer("teacher", [inp], outputs=outputs)
        logits, attention = result.as_numpy("logits"), result.as_numpy("attention")
        assert logits.shape == (BATCH, 10) and attention.shape == (BATCH, 4, 8, 8)
    return (time.perf_counter() - started) * 1e3 / n


def grpc_loop(client, x, n):
    started = time.perf_counter()
    for _ in range(n):
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        outputs = [
            grpcclient.InferRequestedOutput("logits"),
            grpcclient.InferRequestedOutput("attention"),
        ]
        result = client.infer("teacher", [inp], outputs=outputs)
        logits, attention = result.as_numpy("logits"), result.as_numpy("attention")
        assert logits.shape == (BATCH, 10) and attention.shape == (BATCH, 4, 8, 8)
    return (time.perf_counter() - started) * 1e3 / n


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    http_port, grpc_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as work:
        log = open(pathlib.Path(work) / "triton.log", "w")
        server = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests/servers/triton_teacher.py"),
                "--model",
                f"teacher={REPO / 'models/demo/teacher.onnx'}",
                "--http_port",
                str(http_port),
                "--grpc_port",
                str(grpc_port),
                "--workdir",
                work,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            http = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
            grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            deadline = time.monotonic() + 90
            while True:
                if server.poll() is not None:
                    sys.exit(f"triton exited ({server.returncode}); see {log.name}")
                try:
                    if http.is_model_ready("teacher") and grpc.is_model_ready("teacher"):
                        break
                except Exception:
                    pass
                if time.monotonic() > deadline:
                    sys.exit("triton is not ready after 90 s")
                time.sleep(0.1)

            x = demo_batch()
            http_loop(http, x, 20)
            grpc_loop(grpc, x, 20)
            rows = []
            for _ in range(args.rounds):
                h = http_loop(http, x, args.batches)
                g = grpc_loop(grpc, x, args.batches)
                rows.append((h, g, g / h))
        finally:
            server.kill()
            server.wait()

    print(
        f"{args.batches} batches of {BATCH} demo records per case and round, one request at a "
        f"time, on loopback; Python clients (tritonclient)\n"
    )
    print("| round | HTTP, binary: ms/batch | gRPC: ms/batch | gRPC/HTTP time |")
    print("|---:|---:|---:|---:|")
    for i, (h, g, r) in enumerate(rows, 1):
        print(f"| {i} | {h:.2f} | {g:.2f} | {r:.3f} |")
    med = [statistics.median(c) for c in zip(*rows)]
    print(f"| median | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.3f} |")
    lo, hi = min(r[2] for r in rows), max(r[2] for r in rows)
    print(f"\ngRPC/HTTP time per round: {lo:.3f}–{hi:.3f}")


if __name__ == "__main__":
    main()
