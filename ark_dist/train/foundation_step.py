"""Foundation X's step and evaluation on one batch: the loss of a (dataset, task) pass, and the
dense heads' scoring. The student sees the student view (warp + photometric change); the teacher
sees the same warp without the photometric change, so dense features line up position by position
for the consistency term. Boxes and masks move with the warp (views.warp_box_lists, warp_masks)."""

from __future__ import annotations

import torch

from ark_dist.data.device_decode import canvases
from ark_dist.data.views import render, render_eval, warp_box_lists, warp_masks, eval_thetas
from ark_dist.method import task_loss
from ark_dist.method.foundation import Step, feature_consistency, seg_loss


def box_targets(batch: dict, *, theta: torch.Tensor, size: int, min_visible: float, device) -> list[dict]:
    """Per image {"boxes": (M, 4) input pixels, "labels": (M,)} under `theta` (B, 2, 3)."""
    boxes, labels = warp_box_lists(batch["boxes"], labels=batch["box_labels"], theta=theta.cpu(),
                                   sizes=batch["size"], out_size=size, min_visible=min_visible)
    return [{"boxes": b.to(device), "labels": lab.to(device)} for b, lab in zip(boxes, labels)]


def foundation_loss(student, teacher, batch: dict, *, step: Step, entry: dict, c: float, dice_bce: float,
                    views, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (loss, task loss) = task + c x consistency. A padding batch (no valid sample: a short
    rank's) gives zero, still through every parameter the pass uses."""
    size, model = views.image_size, getattr(student, "module", student)  # the module inside an engine
    images = canvases(batch, device)  # (B, 1, L, L) uint8
    theta = batch["theta_student"].to(device)
    student_in = render(images, theta=theta, size=size, photo=batch["photo"].to(device))  # (B, 3, S, S)
    teacher_in = render(images, theta=theta, size=size)
    out = student(student_in.to(dtype), task=step.task, dataset=step.dataset)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        target = teacher(teacher_in, task=step.task, dataset=step.dataset)
    valid = batch["valid"].to(device)
    if step.task == "cls":
        mask = batch["mask"].to(device) * valid[:, None].float()
        task = task_loss(out.logits[step.dataset], target=batch["target"].to(device), mask=mask, task=entry["task"])
        consistency = feature_consistency(out.features, target.features, normalize=False)
    elif step.task == "loc":
        targets = box_targets(batch, theta=theta, size=size, min_visible=views.box_min_visible, device=device)
        task = sum(model.loc_heads[step.dataset].loss(out.loc, targets).values())
        consistency = feature_consistency(out.features, target.features, normalize=True)
    else:
        masks = warp_masks(batch["masks"].to(device), theta=theta, size=size)  # (B, C, S, S)
        known = batch["mask_known"].to(device) & valid[:, None]
        task = seg_loss(out.masks, target=masks, known=known, bce=dice_bce)
        consistency = feature_consistency(out.features, target.features, normalize=True)
    loss = task + c * consistency + model.idle(out, task=step.task, dataset=step.dataset)
    if not bool(valid.any()):  # padding: zero, with the graph (and so ZeRO's hooks) intact
        loss, task = loss * 0.0, task * 0.0
    return loss, task


@torch.no_grad()
def dense_scores(model, batch: dict, *, step: Step, views, dtype, device) -> dict:
    """The centre-crop evaluation of a dense head on one batch (valid samples only), as the
    task's meter takes it: loc {predictions, truths}, per image dicts in input pixels; seg
    {probs (N, C, S, S), target (N, C, S, S), known (N, C)}."""
    valid = batch["valid"]
    images = render_eval(canvases(batch, device), views)[:, 0]  # (B, 3, S, S): the centre crop
    if len(images) == 1:  # FCOS's GroupNorm needs two values a group on its 1x1 level: score a pair
        images = images.repeat(2, 1, 1, 1)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = model(images, task=step.task, dataset=step.dataset)
    theta = eval_thetas(views)[:1].expand(len(valid), 2, 3)
    if step.task == "loc":
        detections = model.loc_heads[step.dataset].detect(out.loc)[:len(valid)]
        truths = box_targets(batch, theta=theta, size=views.image_size, min_visible=views.box_min_visible, device="cpu")
        return {"predictions": [{k: v.float().cpu() for k, v in d.items()} for d, ok in zip(detections, valid) if ok],
                "truths": [t for t, ok in zip(truths, valid) if ok]}
    probs = torch.sigmoid(out.masks.float()).cpu()[:len(valid)]
    targets = warp_masks(batch["masks"], theta=theta, size=views.image_size)
    return {"probs": probs[valid], "target": targets[valid], "known": batch["mask_known"][valid]}
