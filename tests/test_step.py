"""`ark_loss` against a step built by hand (DESIGN 3): the student sees its geometry plus its
photometric change, the teacher the same geometry without it (MICCAI) or the whole image (Ark+),
and loss = (1 - c) task + c MSE(student projection, teacher projection).

The oracle renders the views itself (bilinear sampling written out in float64, no grid_sample)
and computes the losses with plain torch formulas; it captures what `ark_loss` fed each network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ark_dist.method import make_teacher
from ark_dist.model import ArkModel, ModelConfig
from ark_dist.train.step import ark_loss

# timm's Swin drops paths at random in train mode (drop_path_rate 0.1 by default): off, so the
# student computes the same function in the oracle and in ark_loss.
TINY = {"embed_dim": 24, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4, "img_size": 64, "drop_path_rate": 0.0}
HEADS = {"findings": 4, "classes": 3}  # a multilabel head and a multiclass head
TASKS = {"findings": "multilabel", "classes": "multiclass"}
SIZE, LOAD, BATCH, C = 64, 72, 4, 0.3
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The student's photometric change per sample, (kind, a, b): brightness/contrast x * a + b (kind 1),
# gamma x ** a (kind 2). Every sample gets a visible one.
PHOTO = [[1.0, 1.3, 0.08], [2.0, 0.6, 0.0], [1.0, 0.7, -0.1], [2.0, 1.8, 0.0]]


def _warp(scale: float, degrees: float, shift: tuple[float, float]) -> list[list[float]]:
    """Output -> input coordinates (normalised, [-1, 1]): a rotated crop of `scale` of each side,
    centred at `shift`. Small enough to stay inside the image, so no padding rule is involved."""
    a = math.radians(degrees)
    return [[scale * math.cos(a), -scale * math.sin(a), shift[0]], [scale * math.sin(a), scale * math.cos(a), shift[1]]]


STUDENT = [_warp(0.70, 8, (0.10, -0.05)), _warp(0.60, -9, (-0.12, 0.08)), _warp(0.75, 3, (0.0, 0.1)),
           _warp(0.65, -4, (0.1, 0.12))]
OTHER = [_warp(0.80, -5, (-0.05, 0.10)), _warp(0.85, 6, (0.05, -0.02)), _warp(0.70, -8, (0.1, -0.1)),
         _warp(0.75, 2, (-0.1, 0.0))]
IDENTITY = [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]] * BATCH
TEACHER = {"same_geometry": STUDENT, "whole_image": IDENTITY, "another_geometry": OTHER}


def oracle_view(image: np.ndarray, theta, photo=None) -> torch.Tensor:
    """(L, L) uint8 -> (3, SIZE, SIZE): bilinear sampling at theta @ (x, y, 1) of each output pixel
    centre (align_corners=False), the photometric change, [0, 1] clamp, ImageNet normalisation."""
    pixels = image.astype(np.float64) / 255.0
    length = pixels.shape[0]
    centres = (2 * np.arange(SIZE) + 1) / SIZE - 1
    x, y = np.meshgrid(centres, centres, indexing="xy")  # (S, S): x along columns, y along rows
    t = np.asarray(theta, dtype=np.float64)
    u = ((t[0, 0] * x + t[0, 1] * y + t[0, 2] + 1) * length - 1) / 2  # input column, in pixels
    v = ((t[1, 0] * x + t[1, 1] * y + t[1, 2] + 1) * length - 1) / 2  # input row
    assert u.min() >= 0 and v.min() >= 0 and u.max() <= length - 1 and v.max() <= length - 1
    u0, v0 = np.minimum(np.floor(u).astype(int), length - 2), np.minimum(np.floor(v).astype(int), length - 2)
    fu, fv = u - u0, v - v0
    out = ((1 - fu) * (1 - fv) * pixels[v0, u0] + fu * (1 - fv) * pixels[v0, u0 + 1]
           + (1 - fu) * fv * pixels[v0 + 1, u0] + fu * fv * pixels[v0 + 1, u0 + 1])
    if photo is not None:
        kind, a, b = photo
        out = out * a + b if kind == 1.0 else out ** a
    out = np.clip(out, 0.0, 1.0)
    return torch.tensor(np.stack([(out - m) / s for m, s in zip(MEAN, STD)]), dtype=torch.float32)


class Recording(nn.Module):
    """A model that remembers the images it was given."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, images, heads=None):
        self.seen.append(images.detach().clone())
        return self.model(images, heads=heads)


