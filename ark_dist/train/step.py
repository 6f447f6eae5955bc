"""The Ark step's forward half, shared by the trainer and `bench step`: views rendered on the
device, the student on its dataset's head (or every head, interleaved), the teacher's projection
without gradients, and `(1 - c) task + c MSE(projections)`. No Ray, no DeepSpeed."""

from __future__ import annotations

import torch

from ark_dist.data import canvases, render
from ark_dist.method import consistency_loss, mixed_task_loss, task_loss


def ark_loss(student, teacher: torch.nn.Module, batch: dict, *, heads: list[tuple[str, str]], c: float, size: int,
             dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (loss, task loss). `heads`: (dataset, task) pairs; the round's one for a cyclic batch, all
    of them (in union-label order) for an interleaved batch, which carries `dataset` (B,).
    `student` may be a DeepSpeed engine (its module in `dtype`) or a plain module under autocast."""
    images = canvases(batch, device)  # (B, 1, L, L) uint8 (JPEGs decoded here under data.decode: device)
    student_in = render(images, theta=batch["theta_student"].to(device), size=size,
                        photo=batch["photo"].to(device))  # (B, 3, S, S)
    teacher_in = render(images, theta=batch["theta_teacher"].to(device), size=size)
    target, mask = batch["target"].to(device), batch["mask"].to(device)
    # Every head runs every step, also in a cyclic round: the heads a round does not train get an
    # exact zero gradient on every ZeRO stage alike (SGD momentum keeps moving them, as in Ark under
    # torch 1.x, whose zero_grad kept zero tensors), and ZeRO-3 sees the same modules each step.
    out = student(student_in.to(dtype))
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        target_proj = teacher(teacher_in, heads=[]).projection  # the fp32 teacher, at the student's precision
    if "dataset" in batch:  # interleaved: each sample to its own head
        task = mixed_task_loss(out.logits, target=target, mask=mask, dataset=batch["dataset"].to(device), heads=heads)
    else:
        (name, kind), = heads
        idle = sum(logits.sum() for other, logits in out.logits.items() if other != name)
        task = task_loss(out.logits[name], target=target, mask=mask, task=kind) + 0.0 * idle
    return (1 - c) * task + c * consistency_loss(out.projection, target_proj), task


SAMPLE_KEYS = ("image", "jpeg_start", "jpeg_end", "target", "mask", "theta_student", "theta_teacher", "photo", "dataset",
               "valid", "ids")  # per-row keys; `jpeg` is one flat buffer the rows' starts and ends index


def micro_batches(batch: dict, parts: int) -> list[dict]:
    """A rank's step batch (B samples) as `parts` micro-batches of B / parts, in order. Gradient
    accumulation over them equals one step on the whole batch: the micro-batches are equal in size
    and DeepSpeed averages their gradients (exactly so where no label is masked; a masked label
    weighs by its micro-batch's count instead of the whole batch's)."""
    if parts == 1:
        return [batch]
    size = len(batch["valid"])
    if size % parts:
        raise ValueError(f"a batch of {size} does not split into {parts} equal micro-batches")
    step = size // parts
    return [{k: (v[i:i + step] if k in SAMPLE_KEYS else v) for k, v in batch.items()} for i in range(0, size, step)]
