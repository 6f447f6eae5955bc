"""Dense targets: boxes and masks through the views' one affine warp (warp_boxes, warp_masks), and
the loader carrying them on request (stages.decode, collate, TrainStream/EvalLoader `dense`).

The oracles are independent of the code under test: a white rectangle drawn into a stored image,
squashed onto the canvas by the loader's own decode and rendered by `render`; its bright pixels
(where their source lies inside the image, so reflections past the edge are not counted) are
where the warped box and the warped mask must be."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ark_dist.data import Cursor, DataConfig, EvalLoader, Store, StoreConfig, dataset_entry, read_manifest, train_loader
from ark_dist.data.config import ViewConfig
from ark_dist.data.dense import MIN_COMPONENT_PX, DenseSpec, dense_targets
from ark_dist.data.stages import Counters, DataError, decode, decode_image
from ark_dist.data.views import (draw_views, eval_thetas, render, render_eval, warp_box_lists, warp_boxes, warp_masks,
                                 warp_masks_eval)
from conftest import look_alike, read_store_samples, run_shards
from shards.samples import read_tar

MEAN, STD = 0.485, 0.229  # ImageNet's first channel: render's output back to [0, 1]
OUT = 224  # ViewConfig's image_size
TIGHT = 1.0  # px: a thresholded edge vs the exact one, after two bilinear resamplings (seen: up to 0.7)


# ---------------------------------------------------------------- oracles


def rectangle(rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """A black stored image of random size with a white rectangle on whole pixels: ((h, w) uint8,
    its box xyxy in pixel edges)."""
    w, h = (int(v) for v in rng.integers(150, 400, size=2))
    bw, bh = int(rng.integers(w // 5, w // 2)), int(rng.integers(h // 5, h // 2))
    x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
    pixels = np.zeros((h, w), dtype=np.uint8)
    pixels[y0:y0 + bh, x0:x0 + bw] = 255
    return pixels, [x0, y0, x0 + bw, y0 + bh]


def on_canvas(pixels: np.ndarray, load_size: int) -> torch.Tensor:
    """The stored image as the loader decodes it: PNG bytes -> (1, 1, L, L) uint8 canvas."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    canvas, _ = decode_image(buf.getvalue(), load_size)
    return torch.from_numpy(canvas.copy()).view(1, 1, load_size, load_size)


