"""TBX11K: `inspect` and `build` against an independent reading of the look-alike's split lists and
COCO json (plain text and json parsing, written from the dataset's description, not from the source
module), and the quirks and bad inputs the reader handles."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

import labelfacts
from conftest import look_alike, read_store_samples, run_shards
from shards.images import decode_stored

CLASSES = ["Healthy", "Sick but non-TB", "TB"]
FOLDERS = {"health": "Healthy", "sick": "Sick but non-TB", "tb": "TB"}
NATIVE_SPLIT = {"all_train": "train", "all_val": "test"}  # all_test has no public labels


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return look_alike(tmp_path_factory, "tbx11k")


def read_truth(root) -> dict:
    """{sample id: facts} from lists/all_{train,val}.txt and annotations/json/all_{train,val}.json."""
    truth = {}
    for native, split in NATIVE_SPLIT.items():
        doc = json.loads((root / "annotations" / "json" / f"{native}.json").read_text())
        names = {c["id"]: c["name"] for c in doc["categories"]}
        files = {image["id"]: image["file_name"] for image in doc["images"]}
        boxes = {}
        for ann in doc["annotations"]:
            x, y, w, h = ann["bbox"]
            boxes.setdefault(files[ann["image_id"]], []).append((names[ann["category_id"]], [x, y, x + w, y + h], None))
        for rel in (root / "lists" / f"{native}.txt").read_text().split():
            folder, name = rel.split("/")[0], rel.split("/")[-1]
            stem = name.rsplit(".", 1)[0]
            if folder in FOLDERS:
                label, origin, subset, found = FOLDERS[folder], None, "tbx11k", boxes.get(rel, [])
            elif name.startswith(("CHNCXR_", "MCUCXR_")):  # Shenzhen / Montgomery: label is the last digit
                subset = "shenzhen" if name.startswith("CHNCXR_") else "montgomery"
                label, origin, found = ("TB" if stem[-1] == "1" else "Healthy"), f"{subset}/{stem}", None
            else:  # da+db: n... normal, p... TB
                label, origin, subset, found = ("TB" if name[0] == "p" else "Healthy"), None, "da+db", None
            key = re.sub(r"[^A-Za-z0-9_-]", "_", rel.rsplit(".", 1)[0])
            truth[key] = {"split": split, "labels": {c: int(c == label) for c in CLASSES}, "boxes": found,
                          "origin": origin, "subset": subset, "image": rel}
    return truth


def counts(truth: dict, splits) -> dict:
    """The inspect document's classes and boxes for the images in `splits`."""
    chosen = [t for t in truth.values() if t["split"] in splits]
    classes = {c: {"positive": sum(t["labels"][c] for t in chosen), "negative": sum(1 - t["labels"][c] for t in chosen),
                   "uncertain": 0, "missing": 0} for c in CLASSES}
    boxes = Counter(label for t in chosen for label, _, _ in t["boxes"] or ())
    return {"num_images": len(chosen), "classes": classes, "boxes": dict(boxes)}


def inspect(root, *extra):
    code, out, err = run_shards("inspect", "--source", "tbx11k", "--root", root, "--json", *extra)
    assert code == 0, err
    return json.loads(out)["splits"], err


def test_inspect_counts_equal_the_label_files(raw):
    truth = read_truth(raw)
    splits, err = inspect(raw, "--val-fraction", "0")  # no hold-out: the official lists as they are
    assert set(splits) == {"train", "test"}
    for split, info in splits.items():
        assert {k: info[k] for k in ("num_images", "classes", "boxes")} == counts(truth, {split}), split
        assert info["masks"] == {} and info["num_missing_images"] == 0
    assert "left out lists/all_test.txt" in err
    splits, _ = inspect(raw)  # the default hold-out takes val from the official train list only
    assert splits["test"]["num_images"] == counts(truth, {"test"})["num_images"]
    assert splits["train"]["num_images"] + splits["val"]["num_images"] == counts(truth, {"train"})["num_images"]
    # Every kind of image and box is in the look-alike.
    assert {t["subset"] for t in truth.values()} == {"tbx11k", "shenzhen", "montgomery", "da+db"}
    assert set(counts(truth, {"train", "test"})["boxes"]) == {"ActiveTuberculosis", "ObsoletePulmonaryTuberculosis"}


