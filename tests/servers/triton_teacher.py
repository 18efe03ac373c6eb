"""ONNX models served by NVIDIA Triton Inference Server over the Open Inference Protocol
(KServe v2 REST, with Triton's binary tensor extension), for sensei's remote-teacher tests.

    python triton_teacher.py --model teacher=PATH [--model NAME=PATH ...] --http_port PORT \
        --workdir DIR [--grpc_port PORT]

The `tritonserver` binary and its Python backend come from PyPI's `nvidia-pytriton` (installed by
scripts/test.sh into .venv/oip-triton). This script writes a model repository in DIR: one Python
backend model per `--model`, which runs the ONNX file with ONNX Runtime on the whole batch; the
repository's config declares the inputs and outputs as ONNX Runtime reads them, with Triton's
batch axis. Then it becomes `tritonserver` (exec: the pid is the server's), HTTP only, on
127.0.0.1; with `--grpc_port`, Triton's gRPC endpoint too (for benches/grpc_http.py, which
compares the two; sensei speaks HTTP only).

Faults for the tests, each set by a flag:
  --delay SECONDS   wait this long before each answer (a slow server);
  --fail-every N    answer every N-th inference request with UNAVAILABLE (HTTP 503);
  --count-file PATH append a line to PATH for each inference request the model gets, before
                    any delay or fault, so a test can count what reached the server.
"""

import argparse
import os
import pathlib
import shutil
import sys
import sysconfig

import onnxruntime as ort
import pytriton

DATATYPES = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64"}
MAX_BATCH = 256

MODEL_PY = '''
import json
import time

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            parameters["onnx"], options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.delay = float(parameters.get("delay", "0"))
        self.fail_every = int(parameters.get("fail_every", "0"))
        self.count = 0
        self.count_file = parameters.get("count_file", "")

    def execute(self, requests):
        answers = []
        for request in requests:
            self.count += 1
            if self.count_file:
                with open(self.count_file, "a") as f:
                    f.write(f"{self.count}\\n")
            if self.fail_every and self.count % self.fail_every == 0:
                answers.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(
                        f"request {self.count} refused on purpose (--fail-every)",
                        pb_utils.TritonError.UNAVAILABLE,
                    )
                ))
                continue
            if self.delay:
                time.sleep(self.delay)
            feeds = {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                for name in self.inputs
            }
            wanted = request.requested_output_names() or self.outputs
            results = self.session.run(list(wanted), feeds)
            answers.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(value, dtype=np.float32))
                for name, value in zip(wanted, results)
            ]))
        return answers
'''


def tensors(kind, items):
    entries = []
    for t in items:
        dims = [d if isinstance(d, int) else -1 for d in t.shape][1:]
        entries.append(
            f'  {{ name: "{t.name}" data_type: {DATATYPES[t.type]} dims: {dims} }}'
        )
    return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"


def model_config(name, path, delay, fail_every, count_file):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {MAX_BATCH}\n'
        + tensors("input", session.get_inputs())
        + tensors("output", session.get_outputs())
        + 'instance_group [ { count: 1 kind: KIND_CPU } ]\n'
        + f'parameters: {{ key: "onnx" value: {{ string_value: "{path}" }} }}\n'
        + f'parameters: {{ key: "delay" value: {{ string_value: "{delay}" }} }}\n'
        + f'parameters: {{ key: "fail_every" value: {{ string_value: "{fail_every}" }} }}\n'
        + f'parameters: {{ key: "count_file" value: {{ string_value: "{count_file}" }} }}\n'
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH")
    parser.add_argument("--http_port", type=int, required=True)
    parser.add_argument("--grpc_port", type=int, default=None)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--count-file", default="")
    args = parser.parse_args()

    work = pathlib.Path(args.workdir)
    repository = work / "models"
    if repository.exists():
        shutil.rmtree(repository)
    for model in args.model:
        name, path = model.split("=", 1)
        path = pathlib.Path(path).resolve()
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "1" / "model.py").write_text(MODEL_PY)
        (repository / name / "config.pbtxt").write_text(
            model_config(name, path, args.delay, args.fail_every, args.count_file)
        )

    # Triton's Python backend runs each model in a stub process; the wheel ships one stub per
    # Python version, to be put beside the backend.
    dist = pathlib.Path(pytriton.__file__).parent / "tritonserver"
    backends = work / "backends"
    if not backends.exists():
        shutil.copytree(
            dist / "backends",
            backends,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        shutil.copy(
            dist / "python_backend_stubs" / version / "triton_python_backend_stub",
            backends / "python" / "triton_python_backend_stub",
        )

    env = dict(os.environ)
    libs = str(dist.parent.parent / "nvidia_pytriton.libs")
    env["LD_LIBRARY_PATH"] = ":".join(filter(None, [env.get("LD_LIBRARY_PATH"), libs]))
    # The stub embeds the system's libpython: it finds this environment's packages
    # (ONNX Runtime, numpy) through PYTHONPATH.
    env["PYTHONPATH"] = ":".join(
        filter(None, [sysconfig.get_paths()["purelib"], env.get("PYTHONPATH")])
    )
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}:{env.get('PATH', '')}"
    server = str(dist / "bin" / "tritonserver")
    os.execve(
        server,
        [
            server,
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={dist / 'caches'}",
            "--http-address=127.0.0.1",
            f"--http-port={args.http_port}",
            *(
                ["--allow-grpc=false"]
                if args.grpc_port is None
                else [
                    "--allow-grpc=true",
                    "--grpc-address=127.0.0.1",
                    f"--grpc-port={args.grpc_port}",
                ]
            ),
            "--allow-metrics=false",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true",
            "--log-verbose=0",
        ],
        env,
    )


if __name__ == "__main__":
    main()
