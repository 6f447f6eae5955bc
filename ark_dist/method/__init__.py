"""Ark's method: schedules, losses and the EMA teacher (no distribution here)."""

from ark_dist.method.ark import consistency, consistency_loss, ema_update, make_teacher, mixed_task_loss, momentum, task_loss
from ark_dist.method.config import MethodConfig
from ark_dist.method.schedule import ArkSchedule

__all__ = ["MethodConfig", "ArkSchedule", "momentum", "consistency", "task_loss", "mixed_task_loss", "consistency_loss", "make_teacher", "ema_update"]