def bright(canvas: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """(size, size) bool: rendered above half-white, counting only pixels whose source lies inside
    the image (a reflection past the edge shows the rectangle again, outside any box)."""
    unit = render(canvas, theta=theta.view(1, 2, 3), size=size)[0, 0] * STD + MEAN
    grid = F.affine_grid(theta.view(1, 2, 3), [1, 1, size, size], align_corners=False)[0]  # (S, S, 2)
    inside = (grid.abs() <= 1).all(-1)
    return (unit > 0.5) & inside


def bounds(region: torch.Tensor) -> list[float] | None:
    """The enclosing box of a pixel region, in pixel edges, or None when empty."""
    rows, cols = torch.nonzero(region, as_tuple=True)
    if not len(rows):
        return None
    return [cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1]


def rotated(theta: np.ndarray) -> bool:
    return abs(theta[0, 1]) > 1e-6 or abs(theta[1, 0]) > 1e-6


# ---------------------------------------------------------------- warp_boxes


@pytest.mark.parametrize("views", [ViewConfig(), ViewConfig(shift_scale_rotate_p=0.0, hflip_p=0.5)],
                         ids=["defaults-with-rotations", "crop-and-flip"])
def test_warped_box_encloses_the_rendered_rectangle(views):
    rng = np.random.default_rng(0)
    checked = tight = turned = 0
    for _ in range(100):
        pixels, box = rectangle(rng)
        (h, w), canvas = pixels.shape, on_canvas(pixels, views.load_size)
        theta = draw_views(rng, w, h, views)["theta_student"]
        warped, keep = warp_boxes(torch.tensor([box], dtype=torch.float32), theta=torch.from_numpy(theta),
                                  stored_size=(w, h), out_size=OUT, min_visible=0.0)
        seen = bounds(bright(canvas, torch.from_numpy(theta), OUT))
        if not len(keep):  # dropped: under 1 px of it is left in the view
            assert seen is None or min(seen[2] - seen[0], seen[3] - seen[1]) <= 2, (seen, theta)
            continue
        x0, y0, x1, y1 = warped[0].tolist()
        clipped = min(x0, y0) == 0 or max(x1, y1) == OUT  # a clipped rotated box may overhang its corner
        if seen is None:  # only that overhang holds no pixel of the rectangle
            assert rotated(theta) and clipped, (warped, theta)
            continue
        assert x0 - TIGHT <= seen[0] and y0 - TIGHT <= seen[1], (warped, seen)  # encloses
        assert seen[2] <= x1 + TIGHT and seen[3] <= y1 + TIGHT, (warped, seen)
        if not rotated(theta) or not clipped:
            tight += 1
            np.testing.assert_allclose(warped[0].numpy(), seen, atol=TIGHT)
        checked, turned = checked + 1, turned + rotated(theta)
    assert checked >= 70 and tight >= 50
    assert (turned >= 20) == (views.shift_scale_rotate_p > 0)


@pytest.mark.parametrize("ten_crop", [False, True])
def test_warped_box_matches_the_rendered_rectangle_under_eval_thetas(ten_crop):
    views = ViewConfig(ten_crop=ten_crop)
    rng = np.random.default_rng(1)
    for _ in range(5):
        pixels, box = rectangle(rng)
        (h, w), canvas = pixels.shape, on_canvas(pixels, views.load_size)
        for theta in eval_thetas(views):
            warped, keep = warp_boxes(torch.tensor([box], dtype=torch.float32), theta=theta, stored_size=(w, h),
                                      out_size=views.image_size, min_visible=0.0)
            seen = bounds(bright(canvas, theta, views.image_size))
            if len(keep):
                np.testing.assert_allclose(warped[0].numpy(), seen, atol=TIGHT)


QUADRANT = torch.tensor([[0.5, 0.0, -0.5], [0.0, 0.5, -0.5]])  # the output shows the top-left quarter


def test_a_box_mostly_outside_the_view_is_dropped_unless_min_visible_is_zero():
    boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0],  # inside the quarter
                          [45.0, 10.0, 85.0, 30.0],  # 5 of its 40 px wide inside: 1/8 visible
                          [60.0, 60.0, 90.0, 90.0]])  # outside
    warped, keep = warp_boxes(boxes, theta=QUADRANT, stored_size=(100, 100), out_size=200, min_visible=0.25)
    assert keep.tolist() == [0]
    np.testing.assert_allclose(warped.numpy(), [[40, 40, 120, 120]], atol=1e-4)  # x2 in pixels
    warped, keep = warp_boxes(boxes, theta=QUADRANT, stored_size=(100, 100), out_size=200, min_visible=0.0)
    assert keep.tolist() == [0, 1]
    np.testing.assert_allclose(warped[1].numpy(), [180, 40, 200, 120], atol=1e-4)  # clipped at the edge
    _, keep = warp_boxes(boxes, theta=QUADRANT, stored_size=(100, 100), out_size=200, min_visible=0.125)
    assert keep.tolist() == [0, 1]  # exactly the share left: kept


def test_warp_boxes_edge_cases():
    warped, keep = warp_boxes(torch.zeros(0, 4), theta=QUADRANT, stored_size=(100, 100), out_size=200, min_visible=0.25)
    assert warped.shape == (0, 4) and keep.shape == (0,) and keep.dtype == torch.int64
    # A 0.3 px sliver inside the view is under a pixel wide: dropped whatever min_visible says.
    _, keep = warp_boxes(torch.tensor([[10.0, 10.0, 10.1, 30.0]]), theta=QUADRANT, stored_size=(100, 100),
                         out_size=200, min_visible=0.0)
    assert not len(keep)
    with pytest.raises(ValueError, match="box_min_visible"):
        ViewConfig(box_min_visible=1.5).validate()


def test_warp_box_lists_per_sample():
    theta = torch.stack([torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), QUADRANT])
    boxes = [torch.tensor([[0.0, 0.0, 50.0, 20.0]]), torch.tensor([[10.0, 10.0, 30.0, 30.0], [60, 60, 90, 90]])]
    labels = [torch.tensor([3]), torch.tensor([1, 2])]
    out, kept = warp_box_lists(boxes, labels=labels, theta=theta, sizes=torch.tensor([[100, 50], [100, 100]]),
                               out_size=100, min_visible=0.25)
    np.testing.assert_allclose(out[0].numpy(), [[0, 0, 50, 40]], atol=1e-4)  # (100, 50) squashed to a square
    np.testing.assert_allclose(out[1].numpy(), [[20, 20, 60, 60]], atol=1e-4)
    assert [k.tolist() for k in kept] == [[3], [1]]


