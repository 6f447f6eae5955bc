"""Boxes and masks for a dense stream (`decode(..., dense=DenseSpec)` in stages.py): a sample's
`mask.<k>.png` members and its facts' boxes as tensors, left in the stored image's frame until the
device warps them with the image (views.warp_boxes, views.warp_masks)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ark_dist.data.errors import DataError
from shards.masks import member as mask_member


@dataclass(frozen=True)
class DenseSpec:
    """What `decode` needs to read one dataset's boxes and masks, from its manifest entry."""

    box_classes: tuple[str, ...]  # a box's label is its index here
    num_masks: int  # C: mask k is member `mask.<k>.png`, the k-th of the entry's `masks`

    @classmethod
    def of(cls, entry: dict) -> "DenseSpec":
        """Box classes: the entry's `boxes` list (each source's `box_classes`); a store built before
        builds wrote it falls back to `all_labels` (every class of its label facts), which holds
        NODE21's, ChestX-Det's, RSNA's and VinDr-CXR's box labels but not TBX11K's TB kinds: a box
        label outside the list fails loudly (`decode_boxes`)."""
        boxes = entry.get("boxes") or entry.get("all_labels") or entry["labels"]
        return cls(box_classes=tuple(boxes), num_masks=len(entry.get("masks") or ()))


def decode_masks(parts: dict, *, num_masks: int, stored_size: tuple[int, int],
                 load_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A sample's `mask.<k>.png` members -> ((C, L, L) uint8 0/1 canvas, (C,) bool known). A mask
    it lacks is unknown (all zeros, known False); an empty one is a known negative."""
    masks = np.zeros((num_masks, load_size, load_size), dtype=np.uint8)
    known = np.zeros(num_masks, dtype=bool)
    for k in range(num_masks):
        data = parts.get(mask_member(k))
        if data is None:
            continue
        img = Image.open(io.BytesIO(data))
        if img.size != stored_size:
            raise ValueError(f"{mask_member(k)} is {img.size}, its image {stored_size}")
        # Squashed onto the canvas as the image is (same geometry), but nearest: the mask stays 0/1.
        img = img.convert("L").resize((load_size, load_size), Image.Resampling.NEAREST)
        masks[k], known[k] = np.asarray(img) > 0, True
    return masks, known


def decode_boxes(facts: dict, *, classes: tuple[str, ...], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Facts' boxes -> ((N, 4) float32 xyxy in stored pixels, (N,) int64 class indices). Every
    reader's box is kept (VinDr-CXR: the same finding boxed by up to three readers)."""
    boxes = facts.get("boxes") or []
    xyxy = np.array([b["xyxy"] for b in boxes], dtype=np.float32).reshape(-1, 4)
    unknown = sorted({b["label"] for b in boxes} - set(classes))
    if unknown:  # the manifest and the shards disagree: no skipping makes that right
        raise DataError(f"{where}: box labels {unknown} are not among the manifest's box classes {list(classes)}; "
                        "the entry needs a `boxes` list of them")
    labels = np.array([classes.index(b["label"]) for b in boxes], dtype=np.int64)
    return xyxy, labels


def dense_targets(parts: dict, facts: dict, *, spec: DenseSpec, stored_size: tuple[int, int], load_size: int,
                  where: str) -> dict:
    """A sample's masks and boxes as tensors (see the module docstring for shapes)."""
    masks, known = decode_masks(parts, num_masks=spec.num_masks, stored_size=stored_size, load_size=load_size)
    boxes, labels = decode_boxes(facts, classes=spec.box_classes, where=where)
    return {"masks": torch.from_numpy(masks), "mask_known": torch.from_numpy(known),
            "boxes": torch.from_numpy(boxes), "box_labels": torch.from_numpy(labels)}
