"""The `tracking` section: where a run's metrics go besides its run folder (W&B, rank 0 only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(kw_only=True)
class TrackingConfig:
    """Weights & Biases. The run folder's `metrics.jsonl` is always written; W&B is optional."""

    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online with an API key, else offline
    project: str | None = None  # default: WANDB_PROJECT, else "ark-dist"
    entity: str | None = None  # default: WANDB_ENTITY, else your default entity
    group: str | None = None  # default: WANDB_RUN_GROUP; a sweep groups its trials under the sweep's name
    run_name: str | None = None  # default: WANDB_NAME, else train.name
    tags: list[str] = field(default_factory=list)  # the W&B run's tags
    dir: str | None = None  # W&B's local files; default: a local run folder, else WANDB_DIR, else ./wandb
