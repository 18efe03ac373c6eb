"""Training loops: teacher (cross-entropy), student (distillation) and
fine-tuning on a re-distillation dataset with replay."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from .losses import LossWeights, distillation_loss
from .model import EncoderClassifier

THREADS = 1


def set_determinism(seed: int, threads: int = THREADS) -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


@dataclasses.dataclass
class Targets:
    """Inputs and teacher targets for distillation (all tensors, N rows)."""

    x: torch.Tensor
    logits: torch.Tensor
    attention: torch.Tensor | None
    values: torch.Tensor | None
    label: torch.Tensor  # -1 unknown
    weight: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, idx: torch.Tensor) -> "Targets":
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return Targets(self.x[idx], self.logits[idx], pick(self.attention), pick(self.values), self.label[idx], self.weight[idx])


@torch.no_grad()
def teacher_targets(teacher: EncoderClassifier, x: np.ndarray | torch.Tensor, label=None, weight=None, batch: int = 512) -> Targets:
    teacher.eval()
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    outs = [teacher.forward_all(x[i : i + batch]) for i in range(0, len(x), batch)]
    cat = lambda k: torch.cat([o[k] for o in outs])  # noqa: E731
    n = len(x)
    lab = torch.full((n,), -1, dtype=torch.int64) if label is None else torch.as_tensor(np.asarray(label), dtype=torch.int64)
    w = torch.ones(n) if weight is None else torch.as_tensor(np.asarray(weight), dtype=torch.float32)
    return Targets(x, cat("logits"), cat("attention"), cat("values"), lab, w)


def _schedule(opt, total_steps: int, warmup: int):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def train_teacher(model: EncoderClassifier, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float = 2e-3,
                  batch: int = 64, seed: int = 0, log=None) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.int64)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(xt) / batch)
    sched = _schedule(opt, steps, max(1, steps // 20))
    history = []
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        tot = 0.0
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            loss = F.cross_entropy(model.forward_all(xt[idx])["logits"], yt[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        history.append(tot / len(xt))
        if log and (ep % 10 == 0 or ep == epochs - 1):
            log(f"teacher epoch {ep:3d} loss {history[-1]:.4f}")
    model.eval()
    return history


def distill(student: EncoderClassifier, main: Targets, lw: LossWeights, *, epochs: int, lr: float = 2e-3,
            batch: int = 64, seed: int = 0, replay: Targets | None = None, replay_share: float = 0.0,
            weight_decay: float = 0.01, log=None, tag: str = "student") -> list[float]:
    """Minimise the distillation loss on `main` (and `replay`, if given).

    With replay, every step draws round(batch * replay_share) replay samples
    next to the main batch and minimises
        (1 - replay_share) * L(main batch) + replay_share * L(replay batch).
    """
    gen = torch.Generator().manual_seed(seed)
    n_rep = int(round(batch * replay_share)) if replay is not None and len(replay) else 0
    n_main = max(1, batch - n_rep)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(main) / n_main)
    steps = epochs * steps_per_epoch
    sched = _schedule(opt, steps, max(1, steps // 20))
    history = []
    share = n_rep / (n_rep + n_main)
    for ep in range(epochs):
        student.train()
        perm = torch.randperm(len(main), generator=gen)
        tot = 0.0
        for i in range(0, len(main), n_main):
            mb = main.take(perm[i : i + n_main])
            loss, _ = _loss(student, mb, lw)
            if n_rep:
                rb = replay.take(torch.randint(len(replay), (n_rep,), generator=gen))
                rloss, _ = _loss(student, rb, lw)
                loss = (1 - share) * loss + share * rloss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach())
        history.append(tot / steps_per_epoch)
        if log and (ep % 10 == 0 or ep == epochs - 1):
            log(f"{tag} epoch {ep:3d} loss {history[-1]:.4f}")
    student.eval()
    return history


def _loss(student: EncoderClassifier, b: Targets, lw: LossWeights):
    out = student.forward_all(b.x)
    return distillation_loss(out, b.logits, b.attention, b.values, b.label, b.weight, lw)


@torch.no_grad()
def predict(model: EncoderClassifier, x: np.ndarray) -> np.ndarray:
    model.eval()
    return model.forward_all(torch.as_tensor(x, dtype=torch.float32))["logits"].numpy()
