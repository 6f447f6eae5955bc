"""The `method` section: Ark's accrue-and-reuse schedule (DESIGN 3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TASKS = ("cls", "loc", "seg")  # classification, localization (boxes), segmentation (masks)


@dataclass(kw_only=True)
class FoundationConfig:
    """Foundation X (DESIGN 8): (dataset, task) steps in a fixed order, one round each, with
    Lock-Release for boxes and masks and a fixed-momentum EMA teacher updated after every pass."""

    steps: list[str] = field(default_factory=list)  # "dataset:task" in order (task cls|loc|seg); empty: Ark
    momentum: float = 0.8  # the teacher's fixed EMA momentum, after every pass
    consistency: float = 0.5  # weight of the student-teacher consistency term, every task
    lock_fraction: float = 0.5  # a loc/seg step's lock pass, as a fraction of its round (trunk frozen)
    backbone_lr_scale: float = 0.1  # the backbone's LR as a fraction of optim.lr (reference: 1e-5 vs 1e-4)
    dice_bce: float = 1.0  # weight of the masked BCE added to the soft Dice loss (0: Dice alone, the reference)
    warmup_cycles: int = 1  # cycles at warmup_scale x the LR before the cosine (stepped once a cycle) begins
    warmup_scale: float = 0.05  # the reference's first cycle at 1/20 of the LR

    def validate(self) -> None:
        for step in self.steps:
            dataset, _, task = step.partition(":")
            if not dataset or task not in TASKS:
                raise ValueError(f"steps: {step!r} is not dataset:task with task one of {', '.join(TASKS)}")
        if len(set(self.steps)) != len(self.steps):
            raise ValueError("steps: a (dataset, task) step is listed twice")
        if not 0 <= self.momentum <= 1 or not 0 <= self.consistency or not 0 < self.lock_fraction <= 1:
            raise ValueError("momentum in [0, 1], consistency >= 0 and lock_fraction in (0, 1] are required")
        if not 0 < self.backbone_lr_scale or self.dice_bce < 0 or self.warmup_cycles < 0 or not 0 < self.warmup_scale:
            raise ValueError("backbone_lr_scale > 0, dice_bce >= 0, warmup_cycles >= 0 and warmup_scale > 0 are required")


@dataclass(kw_only=True)
class MethodConfig:
    """Student + EMA teacher linked by a consistency loss on the projector."""

    momentum: float = 0.9  # m0: teacher momentum at the start, rising to 1 on a cosine
    consistency: float = 0.5  # c at the end, rising from 0 on a cosine
    ema: Literal["round", "step"] = "round"  # update the teacher after each round (Ark) or each step
    schedule: Literal["cyclic", "interleaved"] = "cyclic"  # one dataset per round (Ark) | all mixed
    foundation: FoundationConfig = field(default_factory=FoundationConfig)  # Foundation X, when steps are set

    def validate(self) -> None:
        if not 0 <= self.momentum <= 1 or not 0 <= self.consistency <= 1:
            raise ValueError("momentum and consistency must be within [0, 1]")
        self.foundation.validate()
