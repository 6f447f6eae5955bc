"""Which r, when: the one place that turns the run's position into Ark's schedule values.

Ark's reference (DESIGN 3) trains pass d of epoch e with consistency weight c(e·D + d), then
updates the teacher with momentum m(e·D + d): r is the number of rounds done *before* the pass,
for both. So the first update uses m(0) = m0 and the last one m(R - 1) < 1 (m(R) = 1 would
leave the teacher where it was). With `ema: step` the same rule counts optimizer steps: the
update after step s (0-based, over the whole run) uses m(s) of S steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from ark_dist.method.ark import consistency, momentum
from ark_dist.method.config import MethodConfig


@dataclass(frozen=True, kw_only=True)
class ArkSchedule:
    """The run's clock for the method: `steps[i]` optimizer steps in round i of every epoch."""

    config: MethodConfig
    steps: tuple[int, ...]
    epochs: int

    @property
    def total_rounds(self) -> int:
        return self.epochs * len(self.steps)

    @property
    def total_steps(self) -> int:
        return self.epochs * sum(self.steps)

    def round_index(self, epoch: int, index: int) -> int:
        """r of round `index` in `epoch`: the rounds done before it."""
        return epoch * len(self.steps) + index

    def first_step(self, epoch: int, index: int) -> int:
        """Optimizer steps done before round `index` of `epoch` starts."""
        return epoch * sum(self.steps) + sum(self.steps[:index])

    def consistency(self, epoch: int, index: int) -> float:
        """c for every step of the round."""
        return consistency(self.config, done=self.round_index(epoch, index), total=self.total_rounds)

    @property
    def ema_per_step(self) -> bool:
        """True: the teacher moves after every optimizer step; False: after every round."""
        return self.config.ema == "step"

    def round_momentum(self, epoch: int, index: int) -> float:
        """m of the teacher update after round `index` of `epoch` (`ema: round`)."""
        return momentum(self.config, done=self.round_index(epoch, index), total=self.total_rounds)

    def step_momentum(self, step: int) -> float:
        """m of the teacher update after optimizer step `step` (0-based over the run; `ema: step`)."""
        return momentum(self.config, done=step, total=self.total_steps)
