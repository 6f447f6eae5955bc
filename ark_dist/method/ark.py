"""Ark as one object: the student, its EMA teacher, the loss and the schedules.

Ordering rules:
- the teacher is a copy of the student made before any engine wraps the student (so it starts
  identical, projector and heads included), kept in fp32 and never trained;
- the teacher is updated only after real optimizer steps, from the student's full parameters (the
  engine gathers them under ZeRO-3; every rank performs the same update, so teachers stay
  bitwise identical across ranks);
- with r rounds done of R = epochs x datasets:
  m(r) = 1 - (1 - m0) (1 + cos(pi r / R)) / 2 and c(r) = c_end - c_end / 2 (1 + cos(pi r / R)).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ark_dist.method.config import MethodConfig


def momentum(config: MethodConfig, *, done: int, total: int) -> float:
    """Teacher momentum after `done` of `total` rounds (or steps, for per-step EMA)."""
    return 1 - (1 - config.momentum) * (1 + math.cos(math.pi * done / total)) / 2


def consistency(config: MethodConfig, *, done: int, total: int) -> float:
    """Weight of the consistency loss: 0 at the start, `config.consistency` at the end."""
    return config.consistency - config.consistency / 2 * (1 + math.cos(math.pi * done / total))


def task_loss(logits: torch.Tensor, *, target: torch.Tensor, mask: torch.Tensor, task: str) -> torch.Tensor:
    """Masked mean of BCE (multilabel, binary) or cross-entropy with class probabilities
    (multiclass). logits, target, mask: (B, K). Equals the plain mean when nothing is masked."""
    logits = logits.float()
    if task == "multiclass":
        per_sample = F.cross_entropy(logits, target, reduction="none")  # (B,)
        weight = mask[:, 0]
        return (per_sample * weight).sum() / weight.sum().clamp(min=1.0)
    per_label = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, K)
    return (per_label * mask).sum() / mask.sum().clamp(min=1.0)


def mixed_task_loss(logits: dict[str, torch.Tensor], *, target: torch.Tensor, mask: torch.Tensor,
                    dataset: torch.Tensor, heads: list[tuple[str, str]]) -> torch.Tensor:
    """The interleaved schedule's task loss: every head computed on the whole batch, each sample
    counted by its own head only. target/mask: (B, sum K) in the union label space (head d at its
    offset, in `heads` order), dataset: (B,) head index. Head d's masked mean is weighted by its
    share of the batch, so a batch of one dataset gives exactly `task_loss`; a head without
    samples contributes a zero that still reaches its parameters (every rank runs every head,
    as ZeRO's collectives require)."""
    total = logits[heads[0][0]].new_zeros((), dtype=torch.float32)
    offset = 0
    for d, (name, task) in enumerate(heads):
        width = logits[name].shape[1]
        rows = (dataset == d).to(mask.dtype)  # (B,)
        head_mask = mask[:, offset:offset + width] * rows[:, None]
        share = rows.sum() / len(rows)
        head_loss = task_loss(logits[name], target=target[:, offset:offset + width], mask=head_mask, task=task)
        total = total + share * head_loss
        offset += width
    return total


def consistency_loss(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between the projections (B, D); `valid` (B,) excludes padding rows."""
    error = (student.float() - teacher.float()).pow(2).mean(dim=1)
    if valid is None:
        return error.mean()
    weight = valid.float()
    return (error * weight).sum() / weight.sum().clamp(min=1.0)


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen fp32 copy of the student, in eval mode."""
    teacher = copy.deepcopy(student).float().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: Iterable[torch.Tensor], *, student: Iterable[torch.Tensor], m: float) -> None:
    """teacher = m * teacher + (1 - m) * student, in the teacher's fp32, tensor by tensor."""
    teacher, student = list(teacher), list(student)
    if len(teacher) != len(student):
        raise ValueError("teacher and student have different parameter lists")
    student = [s.detach().to(t.dtype) for t, s in zip(teacher, student)]
    torch._foreach_mul_(teacher, m)
    torch._foreach_add_(teacher, student, alpha=1 - m)
