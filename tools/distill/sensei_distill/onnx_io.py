"""ONNX export, ONNX Runtime inference, and weight recovery from ONNX files.

Exported models take one input `x` float32 [batch, T, C] (dynamic batch,
dim_param "batch") and give `logits` float32 [batch, K] and `attention`
float32 [batch, H, T, T] (the last layer's attention probabilities).

The model's architecture is stored in the ONNX metadata under
`sensei.distill.config`; every weight is an initializer named after its
PyTorch parameter (equal-valued parameters are not merged).  `load_torch_from_onnx` rebuilds the PyTorch module from
those two things, so a student exported by build_demo.py or by an earlier
redistill.py run can always be fine-tuned again.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from .model import EncoderClassifier, ModelConfig

CONFIG_KEY = "sensei.distill.config"
ROLE_KEY = "sensei.distill.role"
OPSET = 17


class OnnxWeightsError(Exception):
    pass


def export_onnx(model: EncoderClassifier, path: Path, role: str, extra_meta: dict | None = None) -> None:
    import onnx

    model = model.eval()
    cfg = model.cfg
    dummy = torch.zeros(2, cfg.seq_len, cfg.channels)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            buf,
            input_names=["x"],
            output_names=["logits", "attention"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}, "attention": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            # True turns off the exporter's merging of equal-valued initializers, which
            # would lose parameter names; the extra graph inputs are removed below.
            keep_initializers_as_inputs=True,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    init_names = {t.name for t in proto.graph.initializer}
    keep = [i for i in proto.graph.input if i.name not in init_names]
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    meta = {CONFIG_KEY: cfg.to_json(), ROLE_KEY: role}
    meta.update(extra_meta or {})
    del proto.metadata_props[:]
    for k, v in sorted(meta.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, str(v)
    proto.producer_name = "sensei-distill"
    proto.doc_string = f"sensei demo {role}: transformer encoder classifier over 8x8 sensor arrays"
    onnx.checker.check_model(proto)
    Path(path).write_bytes(proto.SerializeToString())


def ort_session(path: Path, threads: int | None = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def ort_run(sess, x: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """Run a session over x in batches; returns every output, concatenated."""
    names = [o.name for o in sess.get_outputs()]
    in_name = sess.get_inputs()[0].name
    parts: dict[str, list] = {n: [] for n in names}
    for i in range(0, len(x), batch):
        outs = sess.run(names, {in_name: np.ascontiguousarray(x[i : i + batch], dtype=np.float32)})
        for n, o in zip(names, outs):
            parts[n].append(o)
    return {n: np.concatenate(v) for n, v in parts.items()}


def read_metadata(path: Path) -> dict[str, str]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def load_torch_from_onnx(path: Path) -> EncoderClassifier:
    """Rebuild the PyTorch module of an ONNX file written by export_onnx."""
    import onnx
    from onnx import numpy_helper

    try:
        proto = onnx.load(str(path))
    except Exception as e:  # onnx raises several types for unreadable files
        raise OnnxWeightsError(f"{path}: cannot read ONNX file: {e}") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if CONFIG_KEY not in meta:
        raise OnnxWeightsError(
            f"{path}: no '{CONFIG_KEY}' metadata; only models exported by tools/distill can be fine-tuned"
        )
    model = EncoderClassifier(ModelConfig.from_json(meta[CONFIG_KEY]))
    inits = {t.name: t for t in proto.graph.initializer}
    state = {}
    missing = []
    for name, param in model.state_dict().items():
        if name not in inits:
            missing.append(name)
            continue
        arr = numpy_helper.to_array(inits[name])
        if tuple(arr.shape) != tuple(param.shape):
            raise OnnxWeightsError(f"{path}: initializer {name} has shape {arr.shape}, expected {tuple(param.shape)}")
        state[name] = torch.from_numpy(arr.copy())
    if missing:
        raise OnnxWeightsError(f"{path}: initializers missing for parameters {missing}")
    model.load_state_dict(state)
    return model.eval()
