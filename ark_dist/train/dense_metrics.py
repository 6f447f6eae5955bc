"""Evaluation metrics for the dense heads: COCO box mAP (localization) and Dice (segmentation),
plus the soft Dice training loss.

Both meters keep plain numpy state (`state()`), so ranks can `all_gather_object` it and any rank can
rebuild one meter with `merge(states)`. Box AP is COCO's own evaluator (pycocotools), built in memory.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Iterable

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# COCO's 10 thresholds 0.50, 0.55, ..., 0.95; "map" averages over exactly these (the reference
# started at 0.40 and still called it 0.50:0.95).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def _numpy(x, *, dtype) -> np.ndarray:
    """A torch tensor (any device) or array-like as a numpy array of `dtype`."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _coco(images: list[dict], categories: list[dict], annotations: list[dict]) -> COCO:
    """A COCO index built in memory (no file)."""
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    coco.createIndex()
    return coco


def _annotation(box: np.ndarray, *, ann_id: int, image_id: int, label: int, score: float | None) -> dict:
    """One COCO annotation from an xyxy pixel box. Inverted boxes get zero width/height: left with a
    negative area, COCOeval would ignore them instead of counting them as false positives."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
    # ids start at 1: COCOeval marks "unmatched" with id 0
    ann = {"id": ann_id, "image_id": image_id, "category_id": label + 1, "bbox": [x1, y1, w, h],
           "area": w * h, "iscrowd": 0}
    if score is not None:
        ann["score"] = score
    return ann


class BoxMeter:
    """Collects per-image boxes; `compute` runs COCOeval on all of them at once."""

    def __init__(self, *, max_dets: int = 100):
        """max_dets: detections kept per (image, class), highest scores first (COCO's maxDets; 100,
        COCO's own, is far more than the findings on one chest X-ray)."""
        self.max_dets = max_dets
        self.images: list[dict[str, np.ndarray]] = []

    def update(self, predictions: list[dict], *, truths: list[dict]) -> None:
        """One dict per image. predictions: boxes (N, 4) xyxy pixels, scores (N,), labels (N,) class
        indices; truths: boxes (M, 4), labels (M,). Tensors or arrays."""
        if len(predictions) != len(truths):
            raise ValueError(f"{len(predictions)} predictions but {len(truths)} truths")
        for pred, true in zip(predictions, truths):
            image = {"boxes": _numpy(pred["boxes"], dtype=np.float64).reshape(-1, 4),  # (N, 4)
                     "scores": _numpy(pred["scores"], dtype=np.float64).reshape(-1),  # (N,)
                     "labels": _numpy(pred["labels"], dtype=np.int64).reshape(-1),  # (N,)
                     "true_boxes": _numpy(true["boxes"], dtype=np.float64).reshape(-1, 4),  # (M, 4)
                     "true_labels": _numpy(true["labels"], dtype=np.int64).reshape(-1)}  # (M,)
            if not len(image["boxes"]) == len(image["scores"]) == len(image["labels"]):
                raise ValueError("prediction boxes, scores and labels differ in length")
            if len(image["true_boxes"]) != len(image["true_labels"]):
                raise ValueError("truth boxes and labels differ in length")
            self.images.append(image)

    def state(self) -> dict:
        """Picklable state for `all_gather_object`."""
        return {"max_dets": self.max_dets, "images": list(self.images)}

    @classmethod
    def merge(cls, states: Iterable[dict]) -> BoxMeter:
        """One meter holding every image of `states` (e.g. one state per rank)."""
        states = list(states)
        if len({s["max_dets"] for s in states}) > 1:
            raise ValueError("cannot merge box meters with different max_dets")
        meter = cls(max_dets=states[0]["max_dets"] if states else 100)
        for s in states:
            meter.images.extend(s["images"])
        return meter

    def compute(self, *, class_names: list[str]) -> dict[str, float]:
        """{"map50": AP at IoU 0.50, "map": AP averaged over IoU 0.50:0.95 (10 thresholds), "ap50/<class>"}.
        Means run over the classes that have a ground-truth box; NaN where there is none."""
        num_classes = len(class_names)
        images, truths, detections = [], [], []
        for image_id, image in enumerate(self.images, start=1):
            for labels in (image["labels"], image["true_labels"]):
                if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
                    raise ValueError(f"a label outside 0..{num_classes - 1} ({num_classes} class_names)")
            images.append({"id": image_id})  # every image counts, even with no box at all
            # ids unique over the whole set: COCO indexes annotations by id and silently drops repeats
            truths += [_annotation(b, ann_id=len(truths) + i, image_id=image_id, label=int(k), score=None)
                       for i, (b, k) in enumerate(zip(image["true_boxes"], image["true_labels"]), start=1)]
            found = zip(image["boxes"], image["scores"], image["labels"])
            detections += [_annotation(b, ann_id=len(detections) + i, image_id=image_id, label=int(k), score=float(s))
                           for i, (b, s, k) in enumerate(found, start=1)]
        out = {"map50": math.nan, "map": math.nan, **{f"ap50/{c}": math.nan for c in class_names}}
        if not truths:
            return out
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(class_names)]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            evaluator = COCOeval(_coco(images, categories, truths), _coco(images, categories, detections), "bbox")
            evaluator.params.iouThrs = IOU_THRESHOLDS
            evaluator.params.maxDets = [self.max_dets]
            # one area range, all boxes: COCO's small/medium/large split is only extra time here
            evaluator.params.areaRng, evaluator.params.areaRngLbl = [[0.0, math.inf]], ["all"]
            evaluator.evaluate()
            evaluator.accumulate()
        precision = evaluator.eval["precision"][:, :, :, 0, 0]  # (T=10, R=101, K); -1: class without truth
        has_truth = (precision > -1).all(axis=(0, 1))  # (K,)
        per_class = np.where(has_truth[None], precision.mean(axis=1), math.nan)  # (T, K): AP per threshold
        out["map50"] = float(np.nanmean(per_class[0]))
        out["map"] = float(np.nanmean(per_class))
        out.update({f"ap50/{c}": float(per_class[0, k]) for k, c in enumerate(class_names)})
        return out


