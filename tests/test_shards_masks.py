"""Mask specs against independent oracles (SIIM-ACR's own `mask_functions.py`, written out below, and
hand-built cases), and `verify`'s checks of boxes and masks in a sample."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from shards import masks
from shards.verify import check_sample


# -- the reference: Kaggle SIIM-ACR's mask_functions.py, as published with the competition data ----
def reference_mask2rle(img, width, height):
    rle = []
    last_color, current_pixel, run_start, run_length = 0, 0, -1, 0
    for x in range(width):
        for y in range(height):
            current_color = img[x][y]
            if current_color != last_color:
                if current_color == 255:
                    run_start, run_length = current_pixel, 1
                else:
                    rle += [str(run_start), str(run_length)]
                    run_start, run_length, current_pixel = -1, 0, 0
            elif run_start > -1:
                run_length += 1
            last_color = current_color
            current_pixel += 1
    return " ".join(rle)


def reference_rle2mask(rle, width, height):
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in rle.split()])
    starts, lengths = array[0::2], array[1::2]
    current_position = 0
    for index, start in enumerate(starts):
        current_position += start
        mask[current_position:current_position + lengths[index]] = 255
        current_position += lengths[index]
    return mask.reshape(width, height)


def _blobs(rng, width, height) -> np.ndarray:
    """A random mask of a few rectangles, off the last column (the reference drops a final run)."""
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(3):
        x0, y0 = rng.integers(0, width - 8), rng.integers(0, height - 8)
        mask[y0:y0 + rng.integers(1, 8), x0:x0 + rng.integers(1, 8)] = True
    mask[:, -1] = False
    return mask


@pytest.mark.parametrize("seed", range(5))
def test_relative_rle_decodes_as_siim_acr_reference_does(seed):
    rng = np.random.default_rng(seed)
    width, height = 37, 29  # not square: a transposed decode cannot pass
    mask = _blobs(rng, width, height)
    code = reference_mask2rle((mask.T * 255).astype(int), width, height)
    ours = masks.rasterize({"rle": [code], "encoding": "relative"}, (width, height))
    assert ours.shape == (height, width)
    assert np.array_equal(ours, reference_rle2mask(code, width, height).T > 0)
    assert np.array_equal(ours, mask)
    assert masks.pixels({"rle": [code], "encoding": "relative"}) == mask.sum()


def test_absolute_rle_is_one_based_and_column_major_and_rows_union():
    # a 4 x 3 image (w x h): column-major index = x * 3 + y; "1 2" = pixels 0, 1 = (x0, y0), (x0, y1)
    got = masks.rasterize({"rle": ["1 2", "12 1"], "encoding": "absolute"}, (4, 3))
    want = np.zeros((3, 4), dtype=bool)
    want[0, 0] = want[1, 0] = True
    want[2, 3] = True  # pixel 11 = x 3, y 2
    assert np.array_equal(got, want)
    assert masks.pixels({"rle": ["1 2", "12 1"], "encoding": "absolute"}) == 3


@pytest.mark.parametrize("spec, error", [
    ({"rle": ["0 5"], "encoding": "absolute"}, "count from 1"),
    ({"rle": ["1 2 3"], "encoding": "relative"}, "pairs"),
    ({"rle": ["x 1"], "encoding": "relative"}, "whole numbers"),
    ({"rle": ["10 5"], "encoding": "relative"}, "beyond"),
    ({"rle": ["1 1"], "encoding": "zigzag"}, "unknown RLE encoding"),
])
def test_a_bad_rle_is_a_clear_error(spec, error):
    with pytest.raises(masks.MaskError, match=error):
        masks.rasterize(spec, (3, 4))


def test_polygons_fill_their_inside_and_count_as_drawn():
    square = {"polygons": [[[1, 1], [4, 1], [4, 3], [1, 3]]]}
    got = masks.rasterize(square, (6, 5))
    want = np.zeros((5, 6), dtype=bool)
    want[1:4, 1:5] = True  # PIL fills the outline too: x 1..4, y 1..3
    assert np.array_equal(got, want)
    assert masks.pixels(square) == 12


def test_mask_files_union_and_must_match_the_image(tmp_path):
    left, right = np.zeros((4, 6), np.uint8), np.zeros((4, 6), np.uint8)
    left[:, :2], right[:, 4:] = 255, 1
    Image.fromarray(left).save(tmp_path / "l.png")
    Image.fromarray(right).save(tmp_path / "r.png")
    spec = {"files": ["l.png", "r.png"]}
    got = masks.rasterize(spec, (6, 4), tmp_path)
    assert got.sum() == 16 and not got[:, 2:4].any()
    assert masks.pixels(spec, tmp_path) == 16
    with pytest.raises(masks.MaskError, match="is 6x4, its image 5x4"):
        masks.rasterize(spec, (5, 4), tmp_path)


def test_stored_masks_scale_by_nearest_and_stay_binary():
    mask = np.zeros((8, 10), dtype=bool)
    mask[2:6, 4:8] = True
    small = masks.decode(masks.encode(mask, (5, 4)))
    assert small.shape == (4, 5) and small.dtype == bool
    assert np.array_equal(small, mask[::2, ::2])  # nearest at exactly half: every other pixel
    with Image.open(io.BytesIO(masks.encode(mask, (5, 4)))) as img:
        assert img.mode == "1" and img.format == "PNG"


# -- verify's sample checks --------------------------------------------------------------------------
def _sample(*, boxes=(), mask_members=None, listed=None, size=(20, 10)) -> dict:
    image = io.BytesIO()
    Image.new("L", size, 128).save(image, "PNG")
    mask_members = mask_members or {}
    if listed is None:  # the JSON lists the masks the members hold, as a build writes it
        listed = [["Left", "Right"][k] for k in sorted(mask_members)]
    parts = {"png": image.getvalue(), "json": json.dumps({"boxes": list(boxes), "masks": listed}).encode()}
    for k, (w, h) in mask_members.items():
        parts[masks.member(k)] = masks.encode(np.ones((h, w), bool), (w, h))
    return parts


def test_verify_accepts_boxes_inside_and_masks_at_the_image_size():
    parts = _sample(boxes=[{"label": "a", "xyxy": [0, 0, 20, 10], "reader": None}], mask_members={0: (20, 10)})
    assert check_sample("ds/x", parts, ext="png", mask_classes=["Left", "Right"]) == []


@pytest.mark.parametrize("xyxy", [[-1, 0, 5, 5], [0, 0, 21, 5], [5, 0, 5, 5], [0, 6, 5, 4]])
def test_verify_flags_a_box_outside_the_image_or_without_area(xyxy):
    parts = _sample(boxes=[{"label": "Nodule", "xyxy": xyxy, "reader": "R1"}])
    [problem] = check_sample("ds/x", parts, ext="png", mask_classes=[])
    assert "box 'Nodule'" in problem and "20x10" in problem


def test_verify_flags_a_mask_at_another_size_a_broken_one_and_an_unlisted_one():
    parts = _sample(mask_members={0: (10, 5)})
    assert any("mask.0.png is 10x5, its image 20x10" in p for p in check_sample("ds/x", parts, ext="png",
                                                                                 mask_classes=["Left", "Right"]))
    parts = _sample(mask_members={1: (20, 10)})
    parts["mask.1.png"] = b"not a png"
    assert any("undecodable mask" in p for p in check_sample("ds/x", parts, ext="png", mask_classes=["Left", "Right"]))
    parts = _sample(mask_members={0: (20, 10)}, listed=[])
    assert any("lists masks []" in p for p in check_sample("ds/x", parts, ext="png", mask_classes=["Left", "Right"]))
    parts = _sample(mask_members={0: (20, 10)})
    assert any("members" in p for p in check_sample("ds/x", parts, ext="png", mask_classes=[]))
