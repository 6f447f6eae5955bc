"""Foundation X as the method sees it (DESIGN 8): which pass when, what a lock freezes, the
parameter groups, the teacher's EMA (buffers included) and the losses.

A cycle is the recipe's (dataset, task) steps in order, one round each. A classification step is
one pass over its round. A localization or segmentation step is Lock-Release: a lock pass over
`lock_fraction` of the round with the trunk frozen, then a release pass over a whole round with
everything trained. The teacher moves after every pass, with a fixed momentum.

The lock freezes by a zero learning rate on the trunk's parameter groups, not by `requires_grad`:
every rank keeps the same parameters, gradients and collectives on every ZeRO stage, and AdamW's
decoupled weight decay is scaled by the same zero, so the trunk stays bitwise unchanged. (Its Adam
moments still see the lock pass's gradients, which a `requires_grad` freeze would not show them.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ark_dist.method.ark import ema_update
from ark_dist.method.config import FoundationConfig

# The model's parts (ark_dist/model/foundation.py), one optimizer group each: every trainable
# parameter is in exactly one (the reference left the localization outputs, input projections and
# query embeddings in none).
PARTS = ("backbone", "projector", "omni_heads", "loc_neck", "loc_heads", "seg_decoder", "seg_heads")
# What a lock pass freezes: for boxes the backbone and the shared encoder (the FPN neck); for masks
# everything but the dataset's own head.
TRUNK = {"cls": (), "loc": ("backbone", "loc_neck"), "seg": ("backbone", "projector", "omni_heads", "loc_neck",
                                                             "loc_heads", "seg_decoder")}


@dataclass(frozen=True)
class Step:
    dataset: str
    task: str  # cls | loc | seg

    def __str__(self) -> str:
        return f"{self.dataset}:{self.task}"


@dataclass(frozen=True)
class Pass:
    step: Step
    kind: str  # train (cls) | lock | release
    fraction: float  # of the step's round

    @property
    def locked(self) -> tuple[str, ...]:
        """The parts whose LR this pass sets to zero."""
        return TRUNK[self.step.task] if self.kind == "lock" else ()


def parse_steps(config: FoundationConfig) -> list[Step]:
    return [Step(*s.split(":", 1)) for s in config.steps]


def passes(config: FoundationConfig) -> list[Pass]:
    """One cycle's passes in order."""
    out = []
    for step in parse_steps(config):
        if step.task == "cls":
            out.append(Pass(step, "train", 1.0))
        else:
            out += [Pass(step, "lock", config.lock_fraction), Pass(step, "release", 1.0)]
    return out


def pass_steps(item: Pass, *, round_steps: int) -> int:
    """Optimizer steps in a pass of a round of `round_steps` (a lock pass takes at least one)."""
    return max(1, math.floor(item.fraction * round_steps)) if item.kind == "lock" else round_steps


def cycle_lr_scale(cycle: int, *, cycles: int, warmup: int = 1, warmup_scale: float = 0.05) -> float:
    """The reference's LR: `warmup_scale` for the first `warmup` cycles, then a cosine stepped once
    per cycle from 1 down to 0 over the remaining cycles (their first at 1)."""
    if cycle < warmup:
        return warmup_scale
    rest = max(cycles - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * (cycle - warmup) / rest))


@dataclass(frozen=True)
class Clock:
    """The run's position for Foundation X: `steps[i]` optimizer steps in pass i of every cycle."""

    passes: tuple[Pass, ...]
    steps: tuple[int, ...]
    cycles: int
    warmup_cycles: int = 1
    warmup_scale: float = 0.05

    def locate(self, step: int) -> tuple[int, int]:
        """(cycle, pass index) of optimizer step `step` (0-based over the run)."""
        cycle, within = divmod(step, sum(self.steps))
        for index, count in enumerate(self.steps):
            if within < count:
                return min(cycle, self.cycles - 1), index
            within -= count
        raise AssertionError("unreachable: within < sum(steps)")

    def lr_scales(self, groups: list[dict]) -> list:
        """Per group, LambdaLR's factor for step s: the cycle's LR scale, times 0 where the pass of
        step s locks the group's part."""
        def scale(step: int, name: str) -> float:
            cycle, index = self.locate(step)
            locked = name in self.passes[index].locked
            return 0.0 if locked else cycle_lr_scale(cycle, cycles=self.cycles, warmup=self.warmup_cycles,
                                                     warmup_scale=self.warmup_scale)
        return [lambda step, name=g["name"]: scale(step, name) for g in groups]


def parameter_groups(model: nn.Module, *, lr: float, backbone_lr_scale: float, weight_decay: float) -> list[dict]:
    """One AdamW group per part present in the model (`name` says which): the backbone at
    `backbone_lr_scale` x `lr`, the rest at `lr`; frozen parameters in none."""
    groups = []
    for part in PARTS:
        module = getattr(model, part, None)
        params = [p for p in module.parameters() if p.requires_grad] if module is not None else []
        if params:
            scale = backbone_lr_scale if part == "backbone" else 1.0
            groups.append({"name": part, "params": params, "lr": lr * scale, "weight_decay": weight_decay})
    return groups


def ungrouped(model: nn.Module, groups: list[dict]) -> list[str]:
    """Names of the trainable parameters that no group holds (must be none)."""
    held = {id(p) for g in groups for p in g["params"]}
    return [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in held]


@torch.no_grad()
def ema_module(teacher: nn.Module, *, student_params, student_buffers, m: float) -> None:
    """teacher = m teacher + (1 - m) student for the parameters (the student's fp32 masters, in
    order) and the floating buffers (BatchNorm's running statistics, which the reference left at
    their start); other buffers (counters, indices) are copied."""
    ema_update(teacher.parameters(), student=student_params, m=m)
    mine, theirs = list(teacher.buffers()), list(student_buffers)
    if len(mine) != len(theirs):
        raise ValueError("teacher and student have different buffer lists")
    floating = [(t, s) for t, s in zip(mine, theirs) if t.is_floating_point()]
    if floating:
        ema_update([t for t, _ in floating], student=[s for _, s in floating], m=m)
    for t, s in zip(mine, theirs):
        if not t.is_floating_point():
            t.copy_(s)


def seg_loss(logits: torch.Tensor, *, target: torch.Tensor, known: torch.Tensor, bce: float) -> torch.Tensor:
    """Soft Dice over the known (image, class) masks, plus `bce` x their mean BCE.
    logits, target: (B, C, H, W); known: (B, C) bool."""
    from ark_dist.train.dense_metrics import soft_dice_loss

    loss = soft_dice_loss(logits, target=target, known=known)
    if bce:
        per_mask = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").mean((2, 3))
        weight = known.float()
        loss = loss + bce * (per_mask * weight).sum() / weight.sum().clamp(min=1.0)
    return loss


def feature_consistency(student: list[torch.Tensor], teacher: list[torch.Tensor], *, normalize: bool) -> torch.Tensor:
    """Mean over the tensors of the MSE between student and teacher features; `normalize` first
    L2-normalises each position's channel vector (dim 1), as the reference does for dense maps."""
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher, strict=True):
        s, t = s.float(), t.float().detach()
        if normalize:
            s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        total = total + F.mse_loss(s, t)
    return total / len(student)
