"""Ark's method: schedules, losses and the EMA teacher (no distribution here)."""

from ark_dist.method.ark import consistency, consistency_loss, ema_update, make_teacher, mixed_task_loss, momentum, task_loss
from ark_dist.method.config import MethodConfig

__all__ = ["MethodConfig", "momentum", "consistency", "task_loss", "mixed_task_loss", "consistency_loss", "make_teacher", "ema_update"]
