"""An ONNX model served by KServe's Python model server over the Open Inference Protocol
(KServe v2 REST), for sensei's remote-teacher tests.

    python kserve_teacher.py --model teacher=PATH [--model NAME=PATH ...] --http_port PORT

The metadata lists the model's inputs and outputs as ONNX Runtime reads them (dynamic axes as
-1); an inference request runs the model once on the whole batch and answers the outputs asked
for, in JSON or, when asked, the binary tensor extension.

Faults for the tests, each set by a flag:
  --delay SECONDS   wait this long before each answer (a slow server);
  --fail-every N    answer every N-th inference request with HTTP 503 (a transient error).
"""

import argparse
import asyncio
import itertools

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve import model_server
from kserve.errors import ServerNotReady

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
    def __init__(self, name, path, delay, fail_every):
        super().__init__(name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            path, options, providers=["CPUExecutionProvider"]
        )
        self.delay = delay
        self.fail_every = fail_every
        self.requests = itertools.count(1)
        self.ready = True

    def get_input_types(self):
        return describe(self.session.get_inputs())

    def get_output_types(self):
        return describe(self.session.get_outputs())

    async def predict(self, request: InferRequest, headers=None):
        n = next(self.requests)
        if self.fail_every and n % self.fail_every == 0:
            raise ServerNotReady(f"request {n} refused on purpose (--fail-every)")
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
            value = np.ascontiguousarray(value, dtype=np.float32)
            out = InferOutput(name=name, shape=list(value.shape), datatype="FP32")
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
    args, _ = parser.parse_known_args()
    models = [
        OnnxTeacher(name, path, args.delay, args.fail_every)
        for name, path in (m.split("=", 1) for m in args.model)
    ]
    ModelServer(http_port=args.http_port, enable_grpc=False, workers=1).start(models)
