import numpy as np
import onnx
import pytest
import torch

from sensei_distill import onnx_io
from sensei_distill.model import EncoderClassifier, ModelConfig

CFG = ModelConfig(dim=16, heads=4, layers=2, ffn=32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = EncoderClassifier(CFG).eval()
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    onnx_io.export_onnx(model, path, "student")
    return model, path


def test_io_contract(exported):
    _, path = exported
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = proto.graph.input
    assert inp.name == "x" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [8, 8]
    outs = {o.name: o for o in proto.graph.output}
    assert set(outs) == {"logits", "attention"}
    assert outs["attention"].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("batch", [1, 5, 33])
def test_onnxruntime_matches_pytorch(exported, batch):
    model, path = exported
    x = np.random.default_rng(batch).random((batch, 8, 8), dtype=np.float32)
    got = onnx_io.ort_run(onnx_io.ort_session(path), x)
    with torch.no_grad():
        logits, att = model(torch.from_numpy(x))
    assert got["logits"].shape == (batch, 10) and got["attention"].shape == (batch, 4, 8, 8)
    assert np.abs(got["logits"] - logits.numpy()).max() < 1e-4
    assert np.abs(got["attention"] - att.numpy()).max() < 1e-5
    assert np.allclose(got["attention"].sum(-1), 1.0, atol=1e-5)


def test_weights_are_recovered_from_onnx(exported):
    model, path = exported
    back = onnx_io.load_torch_from_onnx(path)
    assert back.cfg == CFG
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_onnx_without_config_is_refused(exported, tmp_path):
    _, path = exported
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(onnx_io.OnnxWeightsError, match="sensei.distill.config"):
        onnx_io.load_torch_from_onnx(bare)
