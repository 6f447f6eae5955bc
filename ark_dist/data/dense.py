"""Boxes and masks for a dense stream (`decode(..., dense=DenseSpec)` in stages.py): a sample's
`mask.<k>.png` members and its boxes as tensors, left in the stored image's frame until the device
warps them with the image (views.warp_boxes, views.warp_masks).

A sample's boxes are its facts' boxes, or, for a dataset whose entry lists masks but no boxes
(SIIM-ACR, CANDID-PTX: Foundation X trains their loc steps on boxes derived from the masks), one
box per connected component of each known mask, found at the stored size so the box is exact."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from ark_dist.data.errors import DataError
from shards.masks import member as mask_member

# A component of fewer stored pixels is speckle, not a finding: a mask scaled down to the stored size
# with nearest interpolation leaves stray pixels of thin or ragged edges, and a 1-3 px box is below
# what a detector can be asked to find.
MIN_COMPONENT_PX = 4
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # diagonal neighbours join one component


@dataclass(frozen=True)
class DenseSpec:
    """What `decode` needs to read one dataset's boxes and masks, from its manifest entry."""

    box_classes: tuple[str, ...]  # a box's label is its index here
    num_masks: int  # C: mask k is member `mask.<k>.png`, the k-th of the entry's `masks`
    boxes_from_masks: bool = False  # boxes are the masks' connected components, not the facts' boxes

    @classmethod
    def of(cls, entry: dict) -> "DenseSpec":
        """An entry's `boxes` list (each source's `box_classes`) gives the box classes, whether or not
        it has masks. Without one, an entry with `masks` gets boxes from them, its box classes its
        mask classes; one with neither (a store built before builds wrote `boxes`) falls back to
        `all_labels` (every class of its label facts), which holds NODE21's, RSNA's and VinDr-CXR's
        box labels but not TBX11K's TB kinds: a box label outside the list fails loudly
        (`decode_boxes`)."""
        masks = tuple(entry.get("masks") or ())
        if entry.get("boxes"):
            return cls(box_classes=tuple(entry["boxes"]), num_masks=len(masks))
        if masks:
            return cls(box_classes=masks, num_masks=len(masks), boxes_from_masks=True)
        return cls(box_classes=tuple(entry.get("all_labels") or entry["labels"]), num_masks=0)


def read_masks(parts: dict, *, num_masks: int, stored_size: tuple[int, int]) -> dict[int, np.ndarray]:
    """A sample's `mask.<k>.png` members -> {k: (h, w) bool at the stored size}. A mask it lacks is
    unknown (no key); an empty one is a known negative."""
    masks = {}
    for k in range(num_masks):
        data = parts.get(mask_member(k))
        if data is None:
            continue
        img = Image.open(io.BytesIO(data))
        if img.size != stored_size:
            raise ValueError(f"{mask_member(k)} is {img.size}, its image {stored_size}")
        masks[k] = np.asarray(img.convert("L")) > 0
    return masks


def masks_on_canvas(masks: dict[int, np.ndarray], *, num_masks: int, load_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`read_masks`' masks -> ((C, L, L) uint8 0/1 canvas, (C,) bool known); an unknown one is zeros."""
    canvas = np.zeros((num_masks, load_size, load_size), dtype=np.uint8)
    known = np.zeros(num_masks, dtype=bool)
    for k, mask in masks.items():
        # Squashed onto the canvas as the image is (same geometry), but nearest: the mask stays 0/1.
        img = Image.fromarray(mask.view(np.uint8)).resize((load_size, load_size), Image.Resampling.NEAREST)
        canvas[k], known[k] = np.asarray(img), True
    return canvas, known


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


def mask_boxes(masks: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """`read_masks`' masks -> ((N, 4) float32 xyxy in stored pixel edges, (N,) int64 mask classes):
    one box per 8-connected component of at least MIN_COMPONENT_PX pixels, by class, then in
    raster order of each component's first pixel."""
    xyxy, labels = [], []
    for k in sorted(masks):
        components, _ = ndimage.label(masks[k], structure=EIGHT_CONNECTED)  # (h, w) int32, 0 = background
        areas = np.bincount(components.ravel())  # (1 + count,)
        for index, (rows, cols) in enumerate(ndimage.find_objects(components), start=1):
            if areas[index] >= MIN_COMPONENT_PX:  # a slice's stop is the last pixel + 1: the far edge
                xyxy.append([cols.start, rows.start, cols.stop, rows.stop])
                labels.append(k)
    return np.array(xyxy, dtype=np.float32).reshape(-1, 4), np.array(labels, dtype=np.int64)


def dense_targets(parts: dict, facts: dict, *, spec: DenseSpec, stored_size: tuple[int, int], load_size: int,
                  where: str) -> dict:
    """A sample's masks and boxes as tensors (shapes: `masks_on_canvas`, `decode_boxes`, `mask_boxes`)."""
    masks = read_masks(parts, num_masks=spec.num_masks, stored_size=stored_size)
    canvas, known = masks_on_canvas(masks, num_masks=spec.num_masks, load_size=load_size)
    if not spec.boxes_from_masks:
        boxes, labels = decode_boxes(facts, classes=spec.box_classes, where=where)
    elif facts.get("boxes"):  # samples with boxes, their entry without a `boxes` list: built before builds wrote it
        raise DataError(f"{where}: the sample has boxes but its manifest entry no `boxes` list, so boxes would be "
                        "derived from its masks; rebuild the dataset so the entry lists its box classes")
    else:
        boxes, labels = mask_boxes(masks)
    return {"masks": torch.from_numpy(canvas), "mask_known": torch.from_numpy(known),
            "boxes": torch.from_numpy(boxes), "box_labels": torch.from_numpy(labels)}
