"""An ONNX model served by KServe's Python model server over the Open Inference Protocol
(KServe v2 REST), for sensei's remote-teacher tests.

    python kserve_teacher.py --model teacher=PATH [--model NAME=PATH ...] --http_port PORT

The metadata lists the model's inputs and outputs as ONNX Runtime reads them (dynamic axes as
-1); an inference request runs the model once on the whole batch and answers the outputs asked
for, in JSON or, when asked, the binary tensor extension.

Faults for the tests, each set by a flag:
  --delay SECONDS    wait this long before each answer (a slow server);
  --fail-every N     answer every N-th inference request with an HTTP error, 503 (a transient
                     error) unless --fail-status says which;
  --fail-status CODE the HTTP status of those errors (400, 404, 500: not transient);
  --answer FAULT     answer every inference request wrongly: `wrong-shape` (the output cut to
                     its first half of classes), `wrong-dtype` (the output as INT64),
                     `missing-output` (only the attention output), `garbage` (HTTP 200 with a
                     body that is not JSON), `too-long` (HTTP 200 with a body of 100 MiB, sent
                     without its length);
  --count-file PATH  append a line to PATH for each inference request, as it arrives (before
                     any delay or fault), so a test can count what reached the server;
  --hold-file PATH   while PATH exists, hold each inference request unanswered (a hung server
                     that still accepts and counts requests); once it is removed, answer.
"""

import argparse
import asyncio
import itertools
import os

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve import model_server
from kserve.model_server import app
from starlette.responses import JSONResponse, Response, StreamingResponse

DATATYPES = {"tensor(float)": "FP32", "tensor(int64)": "INT64"}


def describe(tensors):
    return [
        {
            "name": t.name,
            "datatype": DATATYPES.get(t.type, t.type),
            "shape": [d if isinstance(d, int) else -1 for d in t.shape],
        }
        for t in tensors
    ]


class OnnxTeacher(Model):
    def __init__(self, name, path, delay, answer):
        super().__init__(name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            path, options, providers=["CPUExecutionProvider"]
        )
        self.delay = delay
        self.answer = answer
        # The output sensei compares: the model's first.
        self.main = self.session.get_outputs()[0].name
        self.ready = True

    def get_input_types(self):
        return describe(self.session.get_inputs())

    def get_output_types(self):
        return describe(self.session.get_outputs())

    async def predict(self, request: InferRequest, headers=None):
        if self.delay:
            await asyncio.sleep(self.delay)
        feeds = {i.name: i.as_numpy() for i in request.inputs}
        wanted = [o.name for o in (request.request_outputs or [])] or [
            o.name for o in self.session.get_outputs()
        ]
        results = self.session.run(wanted, feeds)
        binary = request.use_binary_outputs
        outputs = []
        for name, value in zip(wanted, results):
            datatype = "FP32"
            value = np.ascontiguousarray(value, dtype=np.float32)
            if name == self.main and self.answer == "missing-output":
                continue
            if name == self.main and self.answer == "wrong-shape":
                value = np.ascontiguousarray(value[:, : max(1, value.shape[1] // 2)])
            if name == self.main and self.answer == "wrong-dtype":
                datatype, value = "INT64", np.rint(value * 1000).astype(np.int64)
            out = InferOutput(name=name, shape=list(value.shape), datatype=datatype)
            out.set_data_from_numpy(value, binary_data=binary)
            outputs.append(out)
        return InferResponse(
            response_id=request.id or "",
            model_name=self.name,
            infer_outputs=outputs,
            use_binary_outputs=binary,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument(
        "--model", action="append", required=True, help="NAME=PATH of an .onnx file"
    )
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--fail-status", type=int, default=503)
    parser.add_argument(
        "--answer",
        choices=[
            "right",
            "wrong-shape",
            "wrong-dtype",
            "missing-output",
            "garbage",
            "too-long",
        ],
        default="right",
    )
    parser.add_argument("--count-file")
    parser.add_argument("--hold-file")
    args, _ = parser.parse_known_args()
    requests = itertools.count(1)

    # Counting and the faults that are not the model's answer, before KServe's routes: every
    # inference request, whatever its model.
    @app.middleware("http")
    async def faults(request, call_next):
        if not request.url.path.endswith("/infer"):
            return await call_next(request)
        n = next(requests)
        if args.count_file:
            with open(args.count_file, "a") as f:
                f.write(f"{n}\n")
                f.flush()
                os.fsync(f.fileno())
        while args.hold_file and os.path.exists(args.hold_file):
            await asyncio.sleep(0.02)
        if args.fail_every and n % args.fail_every == 0:
            return JSONResponse(
                {"error": f"request {n} refused on purpose (--fail-every)"},
                status_code=args.fail_status,
            )
        if args.answer == "garbage":
            await request.body()
            return Response(
                b"<html><body>502 upstream \x00\xff not json</body></html>",
                status_code=200,
                media_type="text/html",
            )
        if args.answer == "too-long":
            await request.body()

            async def long_body():
                chunk = b'{"outputs": [' + b" " * (1 << 20)
                for _ in range(100):
                    yield chunk
                    await asyncio.sleep(0)

            return StreamingResponse(long_body(), media_type="application/json")
        return await call_next(request)

    models = [
        OnnxTeacher(name, path, args.delay, args.answer)
        for name, path in (m.split("=", 1) for m in args.model)
    ]
    ModelServer(http_port=args.http_port, enable_grpc=False, workers=1).start(models)
