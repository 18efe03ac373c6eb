import math

import pytest
import torch

from sensei_distill.losses import (LossWeights, attention_kl, distillation_loss, kd_kl, value_relation,
                                   value_relation_kl)

KL_HALF_QUARTER = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # KL([.5,.5] || [.25,.75])


def test_attention_kl_known_value():
    t = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # [B=1, H=1, T=2, T=2]
    s = torch.tensor([[[[0.25, 0.75], [1.0, 0.0]]]])
    # row 0 contributes KL_HALF_QUARTER, row 1 contributes 0; mean over rows
    assert attention_kl(t, s).item() == pytest.approx(KL_HALF_QUARTER / 2, rel=1e-5)


def test_attention_kl_is_zero_for_equal_and_positive_otherwise():
    a = torch.softmax(torch.randn(3, 4, 8, 8), -1)
    b = torch.softmax(torch.randn(3, 4, 8, 8), -1)
    assert torch.allclose(attention_kl(a, a), torch.zeros(3), atol=1e-6)
    assert (attention_kl(a, b) > 0).all()


def test_attention_kl_rejects_different_heads():
    with pytest.raises(ValueError):
        attention_kl(torch.ones(1, 4, 8, 8) / 8, torch.ones(1, 2, 8, 8) / 8)


def test_value_relation_known_value():
    v = torch.eye(2).reshape(1, 1, 2, 2)  # V V^T = I, d = 2
    r = value_relation(v)
    e = math.exp(1 / math.sqrt(2))
    assert r[0, 0, 0].tolist() == pytest.approx([e / (e + 1), 1 / (e + 1)], rel=1e-5)
    assert r[0, 0, 1].tolist() == pytest.approx([1 / (e + 1), e / (e + 1)], rel=1e-5)


def test_value_relation_kl_zero_for_equal_and_allows_different_hidden_sizes():
    vt = torch.randn(2, 4, 8, 24)
    assert torch.allclose(value_relation_kl(vt, vt), torch.zeros(2), atol=1e-6)
    vs = torch.randn(2, 4, 8, 8)  # a student with a smaller head dimension
    out = value_relation_kl(vt, vs)
    assert out.shape == (2,) and (out > 0).all()


def test_kd_known_values():
    zt = torch.tensor([[0.0, 0.0]])
    zs = torch.tensor([[math.log(3.0), 0.0]])  # softmax = [.75, .25]
    assert kd_kl(zt, zs, 1.0).item() == pytest.approx(KL_HALF_QUARTER, rel=1e-5)
    # tau = 2: q = softmax([ln3 / 2, 0]) = [sqrt3, 1] / (sqrt3 + 1), scaled by tau^2 = 4
    q0 = math.sqrt(3) / (math.sqrt(3) + 1)
    want = 4 * (0.5 * math.log(0.5 / q0) + 0.5 * math.log(0.5 / (1 - q0)))
    assert kd_kl(zt, zs, 2.0).item() == pytest.approx(want, rel=1e-5)


def _outputs(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"logits": torch.randn(b, 10, generator=g),
            "attention": torch.softmax(torch.randn(b, 4, 8, 8, generator=g), -1),
            "values": torch.randn(b, 4, 8, 16, generator=g)}


def test_total_loss_zero_when_student_equals_teacher():
    t = _outputs()
    total, parts = distillation_loss(t, t["logits"], t["attention"], t["values"], None, None, LossWeights(ce=0.0))
    assert total.item() == pytest.approx(0.0, abs=1e-5)
    assert set(parts) == {"kd", "attention", "value_relation", "total"}


def test_total_loss_is_the_weighted_sum_of_its_terms():
    s, t = _outputs(seed=1), _outputs(seed=2)
    lw = LossWeights(attention=2.0, value_relation=3.0, kd=0.5, ce=0.25, temperature=3.0)
    labels = torch.tensor([1, -1, 4])
    total, parts = distillation_loss(s, t["logits"], t["attention"], t["values"], labels, None, lw)
    ce = torch.nn.functional.cross_entropy(s["logits"][[0, 2]], labels[[0, 2]]).item()
    assert parts["ce"] == pytest.approx(ce, rel=1e-5)  # the unknown label (-1) is left out
    want = (2.0 * attention_kl(t["attention"], s["attention"]).mean() + 3.0 * value_relation_kl(t["values"], s["values"]).mean()
            + 0.5 * kd_kl(t["logits"], s["logits"], 3.0).mean()).item() + 0.25 * ce
    assert total.item() == pytest.approx(want, rel=1e-5)


def test_weights_select_samples():
    s, t = _outputs(seed=3), _outputs(seed=4)
    lw = LossWeights(ce=0.0)
    w = torch.tensor([0.0, 2.0, 0.0])
    weighted, _ = distillation_loss(s, t["logits"], t["attention"], t["values"], None, w, lw)
    one = {k: v[1:2] for k, v in s.items()}
    alone, _ = distillation_loss(one, t["logits"][1:2], t["attention"][1:2], t["values"][1:2], None, None, lw)
    assert weighted.item() == pytest.approx(alone.item(), rel=1e-5)
    full, _ = distillation_loss(s, t["logits"], t["attention"], t["values"], None, None, lw)
    assert full.item() != pytest.approx(alone.item(), rel=1e-3)


def test_missing_targets_drop_their_terms():
    s, t = _outputs(seed=5), _outputs(seed=6)
    _, parts = distillation_loss(s, t["logits"], None, None, None, None, LossWeights())
    assert set(parts) == {"kd", "total"} and parts["total"] == pytest.approx(parts["kd"])
