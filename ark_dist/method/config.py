"""The `method` section: Ark's accrue-and-reuse schedule (DESIGN 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class MethodConfig:
    """Student + EMA teacher linked by a consistency loss on the projector."""

    momentum: float = 0.9  # m0: teacher momentum at the start, rising to 1 on a cosine
    consistency: float = 0.5  # c at the end, rising from 0 on a cosine
    ema: Literal["round", "step"] = "round"  # update the teacher after each round (Ark) or each step
    schedule: Literal["cyclic", "interleaved"] = "cyclic"  # one dataset per round (Ark) | all mixed

    def validate(self) -> None:
        if not 0 <= self.momentum <= 1 or not 0 <= self.consistency <= 1:
            raise ValueError("momentum and consistency must be within [0, 1]")