# ---------------------------------------------------------------- warp_masks


def boundary(region: torch.Tensor) -> torch.Tensor:
    """Pixels of a (..., S, S) bool region whose 3x3 neighbourhood holds both values."""
    x = region.float().flatten(0, -3).unsqueeze(1)
    grown, shrunk = F.max_pool2d(x, 3, 1, 1), -F.max_pool2d(-x, 3, 1, 1)
    return (grown != shrunk).view(region.shape)


def rectangles_on_canvas(rng: np.random.Generator, batch: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, L, L) uint8 images with a white rectangle each, and (B, 2, L, L) bool masks: the
    rectangle, and an empty class."""
    images = torch.zeros(batch, 1, side, side, dtype=torch.uint8)
    masks = torch.zeros(batch, 2, side, side, dtype=torch.bool)
    for b in range(batch):
        x0, y0 = rng.integers(0, side - 8, size=2)
        x1, y1 = x0 + rng.integers(4, side - x0), y0 + rng.integers(4, side - y0)
        images[b, 0, y0:y1, x0:x1] = 255
        masks[b, 0, y0:y1, x0:x1] = True
    return images, masks


def test_warp_masks_is_the_thresholded_render_but_at_edges():
    rng = np.random.default_rng(2)
    images, masks = rectangles_on_canvas(rng, 48, 64)
    images[-2], masks[-2] = 0, False
    images[-2, 0, 8:40, 16:48], masks[-2, 0, 8:40, 16:48] = 255, True  # 32 x 32 px
    thetas = [draw_views(rng, 64, 64, ViewConfig())["theta_student"] for _ in range(46)]
    zoom_out = [np.array([[2.0, 0, 0], [0, 2.0, 0]], dtype=np.float32),  # reaches past every edge: reflections
                np.array([[1.5, 0.3, 0.4], [-0.3, 1.5, -0.2]], dtype=np.float32)]
    theta = torch.from_numpy(np.stack(thetas + zoom_out))
    warped = warp_masks(masks, theta=theta, size=48)
    assert warped.shape == (48, 2, 48, 48) and warped.dtype == torch.uint8
    assert int(warped[:, 1].sum()) == 0 and set(warped.unique().tolist()) <= {0, 1}
    shown = render(images, theta=theta, size=48)[:, 0] * STD + MEAN > 0.5  # (B, S, S)
    wrong = shown != warped[:, 0].bool()
    assert not (wrong & ~boundary(shown)).any()
    assert wrong.sum() < 0.02 * shown.numel()
    # Zoomed out 2x, the view shows every image point twice per axis (the image and a mirrored
    # half on each side) at 48 / 128 scale: the mask's four copies, not one.
    assert int(warped[-2, 0].sum()) == 4 * 12 * 12


def test_warp_masks_identity_is_exact():
    images, masks = rectangles_on_canvas(np.random.default_rng(3), 4, 40)
    identity = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]).repeat(4, 1, 1)
    torch.testing.assert_close(warp_masks(masks, theta=identity, size=40), masks.to(torch.uint8))
    torch.testing.assert_close(warp_masks(masks.to(torch.uint8), theta=identity, size=40), masks.to(torch.uint8))
    assert warp_masks(torch.zeros(4, 0, 40, 40), theta=identity, size=40).shape == (4, 0, 40, 40)  # no mask classes


@pytest.mark.parametrize("ten_crop", [False, True])
def test_warp_masks_eval_follows_render_eval(ten_crop):
    views = ViewConfig(image_size=32, load_size=48, ten_crop=ten_crop)
    images, masks = rectangles_on_canvas(np.random.default_rng(4), 3, 48)
    warped = warp_masks_eval(masks, views)
    count = 10 if ten_crop else 1
    assert warped.shape == (3, count, 2, 32, 32)
    shown = render_eval(images, views)[:, :, 0] * STD + MEAN > 0.5  # (B, V, S, S)
    wrong = shown != warped[:, :, 0].bool()
    assert not (wrong & ~boundary(shown)).any()


# ---------------------------------------------------------------- the loader


@pytest.fixture(scope="module")
def dense_store(tmp_path_factory):
    """ChestX-Det (13 mask classes, boxes), VinDr-CXR (every reader's boxes, no masks; stored
    80 x 96, so squashed onto the canvas) and SIIM-ACR (one mask class, no boxes)."""
    out = tmp_path_factory.mktemp("densestore")
    for source in ("chestx_det", "vindr_cxr", "siim_acr"):
        raw = look_alike(tmp_path_factory, source)
        code, _, err = run_shards("build", "--source", source, "--root", raw, "--out", out, "--quiet", "--workers", "1",
                                  "--samples-per-shard", "3", "--max-side", "96")
        assert code == 0, err
    return out


def _config(url) -> DataConfig:
    return DataConfig(store=StoreConfig(url=str(url)), views=ViewConfig(image_size=32, load_size=40), shuffle_buffer=8,
                      num_workers=0)


def _entry(config, name):
    return dataset_entry(read_manifest(Store(config.store)), name, splits=("train", "val", "test"))


EVAL_KEYS = {"image", "target", "mask", "ids", "subgroups", "valid", "stats"}
TRAIN_KEYS = EVAL_KEYS | {"theta_student", "theta_teacher", "photo", "cursor"}
DENSE_KEYS = {"masks", "mask_known", "boxes", "box_labels", "size"}


def _canvas_mask(png: bytes, side: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L").resize((side, side), Image.Resampling.NEAREST)) > 0


@pytest.mark.parametrize("name", ["chestx_det", "vindr_cxr"])
def test_a_dense_batch_carries_the_samples_boxes_and_masks(dense_store, name):
    config = _config(dense_store)
    entry, stored = _entry(config, name), read_store_samples(dense_store, name)
    classes, num_masks = entry["all_labels"], len(entry["masks"])
    seen = shown = 0
    for split in ("train", "test"):
        for batch in EvalLoader(entry=entry, config=config, split=split, seed=0, rank=0, world=1, batch_size=2,
                                dense=True):
            assert set(batch) == EVAL_KEYS | DENSE_KEYS
            assert batch["masks"].shape == (len(batch["ids"]), num_masks, 40, 40) and batch["masks"].dtype == torch.uint8
            for b, sample_id in enumerate(batch["ids"]):
                facts = stored[sample_id]
                boxes = facts.get("boxes") or []
                np.testing.assert_array_equal(batch["boxes"][b].numpy(),
                                              np.array([x["xyxy"] for x in boxes], dtype=np.float32).reshape(-1, 4))
                assert batch["box_labels"][b].tolist() == [classes.index(x["label"]) for x in boxes]
                assert batch["size"][b].tolist() == facts["size"]
                for k in range(num_masks):
                    png = facts["_members"].get(f"mask.{k}.png")
                    assert bool(batch["mask_known"][b, k]) == (png is not None)
                    expected = _canvas_mask(png, 40) if png is not None else np.zeros((40, 40), bool)
                    np.testing.assert_array_equal(batch["masks"][b, k].numpy(), expected)
                seen += 1
            shown += int(batch["masks"].sum())
    assert seen == entry["splits"]["train"]["num_samples"] + entry["splits"]["test"]["num_samples"]
    if name == "vindr_cxr":  # several readers' boxes of one image, all kept
        assert any(len({x["reader"] for x in f.get("boxes") or []}) > 1 for f in stored.values())
    else:
        assert shown > 0, "the look-alike's masks must not all be empty for this test"


def test_dense_is_opt_in_and_training_batches_warp_on_the_device(dense_store):
    config = _config(dense_store)
    entry = _entry(config, "chestx_det")
    kw = dict(entry=entry, config=config, seed=0, cursor=Cursor(), rank=0, world=1, global_batch=2)
    plain, dense = next(iter(train_loader(**kw))), next(iter(train_loader(**kw, dense=True)))
    assert set(plain) == TRAIN_KEYS and set(dense) == TRAIN_KEYS | DENSE_KEYS
    assert plain["ids"] == dense["ids"] and torch.equal(plain["theta_student"], dense["theta_student"])
    assert set(next(iter(EvalLoader(entry=entry, config=config, split="test", seed=0, rank=0, world=1,
                                    batch_size=2)))) == EVAL_KEYS
    boxes, labels = warp_box_lists(dense["boxes"], labels=dense["box_labels"], theta=dense["theta_student"],
                                   sizes=dense["size"], out_size=32, min_visible=config.views.box_min_visible)
    for xyxy, label in zip(boxes, labels):
        assert xyxy.shape == (len(label), 4) and bool(((xyxy >= 0) & (xyxy <= 32)).all())
    assert warp_masks(dense["masks"], theta=dense["theta_student"], size=32).shape == (2, 13, 32, 32)


def test_dense_padding_batches_have_the_dense_keys(dense_store):
    config = _config(dense_store)
    entry = _entry(config, "chestx_det")
    world = entry["splits"]["test"]["num_samples"] + 1  # the last rank has no sample: padding only
    batches = list(EvalLoader(entry=entry, config=config, split="test", seed=0, rank=world - 1, world=world,
                              batch_size=2, dense=True))
    assert batches and not any(bool(b["valid"].any()) for b in batches)
    assert set(batches[0]) == EVAL_KEYS | DENSE_KEYS and batches[0]["masks"].shape == (1, 13, 40, 40)


# ---------------------------------------------------------------- decode: bad and mismatched samples


def _raw_samples(store, name: str) -> list[dict]:
    """One shard's samples as `tar_samples` yields them."""
    shard = json.loads((store / "manifest.json").read_text())["datasets"][name]["splits"]["train"]["shards"][0]
    return [{"key": key, "shard": shard["url"], "position": i, "parts": parts}
            for i, (key, parts) in enumerate(read_tar((store / shard["url"]).read_bytes()))]