def test_build_and_verify_give_the_label_files_facts(raw, tmp_path):
    code, _, err = run_shards("build", "--source", "tbx11k", "--root", raw, "--out", tmp_path, "--quiet",
                              "--workers", "1", "--samples-per-shard", "4", "--max-side", "48")
    assert code == 0, err
    code, out, _ = run_shards("verify", "--store", tmp_path)
    assert code == 0 and "0 bad" in out
    truth = read_truth(raw)
    samples = read_store_samples(tmp_path, "tbx11k")
    assert set(samples) == set(truth)
    for key, want in truth.items():
        got = samples[key]
        assert got["labels"] == want["labels"], key
        assert got["split"] == want["split"] or (want["split"] == "train" and got["split"] == "val"), key
        assert got.get("origin") == want["origin"] and got["subset"] == want["subset"], key
        assert got["patient"] == key and got["_split"] == got["split"]
        if want["boxes"] is None:
            assert "boxes" not in got, key  # extra images were never box-annotated
        else:
            labelfacts.assert_boxes(got, want["boxes"], key)
        image = decode_stored(got["_image"])
        assert image.mode == "L" and list(image.size) == got["size"] == [48, 48] and got["original_size"] == [64, 64]


def test_quirks_rgb_pngs_db_jpegs_a_tb_image_without_boxes_and_category_names_from_the_json(raw, tmp_path):
    truth = read_truth(raw)
    assert any(t["image"].endswith(".jpg") for t in truth.values())  # DB's JPEGs among DA's PNGs
    # A TB image without boxes (like tb1199.png) is TB with an empty box list; one holds both kinds.
    tb = [t for t in truth.values() if t["subset"] == "tbx11k" and t["labels"]["TB"]]
    assert [] in [t["boxes"] for t in tb]
    assert any({b[0] for b in t["boxes"]} == {"ActiveTuberculosis", "ObsoletePulmonaryTuberculosis"} for t in tb)
    # Box labels are the json's own category names, whatever its ids.
    root = tmp_path / "tbx11k"
    shutil.copytree(raw, root)
    path = root / "annotations" / "json" / "all_val.json"
    doc = json.loads(path.read_text())
    doc["categories"] = [{**c, "name": c["name"].replace("Tuberculosis", " TB")} for c in doc["categories"]]
    path.write_text(json.dumps(doc))
    splits, _ = inspect(root)
    assert splits["test"]["boxes"] == {k.replace("Tuberculosis", " TB"): v
                                       for k, v in counts(truth, {"test"})["boxes"].items()}


def _break(root, case):
    """Make one bad input in a copy; returns the text the error line must hold."""
    lists, jsons = root / "lists", root / "annotations" / "json"
    if case == "unknown folder":
        lines = (lists / "all_train.txt").read_text().splitlines() + ["scans/x0001.png"]
        (lists / "all_train.txt").write_text("\n".join(lines) + "\n")
        return f"{lists / 'all_train.txt'}:{len(lines)}: cannot tell the label of 'scans/x0001.png'"
    if case == "extra name":
        lines = (lists / "all_val.txt").read_text().splitlines() + ["extra/mc+shenzhen/CHNCXR_0009_2.png"]
        (lists / "all_val.txt").write_text("\n".join(lines) + "\n")
        return f"{lists / 'all_val.txt'}:{len(lines)}: cannot tell the label of 'extra/mc+shenzhen/CHNCXR_0009_2.png'"
    if case == "listed twice":
        first = (lists / "all_train.txt").read_text().splitlines()[0]
        (lists / "all_val.txt").write_text((lists / "all_val.txt").read_text() + first + "\n")
        return f"{first} is listed again (first at {lists / 'all_train.txt'}:1)"
    doc = json.loads((jsons / "all_train.json").read_text())
    if case == "unknown category":
        doc["annotations"][0]["category_id"] = 7
        want = f"{jsons / 'all_train.json'}: annotation 1 has category_id 7, not one of the file's categories [1, 2, 3]"
    elif case == "bad bbox":
        doc["annotations"][0]["bbox"][2] = -3.0
        want = f"{jsons / 'all_train.json'}: annotation 1 has bbox"
    else:  # a box on a healthy image
        healthy = next(i["id"] for i in doc["images"] if i["file_name"].startswith("health/"))
        doc["annotations"][0]["image_id"] = healthy
        want = f"{jsons / 'all_train.json'}: 1 boxes on health/"
    (jsons / "all_train.json").write_text(json.dumps(doc))
    return want


@pytest.mark.parametrize("case", ["unknown folder", "extra name", "listed twice", "unknown category", "bad bbox",
                                  "box on a healthy image"])
def test_bad_input_is_one_error_line_naming_the_file(raw, tmp_path, case):
    root = tmp_path / "tbx11k"
    shutil.copytree(raw, root)
    want = _break(root, case)
    code, _, err = run_shards("build", "--source", "tbx11k", "--root", root, "--out", tmp_path / "out", "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert want in lines[0], (want, lines[0])
