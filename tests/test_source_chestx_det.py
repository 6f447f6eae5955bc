"""chestx_det: inspect, build and verify of the look-alike against an independent reading of its
JSON files (plain json, a matplotlib rasteriser, no shards.sources), locally and on S3, and its
bad inputs and quirks."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as Polygon
from PIL import Image, ImageDraw

import labelfacts
from conftest import look_alike, read_store_samples, run_shards

# ChestX-Det's README, in its order.
CLASSES = ["Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "Diffuse Nodule", "Effusion",
           "Emphysema", "Fibrosis", "Fracture", "Mass", "Nodule", "Pleural Thickening", "Pneumothorax"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return look_alike(tmp_path_factory, "chestx_det")


@pytest.fixture
def copy(raw, tmp_path) -> Path:
    dest = tmp_path / "chestx_det"
    shutil.copytree(raw, dest)
    return dest


def read_label_files(root: Path) -> dict:
    """id -> the facts ChestX-Det's files state: split, labels, boxes, polygons per class, origin
    (through mapping.json, file name -> NIH Image Index) and the image's size."""
    mapping = json.loads((root / "mapping.json").read_text())
    sizes = {p.name: Image.open(p).size for p in root.rglob("*.png")}
    facts = {}
    for split in ("train", "test"):
        for entry in json.loads((root / f"ChestX_Det_{split}.json").read_text()):
            polygons = {}
            for sym, polygon in zip(entry["syms"], entry["polygons"]):
                polygons.setdefault(sym, []).append(polygon)
            nih = mapping.get(entry["file_name"])
            facts[entry["file_name"][:-4]] = {
                "split": split, "labels": {c: int(c in entry["syms"]) for c in CLASSES},
                "boxes": [(sym, box, None) for sym, box in zip(entry["syms"], entry["boxes"])],
                "polygons": polygons, "origin": f"chestxray14/{nih[:-4]}" if nih else None,
                "size": sizes[entry["file_name"]]}
    return facts


def drawn_pixels(polygons: list, size) -> int:
    """Pixels of the union of polygons as a filled outline covers them (how inspect counts)."""
    canvas = Image.new("L", size, 0)
    for polygon in polygons:
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in polygon], fill=1, outline=1)
    return int(np.asarray(canvas).sum())