def _decoded(samples, *, dense, min_bad=5):
    counters = Counters("test", max_bad_fraction=0.0, min_bad=min_bad)
    return list(decode(samples, 40, counters, dense=dense)), counters


def test_a_corrupt_or_misfit_mask_is_a_bad_sample_only_when_dense(dense_store):
    spec = DenseSpec.of(_entry(_config(dense_store), "chestx_det"))
    raw = _raw_samples(dense_store, "chestx_det")
    assert len(raw) >= 3 and all("mask.0.png" in s["parts"] for s in raw)
    raw[0]["parts"]["mask.0.png"] = raw[0]["parts"]["mask.0.png"][:30]  # truncated PNG
    small = Image.new("1", (7, 7))
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    raw[1]["parts"]["mask.3.png"] = buf.getvalue()  # not the image's size
    del raw[2]["parts"]["mask.5.png"]  # missing: unknown, not bad
    kept, counters = _decoded([{**s, "parts": dict(s["parts"])} for s in raw], dense=spec)
    assert [s["key"] for s in kept] == [s["key"] for s in raw[2:]] and counters.skipped == 2
    assert not bool(kept[0]["mask_known"][5]) and int(kept[0]["masks"][5].sum()) == 0
    assert bool(kept[0]["mask_known"][4])
    kept, counters = _decoded(raw, dense=None)  # classification never opens a mask
    assert len(kept) == len(raw) and counters.skipped == 0 and "masks" not in kept[0]


