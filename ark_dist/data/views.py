"""Ark's views as one affine warp per sample (DESIGN 3 and 6).

RandomResizedCrop followed by ShiftScaleRotate composes into a single 2x3 matrix in normalised
coordinates; the loader draws it (numpy, per sample, reproducibly) and the training device applies
it to the whole batch with `affine_grid` + `grid_sample`, plus the student's brightness/contrast or
gamma. The loader thus only decodes, and the geometry is exact whatever the stored aspect ratio:
normalised coordinates are per axis, so squashing the stored image onto a square canvas changes
nothing but the sampling density.

Convention: a matrix maps output coordinates (x, y in [-1, 1]) to input coordinates.

Dense targets ride the same warp: `warp_boxes` moves boxes from stored-image pixels into the
render (through the matrix's inverse, since the matrix maps the other way), `warp_masks` samples
mask canvases with the image's grid (nearest, so a mask stays binary).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ark_dist.data.config import ViewConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PHOTO_NONE, PHOTO_BRIGHTNESS_CONTRAST, PHOTO_GAMMA = 0.0, 1.0, 2.0
PADDING = "reflection"  # what a view shows past the image's edge: images and masks alike


def _crop(rng: np.random.Generator, width: int, height: int, cfg: ViewConfig) -> np.ndarray:
    """RandomResizedCrop (torchvision's sampler) on a width x height image -> 3x3 matrix."""
    area = width * height
    log_ratio = (math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*cfg.crop_scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            x0, y0 = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
            break
    else:  # fallback: the largest centre crop within the ratio range
        ratio = width / height
        if ratio < cfg.crop_ratio[0]:
            w, h = width, round(width / cfg.crop_ratio[0])
        elif ratio > cfg.crop_ratio[1]:
            w, h = round(height * cfg.crop_ratio[1]), height
        else:
            w, h = width, height
        x0, y0 = (width - w) // 2, (height - h) // 2
    cx, cy = (x0 + w / 2) / width * 2 - 1, (y0 + h / 2) / height * 2 - 1
    return np.array([[w / width, 0, cx], [0, h / height, cy], [0, 0, 1]])


def _shift_scale_rotate(rng: np.random.Generator, cfg: ViewConfig) -> np.ndarray:
    """Inverse of ShiftScaleRotate on a square output -> 3x3 matrix (identity when not applied)."""
    if rng.uniform() >= cfg.shift_scale_rotate_p:
        return np.eye(3)
    angle = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    scale = rng.uniform(1 - cfg.scale, 1 + cfg.scale)
    shift = rng.uniform(-cfg.shift, cfg.shift, size=2) * 2  # a fraction of the side, in [-1, 1] units
    cos, sin = math.cos(angle), math.sin(angle)
    inv = np.array([[cos, sin], [-sin, cos]]) / scale  # (s R)^-1
    out = np.eye(3)
    out[:2, :2], out[:2, 2] = inv, -inv @ shift
    return out


def _photometric(rng: np.random.Generator, cfg: ViewConfig) -> np.ndarray:
    if rng.uniform() >= cfg.photometric_p:
        return np.array([PHOTO_NONE, 1.0, 0.0], dtype=np.float32)
    if rng.uniform() < 0.5:
        alpha = 1 + rng.uniform(-cfg.contrast, cfg.contrast)
        beta = rng.uniform(-cfg.brightness, cfg.brightness)
        return np.array([PHOTO_BRIGHTNESS_CONTRAST, alpha, beta], dtype=np.float32)
    return np.array([PHOTO_GAMMA, rng.uniform(*cfg.gamma), 0.0], dtype=np.float32)


def draw_views(rng: np.random.Generator, width: int, height: int, cfg: ViewConfig) -> dict:
    """The student's and teacher's warps and the student's photometric change for one sample of
    stored size width x height: {"theta_student": (2, 3), "theta_teacher": (2, 3), "photo": (3,)}."""
    crop, rotate = _crop(rng, width, height, cfg), _shift_scale_rotate(rng, cfg)
    if cfg.hflip_p and rng.uniform() < cfg.hflip_p:  # drawn only when asked: Ark's streams stay as they were
        crop = crop @ np.diag([-1.0, 1.0, 1.0])  # RandomResizedCrop, flip, then rotate (torchvision's order)
    student = (crop @ rotate)[:2].astype(np.float32)
    teacher = student if cfg.teacher == "same_geometry" else np.eye(3, dtype=np.float32)[:2]
    return {"theta_student": student, "theta_teacher": teacher.copy(), "photo": _photometric(rng, cfg)}


def eval_thetas(cfg: ViewConfig) -> torch.Tensor:
    """Evaluation warps: the centre crop, or ten crops (4 corners + centre, and their mirrors).
    Shape (1 or 10, 2, 3)."""
    c = cfg.eval_crop
    centres = [(0.0, 0.0)]
    if cfg.ten_crop:
        centres += [(sx * (1 - c), sy * (1 - c)) for sx in (-1, 1) for sy in (-1, 1)]
    thetas = [[[flip * c, 0, x], [0, c, y]] for flip in ((1, -1) if cfg.ten_crop else (1,)) for x, y in centres]
    return torch.tensor(thetas, dtype=torch.float32)


def _sample(x: torch.Tensor, *, theta: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(B, C, L, L) float -> (B, C, size, size) under (B, 2, 3) theta: the one grid every warp uses."""
    grid = F.affine_grid(theta.float(), [x.shape[0], 1, size, size], align_corners=False)  # C-free: C may be 0
    return F.grid_sample(x, grid, mode=mode, padding_mode=PADDING, align_corners=False)


def render(images: torch.Tensor, *, theta: torch.Tensor, size: int, photo: torch.Tensor | None = None) -> torch.Tensor:
    """Warp a batch and normalise it for an ImageNet backbone.

    images: (B, 1, L, L) uint8 canvas; theta: (B, 2, 3); photo: (B, 3) or None.
    Returns (B, 3, size, size) float32, grayscale repeated over ImageNet-normalised channels."""
    out = _sample(images.float().div_(255.0), theta=theta, size=size, mode="bilinear")  # (B, 1, S, S)
    if photo is not None:
        kind, a, b = (photo[:, i].view(-1, 1, 1, 1) for i in range(3))
        contrast = out * a + b
        gamma = out.clamp(min=1e-6).pow(a)
        out = torch.where(kind == PHOTO_BRIGHTNESS_CONTRAST, contrast, torch.where(kind == PHOTO_GAMMA, gamma, out))
    out = out.clamp_(0.0, 1.0)
    mean = out.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = out.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (out - mean) / std  # (B, 3, S, S) by broadcasting the single channel


def render_eval(images: torch.Tensor, cfg: ViewConfig) -> torch.Tensor:
    """(B, 1, L, L) uint8 -> (B, V, 3, S, S): V = 1 (centre crop) or 10 (ten-crop)."""
    thetas = eval_thetas(cfg).to(images.device)  # (V, 2, 3)
    batch, views = images.shape[0], thetas.shape[0]
    repeated = images.repeat_interleave(views, dim=0)
    out = render(repeated, theta=thetas.repeat(batch, 1, 1), size=cfg.image_size)
    return out.view(batch, views, 3, cfg.image_size, cfg.image_size)


def warp_boxes(boxes: torch.Tensor, *, theta: torch.Tensor, stored_size: tuple[int, int], out_size: int,
               min_visible: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes of the stored image as they sit in a square render of side `out_size` under `theta`.

    boxes: (N, 4) xyxy in stored-image pixels, edges (a box over pixels 0..9 is [0, 10]); theta:
    (2, 3) as `render` takes it (a drawn view or an `eval_thetas` row); stored_size: (w, h).
    Returns ((M, 4) float32 xyxy in output pixels, (M,) int64 indices of the kept rows of `boxes`).
    A rotated box becomes the axis-aligned box enclosing its corners. A box is dropped when, once
    clipped to the output, it is under 1 px wide or high or keeps less than `min_visible` of its
    warped area. Reflected copies of a box past the image's edge are not boxed (see `warp_masks`)."""
    w, h = stored_size
    theta = theta.to(boxes.device, torch.float64)
    x0, y0, x1, y1 = boxes.to(torch.float64).unbind(-1)  # (N,) each
    corners = torch.stack([torch.stack([x, y], -1) for x in (x0, x1) for y in (y0, y1)], 1)  # (N, 4, 2)
    # align_corners=False puts the image's outer pixel edges, 0 and w (h), at -1 and 1.
    unit = corners * corners.new_tensor([2 / w, 2 / h]) - 1
    out = (unit - theta[:, 2]) @ torch.linalg.inv(theta[:, :2]).T  # input -> output: the matrix's inverse
    pixels = (out + 1) * (out_size / 2)  # (N, 4, 2)
    low, high = pixels.amin(1), pixels.amax(1)  # (N, 2): the enclosing box
    clipped_low, clipped_high = low.clamp(0, out_size), high.clamp(0, out_size)
    sides = clipped_high - clipped_low  # (N, 2)
    visible = sides.prod(-1) >= min_visible * (high - low).prod(-1)
    keep = torch.nonzero((sides >= 1).all(-1) & visible).flatten()  # (M,)
    kept = torch.cat([clipped_low, clipped_high], -1)[keep]
    return kept.to(torch.float32), keep


def warp_box_lists(boxes: list[torch.Tensor], *, labels: list[torch.Tensor], theta: torch.Tensor,
                   sizes: torch.Tensor, out_size: int, min_visible: float) -> tuple[list, list]:
    """A batch's boxes (a list, as `collate` keeps them) through each sample's warp.

    boxes[b]: (N_b, 4) stored pixels; labels[b]: (N_b,); theta: (B, 2, 3); sizes: (B, 2) stored
    (w, h). Returns ([(M_b, 4) output pixels], [(M_b,) labels of the boxes kept])."""
    out_boxes, out_labels = [], []
    for b, (xyxy, label) in enumerate(zip(boxes, labels)):
        warped, keep = warp_boxes(xyxy, theta=theta[b], stored_size=tuple(sizes[b].tolist()), out_size=out_size,
                                  min_visible=min_visible)
        out_boxes.append(warped)
        out_labels.append(label[keep.to(label.device)])
    return out_boxes, out_labels


def warp_masks(masks: torch.Tensor, *, theta: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, L, L) uint8 or bool mask canvases -> (B, C, size, size) uint8 under (B, 2, 3) theta.

    Nearest sampling keeps a mask binary, with its edge where the image's bilinear edge crosses
    half-way. The padding is the image's own (reflection): where a view reaches past the image's
    edge it shows the mirrored anatomy, finding included, so the mask mirrors with it; zeros there
    would tell the loss "no finding" over a finding the network sees."""
    return _sample(masks.float(), theta=theta, size=size, mode="nearest").to(torch.uint8)


def warp_masks_eval(masks: torch.Tensor, cfg: ViewConfig) -> torch.Tensor:
    """(B, C, L, L) -> (B, V, C, S, S) under the evaluation warps, in `render_eval`'s view order."""
    thetas = eval_thetas(cfg).to(masks.device)  # (V, 2, 3)
    batch, views = masks.shape[0], thetas.shape[0]
    out = warp_masks(masks.repeat_interleave(views, dim=0), theta=thetas.repeat(batch, 1, 1), size=cfg.image_size)
    return out.view(batch, views, masks.shape[1], cfg.image_size, cfg.image_size)