def centres_inside(polygons: list, size) -> tuple[np.ndarray, np.ndarray]:
    """(inside, boundary), each (height, width) bool: pixel centres (at whole coordinates, as the
    annotations count pixels) inside any polygon, and those within a pixel of an edge, where two
    rasterisers may fairly disagree."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    centres = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(float)
    inside = np.zeros(len(centres), dtype=bool)
    near = np.zeros(len(centres), dtype=bool)
    for polygon in polygons:
        points = np.asarray(polygon, dtype=float)
        inside |= Polygon(points).contains_points(centres)
        for a, b in zip(points, np.roll(points, -1, axis=0)):
            span = b - a
            t = np.clip(((centres - a) @ span) / max(span @ span, 1e-12), 0, 1)
            near |= np.hypot(*(centres - a - t[:, None] * span).T) <= 1.0
    return inside.reshape(height, width), near.reshape(height, width)


def nearest(mask: np.ndarray, size) -> np.ndarray:
    """The mask scaled to size = (width, height) by nearest neighbour, pixel centre to pixel
    centre: (4, height, width), one for each way of rounding a centre that falls exactly between
    two source pixels (where resamplers differ by a float's last bit), rows and columns."""
    width, height = size
    choices = []
    for dy in (-1e-6, 1e-6):
        rows = np.clip(((np.arange(height) + 0.5) * mask.shape[0] / height + dy).astype(int), 0, mask.shape[0] - 1)
        for dx in (-1e-6, 1e-6):
            cols = np.clip(((np.arange(width) + 0.5) * mask.shape[1] / width + dx).astype(int), 0, mask.shape[1] - 1)
            choices.append(mask[np.ix_(rows, cols)])
    return np.stack(choices)


def test_inspect_counts_equal_the_label_files(raw):
    code, out, err = run_shards("inspect", "--source", "chestx_det", "--root", raw, "--json", "--val-fraction", "0")
    assert code == 0, err
    report = json.loads(out)["splits"]
    facts = read_label_files(raw)
    assert set(report) == {"train", "test"}
    for split, got in report.items():
        mine = [f for f in facts.values() if f["split"] == split]
        assert got["num_images"] == len(mine) and got["num_missing_images"] == 0
        for c in CLASSES:
            positive = sum(f["labels"][c] for f in mine)
            assert got["classes"][c] == {"positive": positive, "negative": len(mine) - positive, "uncertain": 0,
                                         "missing": 0}, (split, c)
        assert got["boxes"] == dict(Counter(label for f in mine for label, _, _ in f["boxes"]))
        # Every image has all 13 masks; a class without a polygon is an empty one.
        assert got["masks"] == {c: {"images": len(mine),
                                    "pixels": sum(drawn_pixels(f["polygons"].get(c, []), f["size"]) for f in mine)}
                                for c in CLASSES}
    # Repeated classes (one sym per instance) and images without any finding are in the look-alike.
    assert any(len({b[0] for b in f["boxes"]}) < len(f["boxes"]) for f in facts.values())
    assert any(not f["boxes"] for f in facts.values())

    code, out, _ = run_shards("inspect", "--source", "chestx_det", "--root", raw, "--json")
    held = json.loads(out)["splits"]
    assert held["val"]["num_images"] > 0
    assert held["train"]["num_images"] + held["val"]["num_images"] == report["train"]["num_images"]
    assert held["test"] == report["test"]


def test_build_and_verify_keep_labels_boxes_masks_and_origin(raw, tmp_path):
    store = tmp_path / "store"
    code, _, err = run_shards("build", "--source", "chestx_det", "--root", raw, "--out", store, "--quiet",
                              "--workers", "1", "--samples-per-shard", "4", "--max-side", "96", "--format", "png")
    assert code == 0, err
    code, out, _ = run_shards("verify", "--store", store)
    assert code == 0 and "0 bad" in out
    manifest = json.loads((store / "manifest.json").read_text())["datasets"]["chestx_det"]
    assert manifest["masks"] == CLASSES and manifest["labels"] == CLASSES

    facts = read_label_files(raw)
    samples = read_store_samples(store, "chestx_det")
    assert set(samples) == set(facts)
    for key, want in facts.items():
        got = samples[key]
        assert got["labels"] == want["labels"], key
        assert got["_split"] == got["split"] and got["split"] in ({"train", "val"} if want["split"] == "train"
                                                                  else {"test"}), key
        assert got.get("origin") == want["origin"], key
        labelfacts.assert_boxes(got, want["boxes"], key)
        assert got["masks"] == sorted(CLASSES) and list(got["original_size"]) == list(want["size"])
        stored_size = tuple(got["size"])
        for k, c in enumerate(CLASSES):
            stored = np.asarray(Image.open(io.BytesIO(got["_members"][f"mask.{k}.png"])).convert("L")) > 0
            assert stored.shape == (stored_size[1], stored_size[0]), (key, c)
            inside, near = centres_inside(want["polygons"].get(c, []), want["size"])
            agree = (nearest(inside, stored_size) == stored).any(axis=0)
            assert (agree | nearest(near, stored_size).any(axis=0)).all(), (key, c, "differs off the boundary")
            assert bool(stored.any()) == bool(want["polygons"].get(c)), (key, c)


def test_build_and_verify_on_s3(raw, s3_bucket, tmp_path):
    url = f"s3://{s3_bucket}/cxr"
    code, _, err = run_shards("build", "--source", "chestx_det", "--root", raw, "--out", url, "--quiet",
                              "--workers", "1", "--samples-per-shard", "5", "--max-side", "64")
    assert code == 0, err
    code, out, _ = run_shards("verify", "--store", url)
    assert code == 0 and "0 bad" in out
    code, out, _ = run_shards("ls", "--store", url)
    assert code == 0 and "chestx_det" in out


def _edit(root: Path, split: str, change) -> None:
    path = root / f"ChestX_Det_{split}.json"
    entries = json.loads(path.read_text())
    change(entries)
    path.write_text(json.dumps(entries))


def _first_with_findings(entries) -> dict:
    return next(e for e in entries if e["syms"])


@pytest.mark.parametrize("change, message", [
    (lambda es: _first_with_findings(es)["syms"].__setitem__(0, "Nodle"), "'syms'[0] is 'Nodle'"),
    (lambda es: _first_with_findings(es)["boxes"].pop(), "one length"),
    (lambda es: _first_with_findings(es)["boxes"].__setitem__(0, [50, 50, 10, 60]), "'boxes'[0] is [50, 50, 10, 60]"),
    (lambda es: _first_with_findings(es)["polygons"].__setitem__(0, [[1, 2, 3]]), "'polygons'[0]"),
    (lambda es: es[0].pop("polygons"), "no field 'polygons'"),
])
def test_a_value_outside_the_domain_is_one_error_line_naming_file_and_entry(copy, tmp_path, change, message):
    _edit(copy, "train", change)
    code, _, err = run_shards("build", "--source", "chestx_det", "--root", copy, "--out", tmp_path / "s", "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "ChestX_Det_train.json: entry " in lines[0] and message in lines[0], lines[0]
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_an_image_listed_twice_is_an_error(copy):
    first = json.loads((copy / "ChestX_Det_train.json").read_text())[0]
    _edit(copy, "test", lambda es: es.append(first))
    code, _, err = run_shards("inspect", "--source", "chestx_det", "--root", copy)
    assert code == 2 and f"{first['file_name']} is listed twice" in err and "ChestX_Det_test.json" in err


def test_nih_names_come_from_the_map_or_the_file_name_and_images_from_either_folder_layout(copy):
    facts = read_label_files(copy)
    # The map lacks a few images (the 35 ChestX-Det added); those have no origin and a note says so.
    unmapped = sorted(k for k, f in facts.items() if f["origin"] is None)
    assert unmapped
    (copy / "test_data").mkdir()
    (copy / "test").rename(copy / "test_data" / "test")  # test_data.zip unpacked into its own folder
    code, out, err = run_shards("inspect", "--source", "chestx_det", "--root", copy, "--json", "--val-fraction", "0")
    assert code == 0 and f"{len(unmapped)} images have no NIH Image Index" in err, err
    assert json.loads(out)["splits"]["test"]["num_missing_images"] == 0

    # The first ChestX-Det10 upload named images by Image Index: such a name is its own origin.
    mapping = json.loads((copy / "mapping.json").read_text())

    def rename(entries):
        for entry in entries:
            entry["file_name"] = mapping.get(entry["file_name"], entry["file_name"])

    for split in ("train", "test"):
        _edit(copy, split, rename)
    for path in copy.rglob("*.png"):
        if path.name in mapping:
            path.rename(path.with_name(mapping[path.name]))
    (copy / "mapping.json").unlink()
    code, _, err = run_shards("build", "--source", "chestx_det", "--root", copy, "--out", copy.parent / "s",
                              "--quiet", "--workers", "1", "--max-side", "32")
    assert code == 0, err
    samples = read_store_samples(copy.parent / "s", "chestx_det")
    for nih in mapping.values():
        facts_ = samples[nih[:-4]]
        assert facts_["origin"] == f"chestxray14/{nih[:-4]}" and facts_["patient"] == str(int(nih[:8]))
    for key in unmapped:
        facts_ = samples[key]
        assert "origin" not in facts_ and facts_["patient"] == key


def test_a_mapping_that_pairs_no_nih_name_is_an_error(copy):
    (copy / "mapping.json").write_text(json.dumps({"36200.png": "36201.png"}))
    code, _, err = run_shards("inspect", "--source", "chestx_det", "--root", copy)
    assert code == 2 and "mapping.json: entry '36200.png'" in err and len(err.strip().splitlines()) == 1, err