def test_a_box_label_the_manifest_lacks_stops_the_stream(dense_store):
    raw = _raw_samples(dense_store, "vindr_cxr")
    spec = DenseSpec(box_classes=("Nodule",), num_masks=0)
    with pytest.raises(DataError, match="box classes"):
        _decoded(raw, dense=spec)
    entry = {**_entry(_config(dense_store), "vindr_cxr"), "boxes": ["Nodule/Mass", "Aortic enlargement"]}
    assert DenseSpec.of(entry).box_classes == ("Nodule/Mass", "Aortic enlargement")  # the manifest's list wins


# ---------------------------------------------------------------- boxes derived from masks


def _png(mask: np.ndarray) -> bytes:
    """A bool (h, w) mask as the store keeps it: a 1-bit PNG."""
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    return buf.getvalue()


def _targets(entry: dict, masks: dict[int, np.ndarray], facts: dict | None = None) -> dict:
    h, w = next(iter(masks.values())).shape
    parts = {f"mask.{k}.png": _png(m) for k, m in masks.items()}
    return dense_targets(parts, facts or {}, spec=DenseSpec.of(entry), stored_size=(w, h), load_size=16, where="t")


MASKS_ONLY = {"labels": ["A", "B", "C"], "masks": ["A", "B", "C"]}  # SIIM-ACR's and CANDID-PTX's kind of entry