def _batch(head: str, teacher: str) -> dict:
    rng = np.random.default_rng(7)
    # Smooth structure plus noise, kept off 0 and 255 so no clamp decides a pixel before the change.
    ramp = np.linspace(20, 230, LOAD)[None, :] * np.linspace(0.6, 1.0, LOAD)[:, None]
    image = np.clip(ramp[None] + rng.normal(0, 12, (BATCH, LOAD, LOAD)), 10, 245).astype(np.uint8)
    width = HEADS[head]
    if TASKS[head] == "multiclass":
        target = np.eye(width, dtype=np.float32)[[0, 2, 1, 2]]
        mask = np.ones((BATCH, width), dtype=np.float32)
    else:
        target = (rng.random((BATCH, width)) < 0.5).astype(np.float32)
        target[1, 2] = 0.7  # an LSR-style soft target
        mask = np.ones((BATCH, width), dtype=np.float32)
        mask[2, 1] = mask[0, 3] = 0.0  # masked labels must not reach the loss
    return {"image": torch.from_numpy(image[:, None]),  # (B, 1, L, L) uint8
            "theta_student": torch.tensor(STUDENT, dtype=torch.float32),  # (B, 2, 3)
            "theta_teacher": torch.tensor(TEACHER[teacher], dtype=torch.float32),
            "photo": torch.tensor(PHOTO, dtype=torch.float32),  # (B, 3)
            "target": torch.from_numpy(target), "mask": torch.from_numpy(mask)}


def _oracle_loss(student, teacher, batch, head):
    """(loss, task, MSE, student views, teacher views) of the hand-built step."""
    images = batch["image"][:, 0].numpy()
    student_in = torch.stack([oracle_view(images[i], STUDENT[i], PHOTO[i]) for i in range(BATCH)])
    teacher_in = torch.stack([oracle_view(images[i], batch["theta_teacher"][i].numpy()) for i in range(BATCH)])
    out = student(student_in)
    with torch.no_grad():
        target_proj = teacher(teacher_in).projection
    logits, target, mask = out.logits[head], batch["target"], batch["mask"]
    if TASKS[head] == "multiclass":  # cross-entropy against the one-hot class
        task = -(target * torch.log_softmax(logits, dim=1)).sum(1).mean()
    else:  # BCE with logits, mean over the labels that are not masked
        p = torch.sigmoid(logits)
        bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p))
        task = (bce * mask).sum() / mask.sum()
    mse = ((out.projection - target_proj) ** 2).mean()
    return (1 - C) * task + C * mse, task, mse, student_in, teacher_in


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("teacher_view", list(TEACHER))
def test_ark_loss_equals_the_hand_built_step(teacher_view, head):
    torch.manual_seed(0)
    model = ArkModel(ModelConfig(backbone_kwargs=TINY, projector_dim=16), heads=HEADS)
    teacher = make_teacher(model)
    batch = _batch(head, teacher_view)
    want, want_task, want_mse, want_student_in, want_teacher_in = _oracle_loss(model, teacher, batch, head)
    # The test has power only if the two terms differ (c <-> 1 - c) and the views differ.
    assert abs(want_task.item() - want_mse.item()) > 0.05 * want.item()
    assert (want_student_in - want_teacher_in).abs().amax() > 0.5

    student, watched = Recording(model), Recording(teacher)
    loss, task = ark_loss(student, watched, batch, heads=[(head, TASKS[head])], c=C, size=SIZE,
                          dtype=torch.float32, device=torch.device("cpu"))
    (student_in,), (teacher_in,) = student.seen, watched.seen
    student_error = (student_in - want_student_in).abs().amax().item()
    teacher_error = (teacher_in - want_teacher_in).abs().amax().item()
    assert student_error < 1e-4, f"the student's input is not its view: off by {student_error:.3f}"
    assert teacher_error < 1e-4, f"the teacher's input is not its view: off by {teacher_error:.3f}"
    assert task.item() == pytest.approx(want_task.item(), rel=1e-4)
    assert loss.item() == pytest.approx(want.item(), rel=1e-4)
    # Gradients reach the student only: the teacher is a target.
    loss.backward()
    assert model.omni_heads[head].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_the_oracle_renders_the_identity_as_the_plain_resized_image():
    """Anchors the oracle's coordinates: with the identity it must be a plain bilinear resize."""
    image = np.random.default_rng(0).integers(0, 256, (LOAD, LOAD), dtype=np.uint8)
    mine = oracle_view(image, IDENTITY[0])
    resized = F.interpolate(torch.from_numpy(image)[None, None].double() / 255, size=(SIZE, SIZE), mode="bilinear",
                            align_corners=False, antialias=False)[0, 0]
    expected = torch.stack([(resized - m) / s for m, s in zip(MEAN, STD)]).float()
    error = (mine - expected).abs().amax().item()
    assert error < 1e-5, error
