"""The `tune` section: a Ray Tune sweep over this same config tree's dotted keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SAMPLERS = {"grid": "a list of values, all tried", "choice": "a list of values, one drawn per trial",
            "uniform": "[low, high]", "loguniform": "[low, high], both > 0", "randint": "[low, high), integers",
            "quniform": "[low, high, step]"}


@dataclass(kw_only=True)
class TuneConfig:
    """`python launch.py tune`: every trial is one training run (a TorchTrainer with its own
    `engine.num_workers` workers) whose config is this file's with the sampled keys replaced.
    A `space` entry is one sampler: `{grid: [v, ...]}` (all tried), `{choice: [v, ...]}`,
    `{uniform: [low, high]}`, `{loguniform: [low, high]}`, `{randint: [low, high]}` (high excluded)
    or `{quniform: [low, high, step]}`, e.g. `optim.lr: {loguniform: [0.01, 1.0]}`."""

    name: str = "sweep"  # stable: trials are stored under <train.storage_path>/<name>; re-running resumes
    space: dict[str, dict[str, Any]] = field(default_factory=dict)  # dotted key -> {sampler: values}: see below
    num_samples: int = 1  # trials drawn from the space; with grid keys, this many per grid point
    search: Literal["random"] = "random"  # Tune's variant generator: grid keys crossed, the others sampled
    metric: str = "auc/val/mean/teacher"  # reported at every evaluation (train.eval_every)
    mode: Literal["max", "min"] = "max"  # whether a higher or a lower metric is better
    scheduler: Literal["asha", "fifo"] = "asha"  # asha stops the worst trials early; fifo runs all to the end
    grace_period: int = 1  # epochs a trial trains before ASHA may stop it
    reduction_factor: float = 2.0  # ASHA keeps the best 1/reduction_factor at each rung
    max_concurrent_trials: int = 0  # 0: as many as the cluster's resources fit
    max_failures: int = 1  # restarts of a trial's workers after a failure, before the trial errors

    def validate(self) -> None:
        if self.num_samples < 1 or self.grace_period < 1 or self.reduction_factor <= 1:
            raise ValueError("num_samples >= 1, grace_period >= 1 and reduction_factor > 1 are required")
        if self.max_concurrent_trials < 0 or self.max_failures < 0:
            raise ValueError("max_concurrent_trials and max_failures must be >= 0")
        for key, spec in self.space.items():
            kinds = [k for k in spec if k in SAMPLERS]
            if len(spec) != 1 or len(kinds) != 1:
                raise ValueError(f"space.{key}: expected exactly one of {', '.join(SAMPLERS)}, got {spec!r}")
            kind, values = kinds[0], spec[kinds[0]]
            if not isinstance(values, list) or not values:
                raise ValueError(f"space.{key}.{kind}: expected {SAMPLERS[kind]}, got {values!r}")
            if kind in ("uniform", "loguniform", "randint", "quniform"):
                bounds = 3 if kind == "quniform" else 2
                if len(values) != bounds or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in values) or values[0] >= values[1]:
                    raise ValueError(f"space.{key}.{kind}: expected {SAMPLERS[kind]} with low < high, got {values!r}")
                if kind == "loguniform" and values[0] <= 0:
                    raise ValueError(f"space.{key}.loguniform: bounds must be > 0, got {values!r}")