def test_boxes_from_masks_are_the_hand_computed_components():
    spec = DenseSpec.of(MASKS_ONLY)
    assert spec.boxes_from_masks and spec.box_classes == ("A", "B", "C") and spec.num_masks == 3
    a, b = np.zeros((12, 20), bool), np.zeros((12, 20), bool)
    a[1:4, 2:6] = True  # rows 1-3, columns 2-5
    a[4, 6] = True  # touches (3, 5) only at a corner: the same component under 8-connectivity
    a[7:11, 12:14] = True  # rows 7-10, columns 12-13: a second component
    b[6:10, 10:16] = True  # class B overlapping A's second blob: boxed on its own
    out = _targets(MASKS_ONLY, {0: a, 1: b})  # C's member is missing: unknown, no boxes
    np.testing.assert_array_equal(out["boxes"].numpy(), [[2, 1, 7, 5], [12, 7, 14, 11], [10, 6, 16, 10]])
    assert out["boxes"].dtype == torch.float32 and out["box_labels"].tolist() == [0, 0, 1]
    assert out["mask_known"].tolist() == [True, True, False]
    empty = _targets(MASKS_ONLY, {0: np.zeros((12, 20), bool)})  # a known negative
    assert empty["boxes"].shape == (0, 4) and empty["box_labels"].shape == (0,)


def test_speckle_gets_no_box_but_stays_in_the_mask():
    mask = np.zeros((10, 30), bool)
    mask[0, 0:MIN_COMPONENT_PX - 1] = True  # one pixel short of a box
    mask[5, 10] = True  # a lone pixel
    mask[8, 20:20 + MIN_COMPONENT_PX] = True  # exactly enough
    out = _targets(MASKS_ONLY, {0: mask})
    np.testing.assert_array_equal(out["boxes"].numpy(), [[20, 8, 20 + MIN_COMPONENT_PX, 9]])
    assert MIN_COMPONENT_PX >= 2 and out["box_labels"].tolist() == [0]


def test_an_entry_with_boxes_ignores_its_masks():
    entry = {**MASKS_ONLY, "boxes": ["B", "A"]}  # ChestX-Det's kind: its own boxes, and masks
    assert not DenseSpec.of(entry).boxes_from_masks
    mask = np.zeros((12, 20), bool)
    mask[1:4, 2:6] = True
    facts = {"boxes": [{"label": "A", "xyxy": [0.5, 1.25, 9.0, 11.0], "reader": None}]}
    out = _targets(entry, {0: mask}, facts)
    np.testing.assert_array_equal(out["boxes"].numpy(), [[0.5, 1.25, 9.0, 11.0]])
    assert out["box_labels"].tolist() == [1] and int(out["masks"][0].sum()) > 0
    assert _targets(entry, {0: mask})["boxes"].shape == (0, 4)  # no facts' boxes: none, whatever the mask
    # Samples with boxes under an entry without a `boxes` list (a store built before builds wrote
    # it): boxes from masks would silently replace them.
    with pytest.raises(DataError, match="`boxes` list"):
        _targets(MASKS_ONLY, {0: mask}, facts)


def test_siim_acr_dense_batches_box_each_mask_component(dense_store):
    config = _config(dense_store)
    entry, stored = _entry(config, "siim_acr"), read_store_samples(dense_store, "siim_acr")
    assert "boxes" not in entry and DenseSpec.of(entry).box_classes == tuple(entry["masks"]) == ("Pneumothorax",)
    seen = positive = 0
    for split in ("train", "val", "test"):
        for batch in EvalLoader(entry=entry, config=config, split=split, seed=0, rank=0, world=1, batch_size=2,
                                dense=True):
            for b, sample_id in enumerate(batch["ids"]):
                seen += 1
                w, h = batch["size"][b].tolist()
                member = stored[sample_id]["_members"]["mask.0.png"]  # read back from the shard's tar
                mask = np.asarray(Image.open(io.BytesIO(member)).convert("L")) > 0  # (h, w) at the stored size
                assert mask.shape == (h, w) and bool(batch["mask_known"][b, 0])
                boxes = batch["boxes"][b].numpy().astype(int)
                assert np.array_equal(boxes, batch["boxes"][b].numpy())  # whole pixel edges: exact
                assert batch["box_labels"][b].tolist() == [0] * len(boxes)
                if not mask.any():
                    assert len(boxes) == 0
                    continue
                positive += 1
                inside = np.zeros_like(mask)
                for x0, y0, x1, y1 in boxes:
                    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
                    part = mask[y0:y1, x0:x1]  # tight: mask pixels on each of its four edges
                    assert part[0].any() and part[-1].any() and part[:, 0].any() and part[:, -1].any()
                    inside[y0:y1, x0:x1] = True
                assert not (mask & ~inside).any(), sample_id  # every mask pixel in a box
    assert seen == sum(s["num_samples"] for s in entry["splits"].values())
    assert positive >= 3, "the look-alike needs pneumothorax masks for this test"
