r"""Self-attention distillation losses (MiniLM style) plus logit distillation.

For one sample, with A^t, A^s the last-layer attention probabilities of
teacher and student ([H, T, T], each row a distribution over keys), V^t, V^s
their last-layer values split into H heads ([H, T, d_t] and [H, T, d_s]),
z^t, z^s the logits and y the label:

    L_AT = 1/(H T) * sum_h sum_i KL( A^t_{h,i,:} || A^s_{h,i,:} )

    R_h  = softmax( V_h V_h^T / sqrt(d) )          (row-wise, d = head dim of that model)
    L_VR = 1/(H T) * sum_h sum_i KL( R^t_{h,i,:} || R^s_{h,i,:} )

    L_KD = tau^2 * KL( softmax(z^t / tau) || softmax(z^s / tau) )

    L_CE = -log softmax(z^s)_y                     (only where the label is known, y >= 0)

    L    = beta_at * L_AT + beta_vr * L_VR + gamma * L_KD + alpha * L_CE

with KL(p || q) = sum_j p_j (log p_j - log q_j).  Over a batch each term is a
weighted mean: sum_n w_n L_n / sum_n w_n (w_n = 1 in ordinary training, the
inverse-probability sampling weight when re-distilling on field data; the CE
term is normalised over the labelled samples only).  Teacher and student
must have the same number of heads and sequence length; their hidden sizes may
differ because the relations R are [T, T] whatever d is.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class LossWeights:
    attention: float = 1.0  # beta_at
    value_relation: float = 1.0  # beta_vr
    kd: float = 1.0  # gamma
    ce: float = 0.5  # alpha
    temperature: float = 2.0  # tau


def _row_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) along the last axis, both probability tensors."""
    return (p * (torch.log(p.clamp_min(_EPS)) - torch.log(q.clamp_min(_EPS)))).sum(-1)


def attention_kl(att_t: torch.Tensor, att_s: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over heads and query rows of KL(A^t || A^s). Shape [B]."""
    if att_t.shape[1:] != att_s.shape[1:]:
        raise ValueError(f"attention shapes differ: teacher {tuple(att_t.shape)} student {tuple(att_s.shape)}")
    return _row_kl(att_t, att_s).mean(dim=(1, 2))


def value_relation(v: torch.Tensor) -> torch.Tensor:
    """softmax(V V^T / sqrt(d)) for values [B, H, T, d] -> [B, H, T, T]."""
    d = v.shape[-1]
    return torch.softmax(torch.matmul(v, v.transpose(-1, -2)) / d**0.5, dim=-1)


def value_relation_kl(v_t: torch.Tensor, v_s: torch.Tensor) -> torch.Tensor:
    """Per-sample MiniLM value-relation loss. Shape [B]."""
    if v_t.shape[:3] != v_s.shape[:3]:
        raise ValueError(f"value shapes differ in batch/heads/tokens: {tuple(v_t.shape)} vs {tuple(v_s.shape)}")
    return _row_kl(value_relation(v_t), value_relation(v_s)).mean(dim=(1, 2))


def kd_kl(z_t: torch.Tensor, z_s: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample tau^2 * KL(softmax(z_t/tau) || softmax(z_s/tau)). Shape [B]."""
    log_p = F.log_softmax(z_t / temperature, dim=-1)
    log_q = F.log_softmax(z_s / temperature, dim=-1)
    return temperature**2 * (log_p.exp() * (log_p - log_q)).sum(-1)


def _wmean(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (values * w).sum() / w.sum().clamp_min(_EPS)


def distillation_loss(
    student: dict,
    teacher_logits: torch.Tensor,
    teacher_attention: torch.Tensor | None,
    teacher_values: torch.Tensor | None,
    labels: torch.Tensor | None,
    weights: torch.Tensor | None,
    lw: LossWeights,
) -> tuple[torch.Tensor, dict]:
    """The total loss L (see module docstring) and its parts as floats.

    `student` is the dict returned by EncoderClassifier.forward_all. Terms whose
    teacher target is None (or whose weight is 0) are left out.
    """
    z_s = student["logits"]
    b = z_s.shape[0]
    w = torch.ones(b, dtype=z_s.dtype) if weights is None else weights.to(z_s.dtype)
    total = z_s.new_zeros(())
    parts = {}
    if lw.kd:
        l_kd = _wmean(kd_kl(teacher_logits, z_s, lw.temperature), w)
        total = total + lw.kd * l_kd
        parts["kd"] = float(l_kd.detach())
    if lw.attention and teacher_attention is not None:
        l_at = _wmean(attention_kl(teacher_attention, student["attention"]), w)
        total = total + lw.attention * l_at
        parts["attention"] = float(l_at.detach())
    if lw.value_relation and teacher_values is not None:
        l_vr = _wmean(value_relation_kl(teacher_values, student["values"]), w)
        total = total + lw.value_relation * l_vr
        parts["value_relation"] = float(l_vr.detach())
    if lw.ce and labels is not None:
        known = labels >= 0
        if bool(known.any()):
            ce = F.cross_entropy(z_s[known], labels[known], reduction="none")
            l_ce = _wmean(ce, w[known])
            total = total + lw.ce * l_ce
            parts["ce"] = float(l_ce.detach())
    parts["total"] = float(total.detach())
    return total, parts