def _dice(intersection: np.ndarray, *, predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Elementwise 2|P∧T| / (|P| + |T|), 1 where both are empty (a true negative)."""
    total = predicted + target
    return np.where(total > 0, 2 * intersection / np.maximum(total, 1), 1.0)


class DiceMeter:
    """Per-(image, class) pixel counts of the thresholded prediction, never the masks themselves."""

    def __init__(self, *, thresholds: tuple[float, ...] = (0.5,)):
        """thresholds: the ones `compute` may be asked for; counts are kept for each because the
        probabilities are not stored. A pixel is predicted when its probability exceeds one."""
        self.thresholds = tuple(float(t) for t in thresholds)
        self.counts: list[np.ndarray] = []  # each (B, num_thresholds, C, 3): |P∧T|, |P|, |T|
        self.known: list[np.ndarray] = []  # each (B, C) bool

    @torch.no_grad()
    def update(self, probs, *, target, known) -> None:
        """probs: (B, C, H, W) in [0, 1]; target: (B, C, H, W) binary; known: (B, C) bool, False
        where a sample has no such mask (left out of every mean)."""
        probs = torch.as_tensor(probs).float()
        target = torch.as_tensor(target, device=probs.device) > 0.5  # (B, C, H, W) bool
        known = _numpy(known, dtype=bool)
        if probs.shape != target.shape or known.shape != tuple(probs.shape[:2]):
            raise ValueError(f"shapes differ: probs {tuple(probs.shape)}, target {tuple(target.shape)}, "
                             f"known {known.shape}")
        per_threshold = []
        for t in self.thresholds:
            predicted = probs > t  # (B, C, H, W)
            per_threshold.append(torch.stack([(predicted & target).sum((2, 3)), predicted.sum((2, 3)),
                                              target.sum((2, 3))], dim=-1))  # (B, C, 3)
        self.counts.append(torch.stack(per_threshold, dim=1).cpu().numpy().astype(np.int64))
        self.known.append(known)

    def state(self) -> dict:
        """Picklable state for `all_gather_object`."""
        return {"thresholds": self.thresholds, "counts": list(self.counts), "known": list(self.known)}

    @classmethod
    def merge(cls, states: Iterable[dict]) -> DiceMeter:
        """One meter holding every image of `states` (e.g. one state per rank)."""
        states = list(states)
        if len({s["thresholds"] for s in states}) > 1:
            raise ValueError("cannot merge Dice meters with different thresholds")
        meter = cls(thresholds=states[0]["thresholds"]) if states else cls()
        for s in states:
            meter.counts.extend(s["counts"])
            meter.known.extend(s["known"])
        return meter

    def compute(self, *, class_names: list[str], threshold: float = 0.5) -> dict[str, float]:
        """{"dice": mean per-image Dice over known (image, class) pairs, "dice_global": 2 sum|P∧T| /
        (sum|P| + sum|T|) over known pixels, "dice/<class>": mean per-image Dice of that class}."""
        if threshold not in self.thresholds:
            raise ValueError(f"threshold {threshold} not counted; the meter keeps {self.thresholds}")
        num_classes = len(class_names)
        if not self.counts:
            return {"dice": math.nan, "dice_global": math.nan, **{f"dice/{c}": math.nan for c in class_names}}
        counts = np.concatenate(self.counts)[:, self.thresholds.index(threshold)]  # (N, C, 3)
        known = np.concatenate(self.known)  # (N, C)
        if counts.shape[1] != num_classes:
            raise ValueError(f"{counts.shape[1]} mask channels but {num_classes} class_names")
        dice = _dice(counts[..., 0], predicted=counts[..., 1], target=counts[..., 2])  # (N, C)
        inter, total = counts[..., 0][known].sum(), (counts[..., 1] + counts[..., 2])[known].sum()
        out = {"dice": float(dice[known].mean()) if known.any() else math.nan,
               "dice_global": float(2 * inter / total) if total > 0 else math.nan}
        for k, name in enumerate(class_names):
            out[f"dice/{name}"] = float(dice[known[:, k], k].mean()) if known[:, k].any() else math.nan
        return out


def soft_dice_loss(logits: torch.Tensor, *, target: torch.Tensor, known: torch.Tensor,
                   eps: float = 1.0) -> torch.Tensor:
    """Mean over known (image, class) pairs of 1 - (2 sum(p t) + eps) / (sum p + sum t + eps), with
    p = sigmoid(logits), in float32. logits/target: (B, C, H, W); known: (B, C). With nothing known it
    is 0, still connected to the graph so every rank runs the same backward."""
    p = torch.sigmoid(logits.float())  # (B, C, H, W)
    t = target.float()
    dice = (2 * (p * t).sum((2, 3)) + eps) / (p.sum((2, 3)) + t.sum((2, 3)) + eps)  # (B, C)
    weight = known.to(device=p.device, dtype=torch.float32)  # (B, C)
    return ((1 - dice) * weight).sum() / weight.sum().clamp(min=1.0)
