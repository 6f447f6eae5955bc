"""The run's clock: rounds, steps and the LR schedule, all derived from the manifest and config."""

from __future__ import annotations

import math

from ark_dist.data import round_steps


def steps_per_round(entries: list[dict], *, global_batch: int, max_steps: int | None) -> list[int]:
    """Optimizer steps of each dataset's round, in round order."""
    return [round_steps(e, global_batch=global_batch, max_steps=max_steps) for e in entries]


def lr_at(step: int, *, total: int, warmup: int, lr: float, min_lr: float, schedule: str = "cosine") -> float:
    """Linear warm-up to `lr` over `warmup` steps, then cosine down to `min_lr` at `total`
    (`schedule="constant"`: `lr` after the warm-up)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
