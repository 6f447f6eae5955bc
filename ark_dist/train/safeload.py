"""Checkpoints are data, never code: DeepSpeed's own loader unpickles anything (`torch.load(...,
weights_only=False)`), so a checkpoint folder someone tampered with could run code on every rank at
resume. Ours loads with torch's weights-only unpickler, which builds tensors and plain containers
only, plus the few DeepSpeed data classes its ZeRO optimizer states hold."""

from __future__ import annotations

import pickle
import re

import torch


def _allowed() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path, map_location=None):
    """`torch.load` that refuses any global outside tensors, plain data and `_allowed()`."""
    try:
        with torch.serialization.safe_globals(_allowed()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = found.group(1) if found else str(exc).splitlines()[0]
        raise ValueError(f"checkpoint file {path}: refused to unpickle {what}; a checkpoint holds tensors and "
                         f"plain data only (was the folder tampered with?)") from None


def guard(engine) -> None:
    """Route every checkpoint read of a DeepSpeed engine (model, ZeRO optimizer states) through
    `safe_load`."""
    engine.checkpoint_engine.load = safe_load
